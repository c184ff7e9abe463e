"""A fully cached re-run and an export: wall time with every figure redrawn (what each re-run
did before figures were kept) vs with unchanged figures kept, side by side on one store.

Needs a grid whose trials are all done in --results (README command 1 leaves
results/ so for grids/table3.yaml --profile demo); with --prepare it first runs a shortened
variant (--set train.epochs=5) to have one. Each timing is a separate `raygap` process (its
start-up, imports and the registries, included and printed on its own: validating a grid
imports no torch, tests/test_import_cost.py). The goal: a cached run under 3 s with unchanged
figures kept (and the paired comparisons kept in table.json: no scipy.stats either).

    python bench/cached_rerun.py [--grid grids/table3.yaml] [--profile demo] [--results results]
                                 [--set train.epochs=5 --prepare] [--repeat 3]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="grids/table3.yaml")
    ap.add_argument("--profile", default="demo", help="'none' for the grid's own settings")
    ap.add_argument("--results", default="results")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--prepare", action="store_true", help="run the grid first (all trials) if needed")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    raygap = [sys.executable, "-m", "raygap"]
    sets = [x for s in args.set for x in ("--set", s)]
    common = [args.grid, *(["--profile", args.profile] if args.profile != "none" else []), "--results", args.results, *sets]
    if args.prepare:
        subprocess.run([*raygap, "run", *common, "-q"], cwd=ROOT, check=True)
    status = subprocess.run([*raygap, "status", *common], capture_output=True, text=True, cwd=ROOT).stdout
    total = next((ln for ln in status.splitlines() if ln.startswith("total:")), "")
    if " 0 missing" not in total or " 0 failed" not in total:
        sys.exit(f"not every trial of {args.grid} is done in {args.results} ({total or status[-300:]}); "
                 "run it first (or pass --prepare)")
    table_dir = next(ln.split("tables: ", 1)[1].split(",")[0] for ln in subprocess.run(
        [*raygap, "run", *common, "-q"], capture_output=True, text=True, cwd=ROOT).stdout.splitlines()
        if ln.startswith("tables: "))
    figures = Path(ROOT / table_dir).parent / "figures"
    index = figures / ".drawn.json"
    start = [wall([sys.executable, "-c", "import raygap.plugins as p; p.load_all()"]) for _ in range(args.repeat)]
    rows = {}
    for what, cmd in (("cached run", [*raygap, "run", *common, "-q"]), ("export", [*raygap, "export", *common])):
        redraw, keep = [], []
        for _ in range(args.repeat):
            shutil.rmtree(figures, ignore_errors=True)      # nothing kept: every figure drawn
            redraw.append(wall(cmd))
            keep.append(wall(cmd))                          # the figures of the previous call kept
        assert index.is_file()
        rows[what] = (statistics.median(redraw), statistics.median(keep))
    n = len(list(figures.glob("*.png")))
    print(f"{args.grid} --profile {args.profile} ({total.split(':', 1)[1].strip()}); {n} figures; "
          f"median of {args.repeat}; process start-up + registries (plug-ins, no torch): {statistics.median(start):.2f} s")
    for what, (redraw, keep) in rows.items():
        print(f"  {what:10s}  every figure drawn {redraw:6.2f} s   unchanged figures kept {keep:6.2f} s")
    print("ratios: " + "; ".join(f"{w} kept vs drawn {k / r:.2f} ({r - k:.1f} s saved)" for w, (r, k) in rows.items())
          + f"; goal: cached run < 3 s ({rows['cached run'][1]:.2f} s)")


if __name__ == "__main__":
    main()
