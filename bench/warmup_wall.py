"""Wall time of a grid with and without shared warm-ups, side by side on one machine.

Runs ``raygap run GRID --profile P`` twice, each into a fresh results folder (so nothing is
reused): once with ``--no-shared-warmups`` (every trial trains its own warm-up), once as
shipped (one warm-up per group, the others start from its end). Prints each run's wall
time, the epochs its trials trained (from the store: an epoch record a trial did not
resume past), the ratio, and whether the two tables are identical (they must be: the
numbers do not depend on sharing).

    .venv/bin/python bench/warmup_wall.py [--grid grids/table3.yaml] [--profile demo]
                                          [--set train.epochs=6 ...] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def trained_epochs(store: Path) -> tuple[int, int]:
    """(epochs trained, trials started from a shared warm-up) over the store's done trials."""
    with sqlite3.connect(store) as c:
        rows = c.execute("SELECT history, info FROM trials WHERE status='done'").fetchall()
    total = forked = 0
    for history, info in rows:
        h, i = json.loads(history), json.loads(info)
        start = (i.get("resumed_from_epoch") + 1) if i.get("resumed_from_epoch") is not None else 0
        total += sum(1 for r in h if r["epoch"] >= start)
        forked += 1 if i.get("warmup_from") else 0
    return total, forked


def run(grid: str, profile: str, sets: list[str], results: Path, shared: bool) -> float:
    cmd = [str(ROOT / ".venv" / "bin" / "raygap"), "run", grid, "--profile", profile, "--results", str(results), "-q"]
    cmd += [x for s in sets for x in ("--set", s)] + ([] if shared else ["--no-shared-warmups"])
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stderr[-2000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="grids/table3.yaml")
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--keep", help="results folders go here (default: a temporary folder, removed)")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="raygap-warmup-wall-")
    base = Path(args.keep) if args.keep else Path(tmp.name)
    out = {}
    for shared in (False, True):
        res = base / ("shared" if shared else "alone")
        wall = run(args.grid, args.profile, args.set, res, shared)
        epochs, forked = trained_epochs(res / "store.sqlite")
        table = next(res.glob("*/*/table.csv")).read_text()
        out[shared] = (wall, epochs, forked, table)
        print(f"{'shared warm-ups' if shared else 'no sharing':16s} wall {wall:7.1f} s   epochs trained {epochs:5d}"
              f"   trials started from a shared warm-up {forked}", flush=True)
    (w0, e0, _, t0), (w1, e1, _, t1) = out[False], out[True]
    print(f"shared / no sharing: wall {w1 / w0:.2f}, epochs {e1 / e0:.2f}; tables identical: {t0 == t1}")


if __name__ == "__main__":
    main()
