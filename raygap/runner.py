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
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from . import interrupts
from .errors import ConfigError
from .trialfiles import CHECKPOINT

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
    """Tune function trainable: one raygap trial. ``config["t"] = {"key", "label", "trial"}``,
    and optionally ``resume`` (an earlier run's checkpoints, newest first), ``fork`` (a shared
    warm-up's checkpoint to start from) and ``warmup_out`` (where to keep this trial's
    warm-up end for others: see :meth:`raygap.config.TrialConfig.warmup`)."""
    import ray
    from ray import tune

    from . import checkpoint
    from .config import resolve
    from .errors import CheckpointDeviceMismatch, CheckpointMismatch, ConfigError, DataError, DeviceUnavailable
    from .data.preload import release_device_memory
    from .models.compiled import CompileLimitHit
    from .trial import TrialDiverged, device_kind, fit, load_data, pick_device, prepare_process

    DETERMINISTIC_FAILURES = (TrialDiverged, ConfigError, DataError, DeviceUnavailable, CheckpointMismatch,
                              CheckpointDeviceMismatch, CompileLimitHit)

    cfg = resolve(config["t"]["trial"])
    key = config["t"]["key"]
    caught: list[str] = []                 # Python warnings raised in this trial, sent with the next report
    seen: set[str] = set()

    def catch(message, category, filename, lineno, file=None, line=None):
        text = f"{category.__name__}: {str(message).splitlines()[0][:300]} ({Path(filename).name}:{lineno})"
        if text not in seen:
            seen.add(text)
            caught.append(text)

    warnings.showwarning = catch             # (this worker process runs this trial only)
    prepare_process(cfg, cfg.resources.cpu)  # before anything here touches CUDA
    kind = device_kind(cfg.train.device)     # where it trains (pick_device, below, says if it cannot)
    work = Path(tempfile.mkdtemp(prefix=f"raygap-{key}-"))
    resumed = None                                     # {"epoch", "uri", "history"} of the checkpoint resumed
    notes = []
    ckpt = tune.get_checkpoint()                       # Tune restarted this trial (a worker died)
    candidates = [ckpt] if ckpt is not None else list(config["t"].get("resume") or [])   # newest first
    fork = config["t"].get("fork")
    if ckpt is None and fork:                          # a shared warm-up: after the trial's own checkpoints
        candidates.append(fork)
    for c in candidates:                               # an earlier run's checkpoints: the first usable one
        try:
            c = c if not isinstance(c, str) else checkpoint_at(c)
            with c.as_directory() as d:
                src = Path(d) / CHECKPOINT
                state = checkpoint.load(src)      # a partial upload fails here
                if (why := checkpoint.unusable_on(state, kind)) is not None:   # it cannot continue exactly here
                    notes.append(f"checkpoint {checkpoint_uri(c)} not usable ({why})")
                    continue
                shutil.copy2(src, work / CHECKPOINT)
            resumed = {"epoch": state["epoch"], "uri": checkpoint_uri(c), "history": state.get("history") or []}
            if state.get("key") != key:              # (fit checks it is the warm-up this trial may share)
                resumed["warmup_from"] = state.get("key")
            del state
            break
        except Exception as e:  # noqa: BLE001 -- gone, partial or unreadable: the next older one, and say so
            notes.append(f"checkpoint {c if isinstance(c, str) else checkpoint_uri(c)} not usable "
                         f"({type(e).__name__})")
    if candidates and resumed is None:
        notes.append("started over")
    resumed_from = resumed["epoch"] if resumed else None
    resume_note = "; ".join(notes) or None
    node = ray.get_runtime_context().get_node_id()
    data_key = json.dumps(cfg.to_dict()["data"], sort_keys=True)
    bundle = (shared or {}).get(data_key)             # built once in the driver, or loaded below (inside the try)

    first = [True]
    shared = cfg.warmup()
    warmup_out = config["t"].get("warmup_out") if shared else None

    def report(record: dict, ckpt_dir):
        metrics = _scalars(record)
        if warmup_out and ckpt_dir is not None and record["epoch"] == shared[1] - 1:
            try:                                       # the end of the warm-up, kept for the trials that share it
                metrics["warmup_json"] = json.dumps({"wkey": shared[0], "epoch": record["epoch"],
                                                     "uri": keep_checkpoint(Path(ckpt_dir) / CHECKPOINT, warmup_out)})
            except Exception as e:  # noqa: BLE001 -- the others then train their own warm-up; said
                caught.append(f"could not keep the shared warm-up at {warmup_out}: {type(e).__name__}: {e}"[:300])
        metrics["record_json"] = json.dumps(record, default=str)
        if caught:
            metrics["warnings_json"] = json.dumps(caught)
            caught.clear()
        if first[0] and (resumed or resume_note):      # the first epoch after a resume says from where
            metrics["resumed_json"] = json.dumps({**(resumed or {}), "note": resume_note}, default=str)
        first[0] = False
        metrics.update(pid=os.getpid(), node=node)
        if ckpt_dir is not None:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(ckpt_dir)))
        else:
            tune.report(metrics)

    t0 = time.perf_counter()
    try:
        try:
            if bundle is None:                    # a bad data layout fails like any other deterministic failure
                bundle = load_data(cfg)
            device = pick_device(cfg.train.device, gpu_share=cfg.resources.gpu)
            result = fit(cfg, bundle, device=device, checkpoint_dir=work, report=report, final_checkpoint=False,
                         keep_warmup=bool(warmup_out), gpu_share=min(1.0, cfg.resources.gpu or 1.0))
        except DETERMINISTIC_FAILURES as e:
            # the same config fails the same way again: report it as final instead of raising,
            # so Tune does not spend its retries (meant for dead workers) on it
            import traceback

            trace = None
            try:                                  # the full traceback, where the trial's other files are
                trace = str(Path(tune.get_context().get_trial_dir()) / "error.txt")
                Path(trace).write_text(traceback.format_exc())
            except Exception:  # noqa: BLE001 -- the one-line error is still reported
                trace = None
            tune.report({"failed_json": json.dumps({"error": f"{type(e).__name__}: {e}".splitlines()[0][:500],
                                                    "traceback": trace}),
                         "pid": os.getpid(), "node": node})
            return
        final = {"final_json": json.dumps({"metrics": result.metrics, "history": result.history, "info": {
            **result.info, "node": node, "pid": os.getpid(), "resumed_from_epoch": resumed_from,
            **({"resume_note": resume_note} if resume_note else {}),
            "wall_seconds": time.perf_counter() - t0}}, default=str), "pid": os.getpid(), "node": node}
        tune.report(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if bundle is not None:
            release_device_memory(bundle)              # Tune reuses this actor: the next trial gets the GPU back


def keep_checkpoint(src: Path, uri: str) -> str:
    """Copy a checkpoint file into the folder ``uri`` (a path on the run's storage, or
    ``s3://...``), written under a temporary name and renamed, so a reader never finds half
    a file. Returns ``uri``."""
    import pyarrow.fs

    fs, path, _ = _fs_path(uri)
    fs.create_dir(path, recursive=True)
    tmp = f"{path}/{CHECKPOINT}.part"
    pyarrow.fs.copy_files(str(src), tmp, source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=fs)
    fs.move(tmp, f"{path}/{CHECKPOINT}")
    return uri


def checkpoint_uri(checkpoint) -> str:
    """Where a Tune checkpoint lives, as one string: a local path, or ``s3://bucket/...``."""
    fs = getattr(checkpoint, "filesystem", None)
    kind = getattr(fs, "type_name", "local") if fs is not None else "local"
    if kind == "local":
        return checkpoint.path
    return f"{'gs' if kind == 'gcs' else kind}://{checkpoint.path}"


def _fs_path(uri: str):
    """(pyarrow file system, path in it, URI prefix) of a checkpoint URI or local path."""
    import pyarrow.fs

    if "://" in uri:
        fs, path = pyarrow.fs.FileSystem.from_uri(uri)
        return fs, path, uri.split("://", 1)[0] + "://"
    return pyarrow.fs.LocalFileSystem(), uri, ""


def resume_candidates(uri: str) -> list[str]:
    """The checkpoints a trial may resume from, newest first: any later checkpoint in the
    Tune trial folder of ``uri`` (written to storage by a driver killed before it could
    record it in the store), then ``uri`` itself, the one the store recorded."""
    import re

    import pyarrow.fs

    pattern = re.compile(r"checkpoint_(\d+)")
    try:
        fs, path, prefix = _fs_path(uri)
        parent, _, name = path.rstrip("/").rpartition("/")
        m = pattern.fullmatch(name)
        if not m:
            return [uri]
        infos = fs.get_file_info(pyarrow.fs.FileSelector(parent))
    except Exception:  # noqa: BLE001 -- storage unreachable: the recorded one (the trial says if it fails)
        return [uri]
    later = sorted((int(mm.group(1)), i.path) for i in infos
                   if i.type == pyarrow.fs.FileType.Directory and (mm := pattern.fullmatch(i.base_name))
                   and int(mm.group(1)) > int(m.group(1)))
    return [prefix + p for _, p in reversed(later)] + [uri]


def checkpoint_at(uri: str):
    """The Tune checkpoint at ``uri`` (see :func:`checkpoint_uri`), on whatever storage."""
    import pyarrow.fs
    from ray import tune

    fs, path, _ = _fs_path(uri)
    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        raise FileNotFoundError(uri)
    return tune.Checkpoint(path, filesystem=fs)


def delete_checkpoint(uri: str | None) -> None:
    """Remove a checkpoint folder from the run's storage (a done trial needs it no more)."""
    if not uri:
        return
    try:
        fs, path, _ = _fs_path(uri)
        fs.delete_dir(path)
    except Exception:  # noqa: BLE001 -- already gone, or storage unreachable: nothing to lose
        pass


# ----------------------------------------------------------------------------- driver side
def _store_callback(store, summary: RunSummary, progress):
    from ray.tune import Callback

    from .metrics import shown_metric

    log = progress.note

    class StoreCallback(Callback):
        """Writes every epoch, every finished trial and every failure to the trial store."""

        def __init__(self):
            self.warned: set[str] = set()
            self.history: dict[str, list] = {}
            self.ours: set[str] = set()              # checkpoints this experiment wrote

        def _key(self, trial) -> str:
            return trial.config["t"]["key"]

        def _label(self, trial) -> str:
            return trial.config["t"]["label"]

        def on_trial_start(self, iteration, trials, trial, **info):
            key = self._key(trial)
            resume = trial.config["t"].get("resume")
            if resume and key not in self.history:    # keep the epochs the earlier run recorded, up to its checkpoint
                rec = store.get(key) or {}
                upto = rec.get("checkpoint_epoch")
                self.history[key] = [h for h in rec.get("history") or [] if upto is not None and h["epoch"] <= upto]
                newer = f" ({len(resume) - 1} newer in storage, not recorded)" if len(resume) > 1 else ""
                log(f"  {self._label(trial)}: resuming from the checkpoint of an earlier run "
                    f"(recorded: epoch {upto}){newer}")
            self.history.setdefault(key, [])
            store.mark_running(key, trial.config["t"]["trial"])
            progress.trial_started(key, self._label(trial))

        def on_step_end(self, iteration, trials, **info):
            progress.tick()

        def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
            key = self._key(trial)
            epoch = (trial.last_result or {}).get("epoch")
            uri = checkpoint_uri(checkpoint)
            self.ours.add(uri)
            for stale in store.record_checkpoint(key, uri, epoch):
                if stale == uri or stale not in self.ours:   # (Tune deletes this run's older ones itself)
                    delete_checkpoint(stale)          # an earlier run's, or the trial finished meanwhile
            self._drop_earlier(trial)

        def _drop_earlier(self, trial):
            """The earlier run's checkpoints of this trial: of no use once it has its own, or is done."""
            for c in trial.config["t"].get("resume") or []:
                if c not in self.ours:
                    delete_checkpoint(c)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            key = self._key(trial)
            hist = self.history.setdefault(key, [])
            if "resumed_json" in result:             # the epochs the checkpoint holds, whichever it was
                r = json.loads(result["resumed_json"])
                if "epoch" in r:
                    hist[:] = r["history"]
                    progress.resumed(key, int(r["epoch"]) + 1)
                    if r.get("warmup_from"):
                        log(f"  {self._label(trial)}: started after epoch {r['epoch']} from the shared warm-up "
                            f"of trial {r['warmup_from']}")
                    else:
                        log(f"  {self._label(trial)}: resumed after epoch {r['epoch']} from {r['uri']}")
                if r.get("note"):
                    log(f"  {self._label(trial)}: {r['note']}")
            if "warmup_json" in result:
                w = json.loads(result["warmup_json"])
                delete_checkpoint(store.record_warmup(w["wkey"], w["uri"], int(w["epoch"]), key))
            for text in json.loads(result.get("warnings_json") or "[]"):
                if text not in self.warned:          # each distinct warning once per run
                    self.warned.add(text)
                    log(f"  warning from {self._label(trial)}: {text}")
            if "record_json" in result:
                rec = json.loads(result["record_json"])
                rec["worker_pid"], rec["worker_node"] = result.get("pid"), result.get("node")
                hist[:] = [h for h in hist if h["epoch"] < rec["epoch"]] + [rec]   # a restart replays epochs
                store.record_epoch(key, hist)
                name = shown_metric(rec, "val_")
                progress.epoch(key, self._label(trial), int(rec["epoch"]), name, rec.get("val_" + name, float("nan")),
                               rec.get("epoch_seconds", float("nan")), rec.get("device", ""))
            if "final_json" in result:
                fin = json.loads(result["final_json"])
                store.save_done(key, fin["metrics"], fin["history"], fin["info"].get("wall_seconds", 0.0), fin["info"])
                delete_checkpoint(store.take_checkpoint(key))     # done: its checkpoints are of no more use
                self._drop_earlier(trial)
                summary.done += 1
                progress.trial_done(key, f"{self._label(trial)} ({key}): {(name := shown_metric(fin['metrics']))} "
                                         f"{fin['metrics'].get(name, float('nan')):.4f} on {fin['info'].get('device', '?')}")
            if "failed_json" in result:
                failed = json.loads(result["failed_json"])
                self._fail(trial, failed["error"], failed.get("traceback"))

        def on_trial_error(self, iteration, trials, trial, **info):
            self._fail(trial, _error_line(trial), _error_file(trial))

        def _fail(self, trial, err: str, trace: str | None = None):
            key = self._key(trial)
            store.save_failed(key, err)
            summary.failed[key] = err + (f" [full traceback: {trace}]" if trace else "")
            progress.trial_failed(key, f"{self._label(trial)} ({key}): {summary.failed[key]}")

    return StoreCallback()


def _error_file(trial) -> str | None:
    """Where Tune wrote the trial's full traceback."""
    path = getattr(trial, "error_file", None) or getattr(getattr(trial, "run_metadata", None), "error_filename", None)
    if path and not os.path.isabs(path):
        path = os.path.join(getattr(trial, "local_path", "") or "", path)
    return path or None


def _error_line(trial) -> str:
    path = _error_file(trial)
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


def worker_runtime_env(deterministic: bool) -> dict | None:
    """Ray's ``runtime_env`` for the run's worker processes: ``CUBLAS_WORKSPACE_CONFIG`` when a
    trial is deterministic, so it is set before CUDA starts in every worker, on any node (a
    joined cluster's workers do not inherit this driver's environment). None when no trial needs
    it, or when the submitted job's own runtime_env sets it (Ray refuses a variable set twice)."""
    from .system import CUBLAS_DETERMINISTIC, CUBLAS_ENV

    if not deterministic:
        return None
    try:
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    except ValueError:
        job = {}
    if CUBLAS_ENV in ((job.get("runtime_env") or {}).get("env_vars") or {}):
        return None
    return {"env_vars": {CUBLAS_ENV: os.environ.get(CUBLAS_ENV, CUBLAS_DETERMINISTIC[0])}}


def _start_ray(address: str | None, num_cpus: int | None, log, deterministic: bool = True) -> bool:
    """Connect to ``address`` or start the embedded local instance. Returns True if we started it.
    ``deterministic``: a trial of the run is (:func:`worker_runtime_env`)."""
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
        ray.init(address=address, log_to_driver=False, runtime_env=worker_runtime_env(deterministic))
        return False
    from ray._private import ray_constants

    if ray_constants.ENABLE_RAY_CLUSTER:
        # Ray read the variable when it was imported, before raygap could set it
        raise ConfigError(f"Ray was imported before {LOOPBACK_ENV}=0 was set, so an embedded instance would listen "
                          "on every interface; refusing to start it", key="--address",
                          hint=f"set {LOOPBACK_ENV}=0 before importing ray, or join a cluster with --address")
    from .system import usable_cpus

    cpus = num_cpus or usable_cpus()    # affinity mask and cgroup quota, not the machine's CPUs
    log(f"starting a local Ray instance ({cpus} CPUs, 127.0.0.1 only)")
    interrupts.pause_point("startup")
    ray.init(address="local", num_cpus=cpus, include_dashboard=False,
             log_to_driver=False, configure_logging=False, runtime_env=worker_runtime_env(deterministic))
    return True


AUTOSCALING_CONFIG = "~/ray_bootstrap_config.yaml"   # where `ray up` leaves the autoscaler's config on the head


def addable_node_types(path: str | None = None) -> list[tuple[str, float, float]]:
    """(name, CPUs, GPUs) of the node types an autoscaler may add (``max_workers`` > 0),
    from the cluster launcher's config on the head (``RAYGAP_AUTOSCALING_CONFIG`` or
    ``~/ray_bootstrap_config.yaml``). A type whose resources the config leaves to the
    launcher (filled in from the instance type) counts as able to hold any request."""
    import yaml

    p = Path(os.path.expanduser(path or os.environ.get("RAYGAP_AUTOSCALING_CONFIG") or AUTOSCALING_CONFIG))
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    out = []
    for name, t in (doc.get("available_node_types") or {}).items():
        if not isinstance(t, dict) or int(t.get("max_workers", 0) or 0) <= 0:
            continue
        res = t.get("resources") or {}
        if "CPU" in res or "GPU" in res:
            out.append((str(name), float(res.get("CPU", 0)), float(res.get("GPU", 0))))
        else:
            out.append((str(name), math.inf, math.inf))
    return out


def check_resources(requests: list[dict], nodes: list[dict],
                    addable: list[tuple[str, float, float]] | None = None) -> str | None:
    """A line saying why some trial's request can never be placed, or None.

    A trial needs its CPUs and GPUs on one node; Ray would leave it PENDING forever.
    ``nodes`` are ``ray.nodes()`` entries (alive ones are used); ``addable`` are node types
    an autoscaler can still add (:func:`addable_node_types`), which count too.
    """
    caps = [(n.get("Resources", {}).get("CPU", 0.0), n.get("Resources", {}).get("GPU", 0.0))
            for n in nodes if n.get("Alive", True)]
    caps += [(c, g) for _, c, g in addable or []]
    for req in requests:
        cpu, gpu = float(req.get("cpu", 1)), float(req.get("gpu", 0))
        if not any(c >= cpu and g >= gpu for c, g in caps):
            have = ", ".join(f"{c:g} CPU/{g:g} GPU" for c, g in caps) or "no nodes"
            what = f"{cpu:g} CPU" + (f" + {gpu:g} GPU" if gpu else "")
            return (f"a trial asks for {what} on one node, but no node of the cluster has that, and no node "
                    f"type an autoscaler may add (nodes: {have}); such trials would stay PENDING forever")
    return None


NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "fuse.ceph", "glusterfs",
              "fuse.glusterfs", "fuse.sshfs", "panfs", "wekafs", "fuse.juicefs", "fuse.s3fs", "fuse.gcsfuse",
              "fuse.mount-s3", "9p", "virtiofs", "fuse.weka", "davfs"}


def mount_fs_type(path: str | Path, mounts: str = "/proc/mounts") -> str | None:
    """The file-system type /proc/mounts gives for the mount holding ``path``."""
    p = str(Path(path).resolve())
    best, kind = "", None
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError:
        return None
    for ln in lines:
        parts = ln.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        if (p == point or p.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
            best, kind = point, parts[2]
    return kind


def node_hosts(nodes: list[dict]) -> set[str]:
    """The distinct machines of the live nodes (their node-manager addresses)."""
    return {n.get("NodeManagerAddress") or n.get("NodeManagerHostname") or "?" for n in nodes if n.get("Alive", True)}


def check_storage(storage_path: str, nodes: list[dict], mounts: str = "/proc/mounts") -> str | None:
    """A line saying why trials on other machines could not write their checkpoints to
    ``storage_path``, or None: a URI (s3://, gs://...) or a shared file system is needed
    as soon as the live nodes are on more than one machine."""
    hosts = node_hosts(nodes)
    if len(hosts) <= 1 or "://" in storage_path:
        return None
    kind = mount_fs_type(storage_path, mounts)
    if kind in NETWORK_FS:
        return None
    return (f"the cluster's nodes are on {len(hosts)} machines, but the Tune storage {storage_path} is on "
            f"a local {kind or 'unknown'} file system: trials on the other machines could not write their "
            "checkpoints there")


def _data_key(spec) -> str:
    return json.dumps(spec.config.to_dict()["data"], sort_keys=True)


def _in_memory(spec) -> bool:
    from .registry import DATASETS

    return bool(DATASETS.get(spec.config.data.name).meta.get("in_memory"))


def _shared_bundles(specs, log) -> dict:
    """Build in-memory datasets once in the driver and hand them to trials (tune.with_parameters)."""
    from .trial import load_data

    shared = {}
    for s in specs:
        if not _in_memory(s):
            continue
        k = _data_key(s)
        if k not in shared:
            shared[k] = load_data(s.config)
    if shared:
        log(f"built {len(shared)} in-memory dataset(s) once for all trials")
    return shared


LEASE_S = 120.0        # a claim on a trial lasts this long unless renewed (a crashed driver's trials free up)
RENEW_S = 30.0         # how often a running driver renews its claims
LEDGER_S = 5.0        # how often the ledger of the embedded Ray's processes is refreshed (for a killed driver's successor)
WAIT_POLL_S = 5.0      # how often a driver waiting on another driver's trials looks at the store


def run_grid(grid, store, *, address: str | None = None, storage: str | None = None,
             max_failures: int = 1, num_cpus: int | None = None, log=print, progress=None,
             tracker: str | None = None, share_warmups: bool = True) -> RunSummary:
    """Run every trial of ``grid`` that the store does not hold as done.

    One trial, one run: each trial is claimed in the store before it is launched (a lease
    renewed while this driver lives); trials another live driver holds are left to it and
    waited for, then counted as reused. A trial an earlier, stopped run had started resumes
    from the checkpoint the store recorded for it.

    Shared warm-ups (``share_warmups``; :meth:`TrialConfig.warmup`): of the trials left that
    would train the same warm-up, one (the leader) keeps its checkpoint at the warm-up's end on
    the run's storage; the others wait for it (the next Tune batch) and start from it, so the
    warm-up is trained once. A leader that ends without keeping one (failed, or resumed past
    it) lets the others train their own.

    A stop signal (see :mod:`raygap.interrupts`) does not raise out of here: the summary
    says ``interrupted`` and counts what is unfinished, the trials this driver had started
    are ``interrupted`` in the store, its claims are released, Ray is down and no process
    is left behind.
    """
    from .store import owner_alive, this_process_owner

    t0 = time.perf_counter()
    store.register(grid)
    distinct = {}
    for s in grid.trials:
        distinct.setdefault(s.key, s)
    status = store.status_of(list(distinct))
    todo = [s for k, s in distinct.items() if status.get(k) != "done"]
    summary = RunSummary(total=len(distinct), reused=len(distinct) - len(todo), launched=0)
    if not todo:
        summary.wall_seconds = time.perf_counter() - t0
        return summary
    if progress is None:               # plain lines through ``log``
        from .progress import Progress

        progress = Progress(verbosity=1, tty=False, emit=log)
    progress.begin({s.key: int(s.config.train.epochs) for s in todo}, reused=summary.reused)
    log = progress.note

    owner = this_process_owner()
    storage_path = storage or str((Path(store.path).parent / "ray").resolve())
    started = starting = False
    mine: set[str] = set()              # every trial this driver claimed (released at the end)
    attempted: set[str] = set()         # launched here, or settled by another driver: not launched (again)
    renewer = _Renewer(store, owner)
    results_folder = Path(store.path).parent
    builder = None
    lone: set[str] = set()              # warm-ups whose leader ran here without keeping one
    try:
        import ray

        while not interrupts.interrupted():    # (Tune's own SIGINT handler ends fit() without raising)
            status = store.status_of(list(distinct))
            left = [s for k, s in distinct.items() if status.get(k) != "done" and k not in attempted]
            if not left:
                break
            deferred, forks, keeps = (plan_warmups(left, store.records(s.key for s in left),
                                                   store.warmups({w[0] for s in left if (w := s.config.warmup())}),
                                                   lone) if share_warmups else (set(), {}, {}))
            claimed, held = store.claim([s.key for s in left if s.key not in deferred], owner, LEASE_S)
            mine |= set(claimed)
            renewer.keys = set(mine)
            batch = [s for s in left if s.key in set(claimed)]
            if not batch and not held and deferred:      # (their leader settled meanwhile) plan again
                continue
            if batch:
                if builder is None:
                    starting = not (address or os.environ.get("RAY_ADDRESS") or ray.is_initialized())
                    # an embedded instance: build the in-memory data while Ray starts
                    builder = _DataBuilder(batch if starting else [], log)
                    if starting:             # what a raygap run killed here (SIGKILL, OOM) left running
                        ended = interrupts.end_leftovers(results_folder, owner_alive)
                        if ended:
                            log(f"ended {len(ended)} Ray process(es) a killed raygap run had left running "
                                f"(pids {', '.join(map(str, ended))})")
                    try:
                        started = _start_ray(address, num_cpus, log,
                                             deterministic=any(s.config.train.deterministic for s in todo))
                    except SystemExit as e:         # ray.init's own SIGTERM handler calls sys.exit(15)
                        interrupts.note(e.code if isinstance(e.code, int) and e.code > 0 else 15)
                        raise KeyboardInterrupt("SIGTERM") from e
                    interrupts.install()            # ray.init replaced raygap's SIGTERM handler with its own
                    if started:
                        interrupts.record_children(results_folder, owner)
                        renewer.ledger = results_folder
                    nodes = ray.nodes()
                    problem = check_storage(storage_path, nodes)
                    if problem:
                        raise ConfigError(problem, key="--storage",
                                          hint="pass --storage s3://... or gs://..., or a path on a file system "
                                               "every node mounts (NFS, Lustre...)")
                    if len(node_hosts(nodes)) > 1:
                        # the head may hold no data: each trial builds its in-memory dataset where it runs
                        builder.disable()
                        log("several machines: each trial builds its in-memory dataset on its own node")
                    elif not starting:
                        builder = _DataBuilder(batch, log)
                    renewer.start()
                problem = check_resources([s.resources for s in batch], ray.nodes(), addable_node_types())
                if problem:
                    raise ConfigError(problem, file=str(grid.path), key="resources")
                attempted |= {s.key for s in batch}
                keeps = {k: w for k, w in keeps.items() if k in {s.key for s in batch}}
                say_warmups(batch, deferred, forks, keeps, log)
                _tune_batch(grid, store, batch, builder.result(batch), summary, held, storage_path=storage_path,
                            max_failures=max_failures, log=log, progress=progress, tracker=tracker,
                            forks=forks, keeps={k: f"{storage_path.rstrip('/')}/warmups/{w}" for k, w in keeps.items()})
                kept = store.warmups(keeps.values())
                lone |= {w for w in keeps.values() if w not in kept}   # no warm-up kept: the others train theirs
            elif held:
                _wait_for_others(store, held, distinct, summary, attempted, log)
    except KeyboardInterrupt:
        summary.interrupted = interrupts.last_signal() or "SIGINT"
    finally:
        with interrupts.protected("teardown"):
            renewer.stop()
            _teardown(store, todo, mine, owner, summary, ours=started or starting, log=log)
            if started or starting:
                interrupts.drop_ledger(results_folder)
            progress.close()
    if interrupts.interrupted() and not summary.interrupted:
        summary.interrupted = interrupts.last_signal()      # Tune's own SIGINT handler ended fit() gracefully
    if share_warmups:
        drop_finished_warmups(store, distinct.values())
    st = store.status_of([s.key for s in todo])
    # reused: done at the end, but not run by this driver (done before, or by another driver meanwhile)
    summary.reused = (summary.total - len(todo)) + sum(1 for s in todo if st.get(s.key) == "done") - summary.done
    summary.unfinished = sum(1 for s in todo if st.get(s.key) not in ("done", "failed"))
    summary.wall_seconds = time.perf_counter() - t0
    return summary


class _DataBuilder:
    """In-memory datasets built in a daemon thread while Ray starts (its start-up is mostly
    waiting on subprocesses); an interrupted start-up does not wait for it."""

    def __init__(self, specs, log):
        self.box: dict = {}
        self.log = log
        self.enabled = True
        self.thread = threading.Thread(target=self._build, args=(specs,), name="raygap-data", daemon=True)
        self.thread.start()

    def disable(self) -> None:
        """Trials build their own data (on a cluster of several machines)."""
        self.enabled = False

    def _build(self, specs):
        try:
            self.box["value"] = _shared_bundles(specs, self.log)
        except BaseException as e:  # noqa: BLE001 -- re-raised in the main thread
            self.box["error"] = e

    def result(self, specs) -> dict:
        if not self.enabled:
            return {}
        while self.thread.is_alive():
            self.thread.join(0.2)
        if "error" in self.box:
            raise self.box["error"]
        shared = self.box.setdefault("value", {})
        missing = [s for s in specs if _data_key(s) not in shared and _in_memory(s)]
        if missing:                  # a later batch with other datasets (rare): build those here
            shared.update(_shared_bundles(missing, self.log))
        return shared


class _Renewer:
    """Renews this driver's claims every RENEW_S seconds while it runs, and refreshes the
    ledger of the embedded Ray's processes (``ledger``: the results folder) every LEDGER_S."""

    def __init__(self, store, owner: str):
        self.store, self.owner, self.keys = store, owner, set()
        self.ledger: Path | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="raygap-lease", daemon=True)

    def start(self):
        if not self._thread.is_alive():
            self._thread.start()

    def _run(self):
        last_renew = time.monotonic()
        while not self._stop.wait(min(LEDGER_S, RENEW_S)):
            if self.ledger is not None:
                interrupts.record_children(self.ledger, self.owner)
            if time.monotonic() - last_renew < RENEW_S:
                continue
            last_renew = time.monotonic()
            try:
                self.store.renew(list(self.keys), self.owner, LEASE_S)
            except Exception as e:  # noqa: BLE001 -- said, retried at the next tick
                print(f"raygap: could not renew the claims on {len(self.keys)} trial(s): {e}", flush=True)

    def stop(self):
        self._stop.set()


def _tune_batch(grid, store, batch, shared, summary: RunSummary, held: dict, *, storage_path, max_failures,
                log, progress, tracker=None, forks: dict | None = None, keeps: dict | None = None) -> None:
    """One Tune experiment over ``batch`` (trials this driver has claimed)."""
    import uuid

    from ray import tune

    recs = store.records(s.key for s in batch)
    items = []
    for s in batch:
        rec = recs.get(s.key) or {}
        resume = None
        if rec.get("checkpoint"):
            found = resume_candidates(rec["checkpoint"])     # newest first: one a killed driver did not record too
            if rec.get("status") == "failed":        # a failure starts over: its checkpoints are stale
                store.take_checkpoint(s.key)
                for c in found:
                    delete_checkpoint(c)
            else:
                resume = found
        items.append({"key": s.key, "label": f"{s.label} | {_col(s.column)} | seed {s.seed}",
                      "name": _readable("-".join([s.label, *([_col(s.column)] if s.column else []), f"seed{s.seed}"]))
                      + f"-{s.key[:8]}",
                      "trial": s.config.to_dict(), "resume": resume,
                      "fork": (forks or {}).get(s.key), "warmup_out": (keeps or {}).get(s.key)})

    def resources(config):
        r = config["t"]["trial"]["resources"]
        return {"cpu": r["cpu"], "gpu": r["gpu"]}

    fn = tune.with_resources(tune.with_parameters(trainable, shared=shared), resources)
    summary.launched += len(batch)
    cb = _store_callback(store, summary, progress)
    name = f"{grid.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    # Tune's own console output (its status box, a TensorBoard hint into Ray's session folder) and
    # its default CSV and TensorBoard files per trial are off: raygap prints its progress and keeps
    # results in its store; --tracker adds the logger asked for. (Tune's result grid reads result.json.)
    from ray.tune.logger import JsonLoggerCallback

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    experiment = Path(storage_path) / name if "://" not in storage_path else f"{storage_path.rstrip('/')}/{name}"
    trackers = [JsonLoggerCallback()] + tracker_callbacks(tracker, grid, experiment, log, Path(store.path).parent)
    tuner = tune.Tuner(
        fn,
        param_space={"t": tune.grid_search(items)},
        tune_config=tune.TuneConfig(reuse_actors=True, trial_name_creator=_trial_name,
                                    trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(
            # unique per driver and batch: two drivers never share a Tune folder
            name=name, storage_path=storage_path,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[cb, *trackers], verbose=0),
    )
    resuming = sum(1 for it in items if it["resume"])
    others = f"; {len(held)} left to another raygap run" if held else ""
    log(f"launching {len(batch)} trial(s) ({summary.reused} reused from the store"
        + (f", {resuming} resuming from a checkpoint" if resuming else "") + f"{others})")
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


def plan_warmups(left, records: dict, recorded: dict, lone: set) -> tuple[set, dict, dict]:
    """Shared warm-ups among the trials ``left``: ``(deferred, forks, keeps)``.

    Trials with the same :meth:`TrialConfig.warmup` key form a group. With the warm-up
    ``recorded`` in the store, every member may start from it (``forks``: key -> uri; a trial
    with a checkpoint of its own resumes from that first). Otherwise, if two or more members
    would train the warm-up's end (no checkpoint of their own past it), the one furthest
    along is the leader (``keeps``: key -> warm-up key) and the members without a checkpoint
    wait for it (``deferred``); members with one resume on their own. ``lone``: warm-up keys
    not to wait for again (their leader ran and kept none)."""
    from .config import warmup_groups

    groups = warmup_groups(left)
    deferred: set[str] = set()
    forks: dict[str, str] = {}
    keeps: dict[str, str] = {}
    for (wkey, W), members in groups.items():
        if wkey in recorded:
            forks.update({s.key: recorded[wkey]["uri"] for s in members})
            continue
        if wkey in lone:
            continue

        def own(s):        # the epoch of the trial's own checkpoint, -1 without one (a failure starts over)
            r = records.get(s.key) or {}
            e = r.get("checkpoint_epoch")
            return -1 if (not r.get("checkpoint") or e is None or r.get("status") == "failed") else int(e)

        before = [s for s in members if own(s) < W - 1]        # would train the warm-up's end
        if len(before) < 2:
            continue
        leader = max(before, key=own)                          # (the first of the furthest along)
        keeps[leader.key] = wkey
        deferred |= {s.key for s in before if s is not leader and own(s) < 0}
    return deferred, forks, keeps


def say_warmups(batch, deferred: set, forks: dict, keeps: dict, log) -> None:
    """One line on the shared warm-ups of a batch about to launch."""
    started = [s for s in batch if s.key in forks]
    if started:
        saved = sum(s.config.warmup()[1] for s in started)
        log(f"shared warm-ups: {len(started)} trial(s) start from a warm-up already trained ({saved} epochs not "
            "trained again)")
    if keeps:
        log(f"shared warm-ups: {len(keeps)} trial(s) train a warm-up for {len(deferred)} other(s), which start "
            "from it once this batch ends")


def drop_finished_warmups(store, specs) -> None:
    """Forget (and delete) the shared warm-ups every member of which, among ``specs``, is done."""
    from .config import warmup_groups

    groups = {wkey: [s.key for s in members] for (wkey, _), members in warmup_groups(specs).items()}
    recorded = store.warmups(groups)
    if not recorded:
        return
    status = store.status_of([k for w in recorded for k in groups[w]])
    for w in recorded:
        if all(status.get(k) == "done" for k in groups[w]):
            delete_checkpoint(store.drop_warmup(w))


def _wait_for_others(store, held: dict, distinct: dict, summary: RunSummary, attempted: set, log) -> None:
    """Every trial left is claimed by another live driver: wait until one of them is
    settled (done, or failed there) or free to claim (its claim died), saying so."""
    drivers = sorted(set(held.values()))
    log(f"waiting for {len(held)} trial(s) that another raygap run is running ({', '.join(drivers)[:200]}); "
        "they count as reused when done")
    last_said = time.monotonic()
    while True:
        time.sleep(WAIT_POLL_S)
        st = store.status_of(list(held))
        settled = [k for k in held if st.get(k) in ("done", "failed")]
        for k in settled:
            attempted.add(k)               # never run here again in this call
            s = distinct[k]
            if st[k] == "done":
                log(f"  finished by the other run: {s.label} | {_col(s.column)} | seed {s.seed} ({k})")
            else:
                err = ((store.get(k) or {}).get("error") or "?")
                summary.failed[k] = f"(in the other raygap run) {err}"
                log(f"  failed in the other run: {s.label} | {_col(s.column)} | seed {s.seed} ({k}): {err}")
        still = store.held_elsewhere([k for k in held if k not in settled])
        if settled or len(still) < len(held) - len(settled):
            return
        if time.monotonic() - last_said >= 60:
            log(f"  still waiting for {len(still)} trial(s) of another raygap run")
            last_said = time.monotonic()


def _teardown(store, todo, mine: set, owner: str, summary: RunSummary, *, ours: bool, log) -> None:
    """Mark this driver's running trials interrupted and release its claims; if the Ray
    instance is ours (started, or being started, by this call), shut it down and end any
    process it left behind. A second signal here skips the graceful part but still ends
    every child process."""
    try:
        summary.marked_interrupted = store.mark_interrupted([s.key for s in todo], owner)
        store.release(mine, owner)
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
    """The trial's folder and run name: readable (label, column, seed) and unique (key prefix)."""
    return trial.config["t"].get("name") or f"trial-{trial.config['t']['key']}"


def _readable(text: str, limit: int = 80) -> str:
    """``Ours w/o L_f (α=0)-avdigits-seed0`` -> ``Ours_w_o_L_f_α_0-avdigits-seed0``: a safe folder name."""
    out = "".join(c if (c.isalnum() or c in "-.") else "_" for c in text)
    while "__" in out:
        out = out.replace("__", "_")
    return out.strip("_")[:limit]


TRACKERS = ("none", "tensorboard", "mlflow", "wandb")
# the modules each tracker needs, and the raygap extra that installs them (pyproject.toml)
TRACKER_NEEDS = {"tensorboard": (("tensorboardX",), None), "mlflow": (("mlflow", "sqlalchemy", "alembic"), "mlflow"),
                 "wandb": (("wandb",), "wandb")}
WANDB_EXCLUDES = ["record_json", "final_json", "failed_json", "resumed_json", "warnings_json",
                  "warmup_json"]   # JSON, not scalars


def tracker_problem(tracker: str) -> str | None:
    """Why ``--tracker`` cannot work here (a package it needs is missing), or None."""
    import importlib.util

    if tracker in (None, "none"):
        return None
    modules, extra = TRACKER_NEEDS[tracker]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    how = (f"install raygap's {extra!r} extra: RAYGAP_EXTRAS={extra} bash scripts/setup.sh (docs/install.md)" if extra
           else f"pip install {' '.join(missing)}")
    return f"--tracker {tracker} needs {', '.join(missing)}, not installed here: {how}"


def mlflow_uri(results: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite database in the results folder (MLflow 3 refuses
    its old ./mlruns file store unless told to; SQLite is its replacement)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(results) / 'mlflow.db').resolve()}"


def mlflow_ui(uri: str) -> str:
    """Where to look at the runs of ``uri``: a tracking server's page, else the command that
    starts MLflow's UI on it. The extra installs mlflow-skinny (client and SQLite store); the UI
    is in the full mlflow package, whose pyarrow pin clashes with Ray's, so it runs in an
    environment of its own (``uvx``, which setup.sh puts beside this Python)."""
    import shlex
    import sys
    from importlib.metadata import PackageNotFoundError, version

    if uri.startswith(("http://", "https://", "databricks")):
        return f"open {uri}"
    try:
        version("mlflow")
        return f"mlflow ui --backend-store-uri {shlex.quote(uri)}"
    except PackageNotFoundError:
        pass
    uvx = Path(sys.executable).with_name("uvx")
    return (f"{shlex.quote(str(uvx)) if uvx.exists() else 'uvx'} --from mlflow=={version('mlflow-skinny')} "
            f"mlflow ui --backend-store-uri {shlex.quote(uri)}")


def tracker_callbacks(tracker: str | None, grid, experiment, log, results: Path) -> list:
    """Ray Tune's own logger callback for ``tracker``: TensorBoard event files in each trial's
    folder, an MLflow run or a W&B run per trial (named like the trial folder), every epoch's
    scalars logged at its step (1, 2, ...: Tune's training iteration). ``experiment``: the Tune
    experiment folder (a path, or a URI with remote storage); ``results``: the results folder
    (where MLflow's database goes by default). One line says where to look. The callback is set
    up here, before any trial starts: a tracking URI or a W&B login that cannot work is one line
    (ConfigError, exit 2), not a traceback from inside Tune."""
    if tracker in (None, "none"):
        return []
    if tracker == "tensorboard":
        from ray.tune.logger import TBXLoggerCallback

        log(f"TensorBoard: tensorboard --logdir {experiment}")
        return [TBXLoggerCallback()]
    if tracker == "mlflow":
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        uri = mlflow_uri(results)
        tags = {"raygap_grid": grid.name, "raygap_profile": grid.profile or "", "raygap_variant": grid.variant}
        cb = MLflowLoggerCallback(tracking_uri=uri, experiment_name=grid.name, tags=tags, save_artifact=False)
        _set_up(cb, f"MLflow cannot use {uri}", "set MLFLOW_TRACKING_URI to a usable tracking URI, or unset it "
                                                "(then: a SQLite database in the results folder)")
        log(f"MLflow: experiment {grid.name!r} at {uri}, one run per trial; to browse: {mlflow_ui(uri)}")
        return [cb]
    # wandb.init runs in a Ray actor, whose environment is the cluster's: the driver's mode and
    # folder are passed to it
    init = {k: os.environ[v] for k, v in (("mode", "WANDB_MODE"), ("dir", "WANDB_DIR")) if os.environ.get(v)}
    if "dir" in init:
        init["dir"] = str(Path(init["dir"]).resolve())
    cb = _wandb_callback(project=f"raygap-{grid.name}", group=grid.variant, log_config=False, excludes=WANDB_EXCLUDES,
                         upload_checkpoints=False, tags=[grid.name[:64], grid.variant[:64]], **init)  # tags: 1-64 chars
    _set_up(cb, "W&B cannot log", "log in (wandb login, or WANDB_API_KEY), or set WANDB_MODE=offline")
    where = f"{init['dir'] if 'dir' in init else str(experiment) + '/*'}/wandb/offline-run-*"
    log(f"W&B: project raygap-{grid.name}, group {grid.variant}, one run per trial"
        + (f"; offline runs in {where} (to upload: wandb sync {where})" if init.get("mode") in ("offline", "dryrun")
           else f" (https://wandb.ai, your entity's project raygap-{grid.name})"))
    return [cb]


def _set_up(callback, what: str, hint: str) -> None:
    """``callback.setup()`` now (Tune calls it again, harmlessly): its failure as one ConfigError."""
    try:
        callback.setup()
    except Exception as e:  # noqa: BLE001 -- whatever the tracker raises is said in one line
        text = " ".join(str(e).split())
        raise ConfigError(f"{what}: {type(e).__name__}: {text[:300]}", key="--tracker", hint=hint) from None


def _wandb_callback(**kwargs):
    """Ray's ``WandbLoggerCallback``, which also says when a trial's W&B run failed: each run
    lives in a Ray actor, and Ray's callback ends a finished actor without looking at its error
    (a run wandb.init refused was otherwise lost without a word)."""
    import sys

    import ray
    from ray.air.integrations.wandb import WandbLoggerCallback

    class WandbCallback(WandbLoggerCallback):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.failed_runs: set[str] = set()         # said once each (Ray may start a trial's actor again)

        def _cleanup_logging_actor(self, trial):
            future = self._trial_logging_futures.get(trial)
            if future is not None and ray.wait([future], timeout=0)[0]:
                try:
                    ray.get(future)
                except Exception as e:  # noqa: BLE001 -- said; the trial's results are unaffected
                    if str(trial) not in self.failed_runs:
                        self.failed_runs.add(str(trial))
                        cause = getattr(e, "cause", None) or e
                        print(f"raygap: the W&B run of trial {trial} failed: {type(cause).__name__}: "
                              f"{' '.join(str(cause).split())[:300]}", file=sys.stderr, flush=True)
            super()._cleanup_logging_actor(trial)

    return WandbCallback(**kwargs)


def _col(column: dict) -> str:
    return ", ".join(f"{v}" for v in column.values()) or "-"
