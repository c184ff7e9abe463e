"""The paper's six tables in one ``raygap run`` vs six runs one after the other, side by side in
one call, each on a fresh store (the six runs share theirs, as six commands on one results
folder do: a trial an earlier table ran is reused by a later one).

Each variant is real ``raygap`` processes (Ray started and stopped by each). Printed: the wall
time of each (the six runs' summed, with each run's), their ratio, the trials and epochs each
trained (from its store: every trial's history, a trial started from a shared warm-up counted
from the epoch it started at), whether any trial trained twice (attempts > 1), and whether each
table's ``table.csv``, ``table.md`` and ``table.tex`` are the same bytes in both. The goals
(issue 24): ratio < 1, tables byte-identical, no trial trained twice.

The demo profile takes about an hour a variant on two CPU cores; ``--set`` shrinks it (one
seed, fewer epochs, a narrower model; the grids reject an epoch count their schedules do not
fit in, e.g. below 7 for Table II's OPM&OGM):

    python bench/paper_one_run.py [--profile demo] [--grids grids/table2.yaml ...]
        [--set seed=0 --set train.epochs=7 --set model.width=4] [--num-cpus 2] [--keep DIR]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE_FILES = ("table.csv", "table.md", "table.tex")


def raygap(*args: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "raygap", *args], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"raygap {' '.join(args)} failed ({r.returncode}):\n{(r.stdout + r.stderr)[-2000:]}")
    return wall, r.stdout


def trained(db: Path) -> dict:
    """What a store's trials trained: trials, epochs (a forked trial from its start epoch), trials
    run more than once, trials started from a shared warm-up."""
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT status, attempts, history, info FROM trials").fetchall()
    epochs = forks = twice = done = 0
    for status, attempts, history, info in rows:
        done += status == "done"
        twice += (attempts or 0) > 1
        info = json.loads(info) if info else {}
        hist = json.loads(history) if history else []
        start = int(info.get("warmup_epochs_shared", 0)) if info.get("warmup_from") else 0   # (epochs count from 0)
        forks += bool(info.get("warmup_from"))
        epochs += sum(1 for h in hist if int(h["epoch"]) >= start)
    return {"trials": len(rows), "done": done, "epochs": epochs, "twice": twice, "forks": forks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grids", nargs="+", default=sorted(glob.glob(str(ROOT / "grids" / "table*.yaml"))))
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE for every trial (a smaller shape)")
    ap.add_argument("--num-cpus", type=int, default=None)
    ap.add_argument("--keep", help="keep both results folders here (default: a temporary folder, removed)")
    ap.add_argument("--six-first", action="store_true",
                    help="run the six runs before the one run (on a machine whose load changes, run both orders)")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="paper_one_run-"))
    one_dir, six_dir = work / "one", work / "six"
    for d in (one_dir, six_dir):
        if d.exists():
            sys.exit(f"{d} exists: the bench needs fresh stores")
    common = ["--profile", args.profile, *[x for s in args.set for x in ("--set", s)], "-q",
              *(["--num-cpus", str(args.num_cpus)] if args.num_cpus else [])]
    try:
        loads = {}

        def one():
            loads["one"] = os.getloadavg()[0]
            out = raygap("run", *args.grids, *common, "--results", str(one_dir))
            loads["one"] = (loads["one"], os.getloadavg()[0])
            return out

        def sixes():
            loads["six"] = os.getloadavg()[0]
            out = [raygap("run", g, *common, "--results", str(six_dir)) for g in args.grids]
            loads["six"] = (loads["six"], os.getloadavg()[0])
            return out

        if args.six_first:
            six = sixes()
            one_wall, one_out = one()
        else:
            one_wall, one_out = one()
            six = sixes()
        six_wall = sum(w for w, _ in six)
        names = []
        for g in args.grids:
            m = re.search(r"^name:\s*(\S+)", Path(g).read_text(), re.M)
            names.append(m.group(1) if m else Path(g).stem)
        variant = next(re.search(r"tables: \S*?/([^/]+)/trials\.csv", ln).group(1)
                       for ln in one_out.splitlines() if "tables: " in ln)
        same = {n: all((one_dir / n / variant / f).read_bytes() == (six_dir / n / variant / f).read_bytes()
                       for f in TABLE_FILES) for n in names}
        a, b = trained(one_dir / "store.sqlite"), trained(six_dir / "store.sqlite")
        shape = f"--profile {args.profile}" + (f" --set {' '.join(args.set)}" if args.set else "")
        print(f"{len(args.grids)} grids ({', '.join(names)}), {shape}; each variant on a fresh store")
        print(f"  one run:   {one_wall:8.1f} s  trials trained {a['trials']} ({a['done']} done), epochs {a['epochs']}, "
              f"{a['forks']} from a shared warm-up, trained twice {a['twice']}")
        print(f"  six runs:  {six_wall:8.1f} s  trials trained {b['trials']} ({b['done']} done), epochs {b['epochs']}, "
              f"{b['forks']} from a shared warm-up, trained twice {b['twice']}  "
              f"(each: {', '.join(f'{n} {w:.1f} s' for n, (w, _) in zip(names, six, strict=True))})")
        print(f"ratio one / six: {one_wall / six_wall:.2f} (goal < 1); tables byte-identical: "
              + ", ".join(f"{n} {'yes' if s else 'NO'}" for n, s in same.items())
              + f"; no trial trained twice: {'yes' if a['twice'] == 0 else 'NO'}")
        print(f"order: {'six runs, then one' if args.six_first else 'one run, then six'}; 1-min load average at the "
              f"start / end of each: one {loads['one'][0]:.1f} / {loads['one'][1]:.1f}, "
              f"six {loads['six'][0]:.1f} / {loads['six'][1]:.1f} (on {os.cpu_count()} CPUs)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
