"""Grid wall time vs (sum of single-trial times / cores), and a fully cached re-run.

One run, side by side: each trial of a small grid is first run alone in this process
(``raygap.trial.run_trial``, one torch thread, as the grid gives each trial one CPU);
then the same trials ``cores`` at a time in plain processes without Ray (what running
trials side by side costs on this machine by itself); then the whole grid through
``raygap run`` (embedded Ray, every core); then the grid again, which finds every trial
in the store. Trials last >= 20 s each on a 2-core
machine. Goals: grid / (sum / cores) <= 1.10; cached re-run < 10 s.

    .venv/bin/python bench/grid_overhead.py [--trials 4] [--epochs 8] [--cores 2]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from raygap.grid import load_grid
from raygap.trial import run_trial


def _run_one(raw: dict) -> None:
    from raygap.config import resolve
    run_trial(resolve(raw), allotted_cpus=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="raygap-bench-"))
    grid_path = tmp / "bench.yaml"
    grid_path.write_text(yaml.safe_dump({
        "name": "bench",
        "base": {"data": {"name": "avdigits", "visual_corrupt": 0.3},
                 "model": {"backbone": "small", "width": a.width}, "optim": {"lr": 0.1},
                 "train": {"epochs": a.epochs, "batch_size": 64, "device": "cpu", "threads": 1}},
        "rows": {"Concat": {"method": {"name": "concat"}}},
        "seeds": list(range(a.trials)), "metrics": ["acc"], "resources": {"cpu": 1}}))
    grid = load_grid(grid_path)

    single = []
    for t in grid.trials:
        t0 = time.perf_counter()
        run_trial(t.config, allotted_cpus=1)
        single.append(time.perf_counter() - t0)
    ideal = sum(single) / a.cores

    # the same trials, `cores` at a time in plain processes (no Ray): what running trials side
    # by side costs on this machine by itself (shared caches, memory bandwidth, clocks)
    import multiprocessing as mp
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(a.cores, maxtasksperchild=1) as pool:
        pool.map(_run_one, [t.config.to_dict() for t in grid.trials], chunksize=1)
    plain_wall = time.perf_counter() - t0

    cmd = [sys.executable, "-m", "raygap", "run", str(grid_path), "--results", str(tmp / "results"),
           "--num-cpus", str(a.cores)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    grid_wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    t0 = time.perf_counter()
    r2 = subprocess.run(cmd, capture_output=True, text=True)
    cached = time.perf_counter() - t0
    assert r2.returncode == 0 and "0 run now" in r2.stdout, r2.stdout[-2000:]

    print(f"{a.trials} trials (avdigits, small width {a.width}, {a.epochs} epochs, 1 CPU each) on {a.cores} cores")
    print("single-trial times: " + ", ".join(f"{s:.1f}s" for s in single) + f"  (sum {sum(single):.1f}s)")
    print(f"grid wall time (raygap run, Ray start-up included): {grid_wall:.1f}s; sum/cores = {ideal:.1f}s")
    print(f"ratio grid / (sum / cores) = {grid_wall / ideal:.3f}   (goal <= 1.10)")
    print(f"the same trials {a.cores} at a time in plain processes, no Ray: {plain_wall:.1f}s, "
          f"ratio {plain_wall / ideal:.3f} (side-by-side cost of the machine itself, process start included)")
    import sqlite3
    with sqlite3.connect(tmp / "results" / "store.sqlite") as c:
        start, end = c.execute("SELECT min(started), max(finished) FROM trials WHERE status='done'").fetchone()
    print(f"of which Ray start-up, imports and dataset build before the first trial, and shutdown: "
          f"{grid_wall - (end - start):.1f}s; first trial start -> last trial end {end - start:.1f}s, "
          f"ratio {(end - start) / ideal:.3f}")
    print(f"fully cached re-run: {cached:.1f}s   (goal < 10 s)")


if __name__ == "__main__":
    main()
