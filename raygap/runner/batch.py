"""One Tune experiment over a batch of trials the driver has claimed: each trial's Tune config
(its label, a readable folder name, what it resumes or starts from), the trainable with its
resources and the shared in-memory data, the store callback and the trackers; then the
trial errors Tune kept to itself reconciled with the store."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from .. import interrupts
from .callback import store_callback
from .fence import Fence, lost_stopper
from .storage import delete_checkpoint, experiment_at, is_remote, open_storage, resume_candidates, trial_checkpoints
from .summary import RunSummary
from .trackers import tracker_callbacks
from .worker import trainable


def trial_label(spec) -> str:
    """How the progress lines name a trial: ``label | column values | seed N``."""
    return f"{spec.label} | {_col(spec.column)} | seed {spec.seed}"


class _NoTuneRestoreHint(logging.Filter):
    """Tune ends an interrupted experiment with "Resume experiment with: Tuner.restore(...)":
    wrong advice for raygap, whose store resumes a grid from the same command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore" not in record.getMessage()


class _NoLostTrialsCheckpointError(logging.Filter):
    """A driver woken after another took its trial over: its Tune, registering a checkpoint the
    trial's worker wrote meanwhile, deletes the one before, which the driver that took over has
    already removed with the trial's earlier checkpoints -- Tune then logs a FileNotFoundError
    traceback. raygap has said in one line that it lost the trial (:mod:`raygap.runner.fence`);
    that traceback, for a trial it dropped, is left out. Any other error is shown as Tune logs it."""

    def __init__(self, fence):
        super().__init__()
        self.fence = fence

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != "Trial %s: Error handling checkpoint %s" or not record.exc_info \
                or not isinstance(record.exc_info[1], FileNotFoundError) or not record.args:
            return True
        key = ((getattr(record.args[0], "config", None) or {}).get("t") or {}).get("key")
        return key not in self.fence.dropped


def tune_batch(grid, store, batch, shared, summary: RunSummary, held: dict, *, storage_path, max_failures,
               log, progress, tracker=None, forks: dict | None = None, keeps: dict | None = None,
               after_done=None, on_settled=None, fence=None, scheduler=None) -> None:
    """One Tune experiment over ``batch`` (trials this driver has claimed). ``shared``: the
    in-memory datasets built in the driver; ``held``: trials another driver runs (said in the
    launch line); ``forks``: key -> the shared warm-up it starts from; ``keeps``: key -> where
    its warm-up's end is kept for others (:mod:`raygap.runner.warmups`); ``after_done``: called
    once each finished trial is stored (the store's mirror); ``on_settled(key)``: called as each
    trial ends, done or failed (the tables of a several-grid run); ``fence``: the driver's
    :class:`~raygap.runner.fence.Fence` (a trial whose claim moved is stopped and dropped);
    ``scheduler``: a Tune trial scheduler whose ``stopped`` keys end ``stopped`` in the store."""
    import uuid

    from ray import tune

    recs = store.records(s.key for s in batch)
    items = []
    for s in batch:
        rec = recs.get(s.key) or {}
        resume = None
        if rec.get("checkpoint"):
            if rec.get("status") == "failed":        # a failure starts over: its checkpoints are stale
                if store.take_checkpoint(s.key) is not None:     # (None: the claim moved meanwhile, not ours)
                    for c in trial_checkpoints(rec["checkpoint"]):   # (older ones a killed driver left too)
                        delete_checkpoint(c, storage_path)
            else:
                resume = resume_candidates(rec["checkpoint"])   # newest first: one a killed driver did not record too
        items.append({"key": s.key, "label": trial_label(s),
                      "name": _readable("-".join([s.label, *([_col(s.column)] if s.column else []), f"seed{s.seed}"]))
                      + f"-{s.key[:8]}",
                      "trial": s.config.to_dict(), "resume": resume, "storage": storage_path,
                      "fork": (forks or {}).get(s.key), "warmup_out": (keeps or {}).get(s.key)})

    def resources(config):
        r = config["t"]["trial"]["resources"]
        return {"cpu": r["cpu"], "gpu": r["gpu"]}

    if fence is None:
        fence = Fence(store, summary, progress)
    fn = tune.with_resources(tune.with_parameters(trainable, shared=shared), resources)
    summary.launched += len(batch)
    cb = store_callback(store, summary, progress, max_failures, storage_path, after_done, on_settled, fence,
                        stopped=getattr(scheduler, "stopped", None))
    name = f"{grid.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    # Tune's own console output (its status box, a TensorBoard hint into Ray's session folder) and
    # its default CSV and TensorBoard files per trial are off: raygap prints its progress and keeps
    # results in its store; --tracker adds the logger asked for. (Tune's result grid reads result.json.)
    from ray.tune.logger import JsonLoggerCallback

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    experiment = experiment_at(storage_path, name)
    # remote storage: the file system opened once, as raygap opens it (the URI's endpoint, the AWS
    # endpoint variables, timeouts), and given to Tune, so its uploads go where raygap's reads go
    tune_fs, tune_path = open_storage(storage_path) if is_remote(storage_path) else (None, storage_path)
    trackers = [JsonLoggerCallback()] + tracker_callbacks(tracker, grid, experiment, log, Path(store.path).parent)
    tuner = tune.Tuner(
        fn,
        param_space={"t": tune.grid_search(items)},
        # (a scheduler's stop leaves an actor that Tune tries to reuse and cannot (a function trainable has no
        # reset_config): seen to leave the next trial pending and mark the stopped one failed; not reused then)
        tune_config=tune.TuneConfig(reuse_actors=scheduler is None, trial_name_creator=_trial_name,
                                    trial_dirname_creator=_trial_name, scheduler=scheduler),
        run_config=tune.RunConfig(
            # unique per driver and batch: two drivers never share a Tune folder
            name=name, storage_path=tune_path, storage_filesystem=tune_fs,
            # Tune retries every failure; the callback counts them: a trial's own errors against
            # max_failures, the loss of its node not (raygap.runner.failures)
            failure_config=tune.FailureConfig(max_failures=-1),
            stop=lost_stopper(fence),        # a trial whose claim another driver took over: stopped
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
    controller_log = logging.getLogger("ray.tune.execution.tune_controller")
    lost_ckpt = _NoLostTrialsCheckpointError(fence)
    controller_log.addFilter(lost_ckpt)
    try:
        with interrupts.tune_phase():
            results = tuner.fit()
    finally:
        controller_log.removeFilter(lost_ckpt)
    # Tuner.fit() does not raise on trial errors: reconcile with what the callback saw
    for r in results:
        key = (r.config or {}).get("t", {}).get("key")
        if key and r.error is not None and key not in summary.failed and key not in fence.dropped \
                and store.status_of([key]).get(key) not in ("done", "stopped"):
            err = f"{type(r.error).__name__}: {r.error}".splitlines()[0][:500]
            if not fence.after_write(key, store.save_failed(key, err)):
                continue
            summary.failed[key] = err
            if on_settled is not None:
                on_settled(key)


def _trial_name(trial) -> str:
    """The trial's folder and run name: readable (label, column, seed) and unique (key prefix)."""
    return trial.config["t"].get("name") or f"trial-{trial.config['t']['key']}"


def _readable(text: str, limit: int = 80) -> str:
    """``Ours w/o L_f (α=0)-avdigits-seed0`` -> ``Ours_w_o_L_f_α_0-avdigits-seed0``: a safe folder name."""
    out = "".join(c if (c.isalnum() or c in "-.") else "_" for c in text)
    while "__" in out:
        out = out.replace("__", "_")
    return out.strip("_")[:limit]


def _col(column: dict) -> str:
    return ", ".join(f"{v}" for v in column.values()) or "-"

