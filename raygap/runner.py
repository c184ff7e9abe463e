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
* Stopping (:mod:`raygap.interrupts`): a signal at start-up or while Tune runs ends the
  run with a summary (``interrupted``); the teardown -- trials it started marked
  ``interrupted`` in the store, Ray shut down, any process left behind ended -- always
  runs to its end.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import interrupts
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
    interrupted: str | None = None    # the signal that stopped the run, if one did
    marked_interrupted: int = 0       # running trials marked interrupted in the store
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
    from .errors import CheckpointMismatch, ConfigError, DataError, DeviceUnavailable
    from .trial import CHECKPOINT, TrialDiverged, configure_threads, fit, load_data, pick_device

    DETERMINISTIC_FAILURES = (TrialDiverged, ConfigError, DataError, DeviceUnavailable, CheckpointMismatch)

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
            device = pick_device(cfg.train.device, gpu_share=cfg.resources.gpu)
            result = fit(cfg, bundle, device=device, checkpoint_dir=work, report=report)
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


class _NoTuneRestoreHint(logging.Filter):
    """Tune ends an interrupted experiment with "Resume experiment with: Tuner.restore(...)":
    wrong advice for raygap, whose store resumes a grid from the same command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore" not in record.getMessage()


def _start_ray(address: str | None, num_cpus: int | None, log) -> bool:
    """Connect to ``address`` or start the embedded local instance. Returns True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ray's C++ crash handler, when installed in this driver, puts SIGTERM back to its default
    # action inside ray.shutdown(): a SIGTERM during teardown would then kill raygap before
    # its tables are written. Python's faulthandler still reports a crash.
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    if address:
        log(f"joining the Ray cluster at {address}")
        ray.init(address=address, log_to_driver=False)
        return False
    from ray._private import ray_constants

    if ray_constants.ENABLE_RAY_CLUSTER:
        # Ray read the variable when it was imported, before raygap could set it
        raise ConfigError(f"Ray was imported before {LOOPBACK_ENV}=0 was set, so an embedded instance would listen "
                          "on every interface; refusing to start it", key="--address",
                          hint=f"set {LOOPBACK_ENV}=0 before importing ray, or join a cluster with --address")
    cpus = num_cpus or _usable_cpus()
    log(f"starting a local Ray instance ({cpus} CPUs, 127.0.0.1 only)")
    interrupts.pause_point("startup")
    ray.init(address="local", num_cpus=cpus, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    return True


def _usable_cpus() -> int:
    """The CPUs this process may use (its affinity mask: SLURM and cgroup cpusets), not the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


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
    """Run every trial of ``grid`` that the store does not hold as done.

    A stop signal (see :mod:`raygap.interrupts`) does not raise out of here: the summary
    says ``interrupted`` and counts what is unfinished, the trials this driver had started
    are ``interrupted`` in the store, Ray is down and no process is left behind.
    """
    from .store import this_process_owner

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
    # waiting on subprocesses); a daemon thread, so an interrupted start-up does not wait for it
    shared_box: dict = {}

    def build():
        try:
            shared_box["value"] = _shared_bundles(todo, log)
        except BaseException as e:  # noqa: BLE001 -- re-raised in the main thread
            shared_box["error"] = e

    builder = threading.Thread(target=build, name="raygap-data", daemon=True)
    builder.start()
    owner = this_process_owner()
    started = starting = False
    try:
        import ray
        from ray import tune

        # ours to stop and clean up: an embedded instance this call starts (not one already up)
        starting = not (address or os.environ.get("RAY_ADDRESS") or ray.is_initialized())
        try:
            started = _start_ray(address, num_cpus, log)
        except SystemExit as e:         # ray.init's own SIGTERM handler calls sys.exit(15)
            interrupts.note(e.code if isinstance(e.code, int) and e.code > 0 else 15)
            raise KeyboardInterrupt("SIGTERM") from e
        interrupts.install()            # ray.init replaced raygap's SIGTERM handler with its own
        problem = check_resources([s.resources for s in todo], ray.nodes())
        if problem:
            raise ConfigError(problem, file=str(grid.path), key="resources")
        while builder.is_alive():
            builder.join(0.2)
        if "error" in shared_box:
            raise shared_box["error"]
        shared = shared_box["value"]
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
                name=f"{grid.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}", storage_path=storage_path,
                failure_config=tune.FailureConfig(max_failures=max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[cb], verbose=0),
        )
        log(f"launching {len(todo)} trial(s) ({summary.reused} reused from the store)")
        tune_log = logging.getLogger("ray.tune.tune")
        if not any(isinstance(f, _NoTuneRestoreHint) for f in tune_log.filters):
            tune_log.addFilter(_NoTuneRestoreHint())
        with interrupts.tune_phase():
            results = tuner.fit()
        # Tuner.fit() does not raise on trial errors: reconcile with what the callback saw
        for r in results:
            key = (r.config or {}).get("t", {}).get("key")
            if key and r.error is not None and key not in summary.failed and store.status_of([key]).get(key) != "done":
                err = f"{type(r.error).__name__}: {r.error}".splitlines()[0][:500]
                store.save_failed(key, err)
                summary.failed[key] = err
    except KeyboardInterrupt:
        summary.interrupted = interrupts.last_signal() or "SIGINT"
    finally:
        with interrupts.protected("teardown"):
            _teardown(store, todo, owner, summary, ours=started or starting, log=log)
    if interrupts.interrupted() and not summary.interrupted:
        summary.interrupted = interrupts.last_signal()      # Tune's own SIGINT handler ended fit() gracefully
    st = store.status_of([s.key for s in todo])
    summary.unfinished = sum(1 for s in todo if st.get(s.key) not in ("done", "failed"))
    summary.wall_seconds = time.perf_counter() - t0
    return summary


def _teardown(store, todo, owner: str, summary: RunSummary, *, ours: bool, log) -> None:
    """Mark this driver's running trials interrupted; if the Ray instance is ours (started,
    or being started, by this call), shut it down and end any process it left behind. A
    second signal here skips the graceful part but still ends every child process."""
    try:
        summary.marked_interrupted = store.mark_interrupted([s.key for s in todo], owner)
        if ours:
            import ray

            ray.shutdown()
            interrupts.install()        # in case Ray's shutdown reset a handler
    finally:
        if ours:
            left = interrupts.end_descendants()
            if left:
                log(f"ended {len(left)} process(es) Ray left behind")


def _trial_name(trial) -> str:
    return f"trial-{trial.config['t']['key']}"


def _col(column: dict) -> str:
    return ", ".join(f"{v}" for v in column.values()) or "-"
