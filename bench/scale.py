"""How raygap's own bookkeeping grows with the number of trials, against bare Ray Tune.

One run, side by side, for each N: N trivial trials (a null method and a null dataset that only
this bench registers: 8 training samples of 8x8 inputs, one epoch, a fraction of a second each)
through raygap's runner (``run_grid``: the store, the claims and their lease, the progress
lines, the store callback) and through a bare Ray Tune ``Tuner`` that runs the same trainable
(``raygap.runner.worker.trainable``) on the same configs, with the same resources, storage,
checkpoint keeping and actor reuse, but none of raygap's driver. Both on one Ray instance this
bench starts (its workers register the null method and dataset through Ray's
``worker_process_setup_hook``). Printed per N: both wall times, raygap / bare Tune, and the
per-trial overhead (raygap - bare) / N. Then, on a grid of 10,000 cells (1 row x 100 learning
rates x 100 seeds): the grid's validation and expansion (``load_grid``), and ``status`` and
``export`` on a store that holds all 10,000 as done (synthetic rows written by the bench, which
says how long that took; not a figure of raygap's).

Goals (issue 24): raygap / bare Tune <= 1.15 at N = 1000; the per-trial overhead grows no
faster than linearly; validation + expansion of 10,000 cells < 2 s; status and export on the
10,000-trial store < 2 s each.

    .venv/bin/python bench/scale.py [--n 100,300,1000] [--cpus 2] [--cells 10000]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")     # loopback only, before Ray is imported

NULL = "scale_null"


def register() -> None:
    """The bench's null dataset and method (in this process and, as Ray's worker set-up hook, in
    every worker). Idempotent."""
    from raygap.data.base import DataLayout, DatasetBundle, ModalitySpec, TensorSplit
    from raygap.methods.base import Method
    from raygap.plugins import load_all
    from raygap.registry import DATASETS, METHODS

    load_all()
    if NULL in DATASETS:
        return

    def build(params, common):
        """The bench's null dataset: random 8x8 audio and visual inputs, two classes."""
        import torch

        def split(n: int, seed: int):
            g = torch.Generator().manual_seed(seed)
            return TensorSplit({"audio": torch.randn(n, 1, 8, 8, generator=g),
                                "visual": torch.randn(n, 1, 1, 8, 8, generator=g)},
                               torch.arange(n) % 2, [f"{seed}-{i}" for i in range(n)])

        return DatasetBundle(NULL, [ModalitySpec("audio", "spectrogram", (1, 8, 8)),
                                    ModalitySpec("visual", "frames", (1, 1, 8, 8))],
                             2, ["a", "b"], split(8, 0), split(4, 1), split(4, 2))

    DATASETS.register(NULL, params=None, in_memory=True, layout=lambda p: DataLayout(["audio", "visual"]))(build)

    class Null(Method):
        """The bench's null method: the base class's task loss, nothing else."""
        tasks = ("classification",)

    METHODS.register(NULL, params=None, version=1)(Null)


BASE = {"data": {"name": NULL}, "method": {"name": NULL}, "model": {"backbone": "small", "width": 4},
        "train": {"epochs": 1, "batch_size": 8, "device": "cpu", "threads": 1, "checkpoint_every": 1}}


def write_grid(path: Path, name: str, seeds: int, lrs: list[float] | None = None) -> Path:
    doc = {"name": name, "base": BASE, "rows": {"Null": {}}, "seeds": list(range(seeds)), "metrics": ["acc"],
           "resources": {"cpu": 1, "gpu": 0}}
    if lrs:                              # the sweep's rows only (a listed row would be one more)
        del doc["rows"]
        doc["sweep"] = {"optim.lr": lrs}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def through_raygap(grid, folder: Path) -> float:
    from raygap.runner import run_grid
    from raygap.store import Store

    store = Store(folder / "store.sqlite")
    t0 = time.perf_counter()
    s = run_grid(grid, store, storage=str(folder / "ray"), max_failures=0, log=lambda line: None)
    wall = time.perf_counter() - t0
    assert s.done == len(grid.trials) and not s.failed, (s.done, s.failed)
    return wall


def through_bare_tune(grid, folder: Path) -> float:
    """The same trainable over the same configs, by a bare Tuner: no store, no claims, no
    callback, no progress (the in-memory data built once here, as raygap's driver does; the one
    result logger raygap keeps, Tune's JSON one, kept too)."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from raygap.runner.shared_data import data_key
    from raygap.runner.worker import trainable
    from raygap.trial import load_data

    t0 = time.perf_counter()
    cfg = grid.trials[0].config
    shared = {data_key(cfg): load_data(cfg)}
    items = [{"key": s.key, "label": s.label, "trial": s.config.to_dict()} for s in grid.trials]
    fn = tune.with_resources(tune.with_parameters(trainable, shared=shared), {"cpu": 1, "gpu": 0})
    tuner = tune.Tuner(fn, param_space={"t": tune.grid_search(items)},
                       tune_config=tune.TuneConfig(reuse_actors=True),
                       run_config=tune.RunConfig(name="bare", storage_path=str(folder / "ray"), verbose=0,
                                                 callbacks=[JsonLoggerCallback()],      # as raygap's batch has
                                                 failure_config=tune.FailureConfig(max_failures=0),
                                                 checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    results = tuner.fit()
    wall = time.perf_counter() - t0
    assert not results.errors and len(results) == len(items), results.errors
    return wall


def bookkeeping(folder: Path, cells: int) -> list[str]:
    """Validation + expansion, status and export on a ``cells``-trial grid and store."""
    from raygap.export import export_grid
    from raygap.grid import load_grid
    from raygap.status import status_text
    from raygap.store import Store

    lrs = [round(0.001 * (i + 1), 6) for i in range(100)]
    folder.mkdir(parents=True, exist_ok=True)
    path = write_grid(folder / "big.yaml", "big", max(1, cells // len(lrs)), lrs)
    t0 = time.perf_counter()
    grid = load_grid(path)
    expand = time.perf_counter() - t0
    store = Store(folder / "store.sqlite")
    t0 = time.perf_counter()
    store.register(grid)
    hist = [{"epoch": 0, "acc": 0.5, "val_acc": 0.5, "loss": 0.7}]
    for s in grid.trials:               # synthetic done rows: what status and export read
        store.save_done(s.key, {"acc": 0.5 + (s.seed % 7) / 100, "val_acc": 0.5}, hist, 0.1, {"device": "cpu"})
    fill = time.perf_counter() - t0
    t0 = time.perf_counter()
    text = status_text(grid, store)
    status = time.perf_counter() - t0
    t0 = time.perf_counter()
    export_grid(grid, store, folder / "tables")
    export = time.perf_counter() - t0
    assert f"{len(grid.trials)}" in text, text[:300]
    return [f"grid of {len(grid.trials)} cells: validation + expansion {expand:.2f}s (goal < 2 s)",
            f"store of {len(grid.trials)} done trials (synthetic rows; writing them took {fill:.1f}s): "
            f"status {status:.2f}s, export {export:.2f}s (goal < 2 s each)"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", default="100,300,1000", help="trial counts, comma-separated")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the Ray instance")
    ap.add_argument("--cells", type=int, default=10000, help="cells of the bookkeeping grid (0: skip that part)")
    a = ap.parse_args()
    ns = [int(x) for x in a.n.split(",") if x.strip()]      # (--n "": the bookkeeping part only)
    register()
    tmp = Path(tempfile.mkdtemp(prefix="raygap-scale-"))
    print(f"scale bench: N trivial trials (null method and dataset, 1 epoch) on {a.cpus} CPUs; in {tmp}")
    rows = []
    if ns:
        rows = side_by_side(ns, a.cpus, tmp)
    for line in bookkeeping(tmp / "big", a.cells) if a.cells > 0 else []:
        print(line, flush=True)
    if rows:
        n, ours, bare = rows[-1]
        print(f"at N={n}: raygap / bare Tune = {ours / bare:.2f} (goal <= 1.15 at N = 1000)")
    shutil.rmtree(tmp, ignore_errors=True)


def side_by_side(ns: list[int], cpus: int, tmp: Path) -> list[tuple[int, float, float]]:
    """For each N: raygap's runner, then bare Tune, on one Ray instance; (N, raygap s, bare s)."""
    import ray

    from raygap.grid import load_grid

    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,   # (never another run's)
             runtime_env={"worker_process_setup_hook": register})
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    rows = []
    try:
        warm = load_grid(write_grid(tmp / "warm.yaml", "warm", 4))     # imports and worker start-up, not counted
        through_bare_tune(warm, tmp / "warm-bare")
        through_raygap(warm, tmp / "warm-raygap")
        for n in ns:
            # a grid per N (its own seeds: nothing reused from an earlier N's store)
            grid = load_grid(write_grid(tmp / f"n{n}.yaml", f"n{n}", n))
            bare = through_bare_tune(grid, tmp / f"bare-{n}")
            ours = through_raygap(grid, tmp / f"raygap-{n}")
            rows.append((n, ours, bare))
            print(f"N={n:5d}: raygap {ours:7.1f}s  bare Tune {bare:7.1f}s  ratio {ours / bare:5.2f}  "
                  f"per-trial overhead {(ours - bare) / n * 1000:7.1f} ms  "
                  f"(raygap {ours / n * 1000:.0f} ms/trial, bare {bare / n * 1000:.0f} ms/trial)", flush=True)
    finally:
        ray.shutdown()
    return rows


if __name__ == "__main__":
    main()
