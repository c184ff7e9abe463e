"""Runs a grid's missing trials as Ray Tune trials. The only module that imports Ray.

* Embedded default: a local Ray instance that raygap starts and stops, no dashboard,
  bound to 127.0.0.1 only (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` before it starts).
  ``address`` (or ``RAY_ADDRESS``) joins an existing cluster instead.
* The trainable is a plain function: it calls the one-trial engine
  (:func:`raygap.trial.run_trial`), ``tune.report``-s every epoch with a checkpoint, and
  resumes from ``tune.get_checkpoint()`` when Tune restarts it after a worker died.
* The driver is the only writer of the trial store: a Tune callback records each epoch,
  each finished trial and each failure, so a driver killed mid-grid loses nothing that
  finished and the next run launches only what is missing.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@dataclass
class RunSummary:
    total: int = 0                    # distinct trials in the grid
    reused: int = 0                   # already done before this run
    launched: int = 0
    done: int = 0                     # finished in this run
    failed: dict[str, str] = field(default_factory=dict)    # key -> error line
    unfinished: int = 0               # launched but neither done nor failed (the run was interrupted)
    wall_seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        if self.failed:
            return 1
        return 130 if self.unfinished else 0


# ----------------------------------------------------------------------------- the trainable
def _scalars(record: dict) -> dict:
    return {k: v for k, v in record.items()
            if isinstance(v, (int, float, str, bool)) and not (isinstance(v, float) and math.isnan(v))}


def trainable(config: dict, shared: dict | None = None) -> None:
    """Tune function trainable: one raygap trial. ``config["t"] = {"key", "label", "trial"}``."""
    import ray
    from ray import tune

    from .config import resolve
    from .errors import ConfigError, DataError
    from .trial import CHECKPOINT, TrialDiverged, configure_threads, fit, load_data, pick_device

    DETERMINISTIC_FAILURES = (TrialDiverged, ConfigError, DataError)

    import torch

    cfg = resolve(config["t"]["trial"])
    key = config["t"]["key"]
    work = Path(tempfile.mkdtemp(prefix=f"raygap-{key}-"))
    resumed_from = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            src = Path(d) / CHECKPOINT
            if src.exists():
                shutil.copy2(src, work / CHECKPOINT)
                resumed_from = torch.load(src, map_location="cpu", weights_only=False)["epoch"]
    configure_threads(cfg, cfg.resources.cpu)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    node = ray.get_runtime_context().get_node_id()
    data_key = json.dumps(cfg.to_dict()["data"], sort_keys=True)
    bundle = (shared or {}).get(data_key)
    bundle = bundle if bundle is not None else load_data(cfg)

    def report(record: dict, ckpt_dir):
        metrics = _scalars(record)
        metrics["record_json"] = json.dumps(record, default=str)
        metrics.update(pid=os.getpid(), node=node)
        if ckpt_dir is not None:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(ckpt_dir)))
        else:
            tune.report(metrics)

    t0 = time.perf_counter()
    try:
        try:
            result = fit(cfg, bundle, device=pick_device(cfg.train.device), checkpoint_dir=work, report=report)
        except DETERMINISTIC_FAILURES as e:
            # the same config fails the same way again: report it as final instead of raising,
            # so Tune does not spend its retries (meant for dead workers) on it
            tune.report({"failed_json": json.dumps({"error": f"{type(e).__name__}: {e}".splitlines()[0][:500]}),
                         "pid": os.getpid(), "node": node})
            return
        final = {"final_json": json.dumps({"metrics": result.metrics, "history": result.history, "info": {
            **result.info, "node": node, "pid": os.getpid(), "resumed_from_epoch": resumed_from,
            "wall_seconds": time.perf_counter() - t0}}, default=str), "pid": os.getpid(), "node": node}
        tune.report(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------- driver side
def _shown_metric(record: dict, prefix: str = "") -> str:
    """The metric a progress line shows: accuracy, or MAE for a regression target."""
    return "acc" if f"{prefix}acc" in record or f"{prefix}mae" not in record else "mae"


def _store_callback(store, summary: RunSummary, n_todo: int, log):
    from ray.tune import Callback

    class StoreCallback(Callback):
        """Writes every epoch, every finished trial and every failure to the trial store."""

        def __init__(self):
            self.history: dict[str, list] = {}

        def _key(self, trial) -> str:
            return trial.config["t"]["key"]

        def _label(self, trial) -> str:
            return trial.config["t"]["label"]

        def on_trial_start(self, iteration, trials, trial, **info):
            key = self._key(trial)
            self.history.setdefault(key, [])
            store.mark_running(key, trial.config["t"]["trial"])

        def on_trial_result(self, iteration, trials, trial, result, **info):
            key = self._key(trial)
            hist = self.history.setdefault(key, [])
            if "record_json" in result:
                rec = json.loads(result["record_json"])
                rec["worker_pid"], rec["worker_node"] = result.get("pid"), result.get("node")
                hist[:] = [h for h in hist if h["epoch"] < rec["epoch"]] + [rec]   # a restart replays epochs
                store.record_epoch(key, hist)
                name = _shown_metric(rec, "val_")
                log(f"  {self._label(trial)}: epoch {rec['epoch']}  val {name} {rec.get('val_' + name, float('nan')):.4f}"
                    f"  test {name} {rec.get('test_' + name, float('nan')):.4f}")
            if "final_json" in result:
                fin = json.loads(result["final_json"])
                store.save_done(key, fin["metrics"], fin["history"], fin["info"].get("wall_seconds", 0.0), fin["info"])
                summary.done += 1
                log(f"[{summary.done + len(summary.failed)}/{n_todo}] done {self._label(trial)} "
                    f"({key}): {(name := _shown_metric(fin['metrics']))} {fin['metrics'].get(name, float('nan')):.4f}")
            if "failed_json" in result:
                self._fail(trial, json.loads(result["failed_json"])["error"])

        def on_trial_error(self, iteration, trials, trial, **info):
            self._fail(trial, _error_line(trial))

        def _fail(self, trial, err: str):
            key = self._key(trial)
            store.save_failed(key, err)
            summary.failed[key] = err
            log(f"[{summary.done + len(summary.failed)}/{n_todo}] FAILED {self._label(trial)} ({key}): {err}")

    return StoreCallback()


def _error_line(trial) -> str:
    path = getattr(trial, "error_file", None) or getattr(getattr(trial, "run_metadata", None), "error_filename", None)
    text = ""
    try:
        if path and os.path.exists(path):
            text = Path(path).read_text()
    except OSError:
        pass
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    # the last line of a Python traceback is "ExcType: message"
    for ln in reversed(lines):
        if ":" in ln and not ln.startswith(("File ", "^", "~")):
            return ln[:500]
    return (lines[-1] if lines else "trial failed (no error file)")[:500]


def _start_ray(address: str | None, num_cpus: int | None, log) -> bool:
    """Connect to ``address`` or start the embedded local instance. Returns True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if address:
        ray.init(address=address, log_to_driver=False)
        return False
    os.environ[LOOPBACK_ENV] = "0"          # embedded: bind 127.0.0.1 only
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    return True


def check_resources(requests: list[dict], nodes: list[dict]) -> str | None:
    """A line saying why some trial's request can never be placed, or None.

    A trial needs its CPUs and GPUs on one node; Ray would leave it PENDING forever.
    ``nodes`` are ``ray.nodes()`` entries (alive ones are used).
    """
    caps = [(n.get("Resources", {}).get("CPU", 0.0), n.get("Resources", {}).get("GPU", 0.0))
            for n in nodes if n.get("Alive", True)]
    for req in requests:
        cpu, gpu = float(req.get("cpu", 1)), float(req.get("gpu", 0))
        if not any(c >= cpu and g >= gpu for c, g in caps):
            have = ", ".join(f"{c:g} CPU/{g:g} GPU" for c, g in caps) or "no nodes"
            what = f"{cpu:g} CPU" + (f" + {gpu:g} GPU" if gpu else "")
            return (f"a trial asks for {what} on one node, but no node of the cluster has that "
                    f"(nodes: {have}); such trials would stay PENDING forever")
    return None


def _shared_bundles(specs, log) -> dict:
    """Build in-memory datasets once in the driver and hand them to trials (tune.with_parameters)."""
    from .registry import DATASETS
    from .trial import load_data

    shared = {}
    for s in specs:
        d = s.config.to_dict()["data"]
        if not DATASETS.get(d["name"]).meta.get("in_memory"):
            continue
        k = json.dumps(d, sort_keys=True)
        if k not in shared:
            shared[k] = load_data(s.config)
    if shared:
        log(f"built {len(shared)} in-memory dataset(s) once for all trials")
    return shared


def run_grid(grid, store, *, address: str | None = None, storage: str | None = None,
             max_failures: int = 1, num_cpus: int | None = None, log=print) -> RunSummary:
    """Run every trial of ``grid`` that the store does not hold as done."""
    t0 = time.perf_counter()
    store.register(grid)
    distinct = {}
    for s in grid.trials:
        distinct.setdefault(s.key, s)
    status = store.status_of(list(distinct))
    todo = [s for k, s in distinct.items() if status.get(k) != "done"]
    summary = RunSummary(total=len(distinct), reused=len(distinct) - len(todo), launched=len(todo))
    if not todo:
        summary.wall_seconds = time.perf_counter() - t0
        return summary

    # the in-memory datasets are built in a thread while Ray starts (its start-up is mostly
    # waiting on subprocesses): a few seconds of a grid's fixed start-up cost
    pool = ThreadPoolExecutor(1, thread_name_prefix="raygap-data")
    shared_future = pool.submit(_shared_bundles, todo, log)
    pool.shutdown(wait=False)
    started = False
    try:
        import ray
        from ray import tune

        started = _start_ray(address, num_cpus, log)
    except BaseException:
        shared_future.cancel()
        raise
    if threading.current_thread() is threading.main_thread():
        # SIGTERM stops the run the way Ctrl-C does (Tune stops its trials, the embedded Ray
        # is shut down, finished trials are already in the store); set after ray.init, which
        # installs a handler of its own
        signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        problem = check_resources([s.resources for s in todo], ray.nodes())
        if problem:
            raise ConfigError(problem, file=str(grid.path), key="resources")
        shared = shared_future.result()
        items = [{"key": s.key, "label": f"{s.label} | {_col(s.column)} | seed {s.seed}",
                  "trial": s.config.to_dict()} for s in todo]

        def resources(config):
            r = config["t"]["trial"]["resources"]
            return {"cpu": r["cpu"], "gpu": r["gpu"]}

        fn = tune.with_resources(tune.with_parameters(trainable, shared=shared), resources)
        storage_path = storage or str((Path(store.path).parent / "ray").resolve())
        cb = _store_callback(store, summary, len(todo), log)
        tuner = tune.Tuner(
            fn,
            param_space={"t": tune.grid_search(items)},
            tune_config=tune.TuneConfig(reuse_actors=True, trial_name_creator=_trial_name,
                                        trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(
                name=f"{grid.name}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=storage_path,
                failure_config=tune.FailureConfig(max_failures=max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[cb], verbose=0),
        )
        log(f"launching {len(todo)} trial(s) ({summary.reused} reused from the store)")
        results = tuner.fit()
        # Tuner.fit() does not raise on trial errors: reconcile with what the callback saw
        for r in results:
            key = (r.config or {}).get("t", {}).get("key")
            if key and r.error is not None and key not in summary.failed and store.status_of([key]).get(key) != "done":
                err = f"{type(r.error).__name__}: {r.error}".splitlines()[0][:500]
                store.save_failed(key, err)
                summary.failed[key] = err
        st = store.status_of([s.key for s in todo])
        summary.unfinished = sum(1 for s in todo if st.get(s.key) not in ("done", "failed"))
    finally:
        if started:
            ray.shutdown()
    summary.wall_seconds = time.perf_counter() - t0
    return summary


def _trial_name(trial) -> str:
    return f"trial-{trial.config['t']['key']}"


def _col(column: dict) -> str:
    return ", ".join(f"{v}" for v in column.values()) or "-"
