"""The Tune trainable: one raygap trial in a Ray worker (the worker side of the runner).

A plain function: it calls the one training loop (:func:`raygap.trial.fit`), reports every
epoch with its checkpoint through :mod:`raygap.runner.protocol`, and resumes from
``tune.get_checkpoint()`` when Tune restarts it after a worker died, else from the first usable
of an earlier run's checkpoints or a shared warm-up's. A failure the same config would repeat
is reported as the trial's final result, not raised for Tune to retry; a trial the driver found
out of retries (``give_up``) reports that failure at once. Ray, torch and the trial
engine are imported inside the function: importing this module costs nothing.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

from ..trialfiles import CHECKPOINT
from ..removal import remove
from .protocol import encode
from .shared_data import data_key
from .storage import checkpoint_at, checkpoint_uri, keep_checkpoint


def trainable(config: dict, shared: dict | None = None) -> None:
    """Tune function trainable: one raygap trial. ``config["t"] = {"key", "label", "trial"}``,
    and optionally ``resume`` (an earlier run's checkpoints, newest first), ``fork`` (a shared
    warm-up's checkpoint to start from) and ``warmup_out`` (where to keep this trial's
    warm-up end for others: see :meth:`raygap.config.TrialConfig.warmup`), and ``give_up``
    (``{"error", "traceback"}``: the driver's callback found the trial out of retries, when Tune
    had already queued it again: it reports that failure and stops). ``shared``: the
    in-memory datasets the driver built, by :func:`~raygap.runner.shared_data.data_key`."""
    import ray
    from ray import tune

    from ..config import resolve
    from ..data.preload import release_device_memory
    from ..data.splits import check_split
    from ..errors import CheckpointDeviceMismatch, CheckpointMismatch, ConfigError, DataError, DeviceUnavailable
    from ..models.compiled import CompileLimitHit
    from ..devices import device_kind, pick_device
    from ..trial import TrialDiverged, fit, load_data, prepare_process

    DETERMINISTIC_FAILURES = (TrialDiverged, ConfigError, DataError, DeviceUnavailable, CheckpointMismatch,
                              CheckpointDeviceMismatch, CompileLimitHit)

    if config["t"].get("give_up"):          # out of retries (the driver's callback said so when Tune restarted it)
        tune.report(encode(os.getpid(), ray.get_runtime_context().get_node_id(), failed=config["t"]["give_up"]))
        return
    cfg = resolve(config["t"]["trial"])
    key = config["t"]["key"]
    caught: list[str] = []                 # Python warnings raised in this trial, sent with the next report
    seen: set[str] = set()

    def catch(message, category, filename, lineno, file=None, line=None):
        text = f"{category.__name__}: {str(message).splitlines()[0][:300]} ({Path(filename).name}:{lineno})"
        if text not in seen:
            seen.add(text)
            caught.append(text)

    def pending() -> list[str] | None:
        """The warnings not sent yet (None: none), to go with the next report."""
        said = list(caught)
        caught.clear()
        return said or None

    warnings.showwarning = catch             # (this worker process runs this trial only)
    prepare_process(cfg, cfg.resources.cpu)  # before anything here touches CUDA
    kind = device_kind(cfg.train.device)     # where it trains (pick_device, below, says if it cannot)
    work = Path(tempfile.mkdtemp(prefix=f"raygap-{key}-"))
    ckpt = tune.get_checkpoint()                       # Tune restarted this trial (a worker died)
    candidates = [ckpt] if ckpt is not None else list(config["t"].get("resume") or [])   # newest first
    fork = config["t"].get("fork")
    if ckpt is None and fork:                          # a shared warm-up: after the trial's own checkpoints
        candidates.append(fork)
    resumed, notes = _resume_point(candidates, key, kind, work, config["t"].get("storage"))
    resumed_from = resumed["epoch"] if resumed else None
    resume_note = "; ".join(notes) or None
    node = ray.get_runtime_context().get_node_id()
    bundle = (shared or {}).get(data_key(cfg))        # built once in the driver, or loaded below (inside the try)

    first = [True]
    warmup = cfg.warmup()
    warmup_out = config["t"].get("warmup_out") if warmup else None

    def report(record: dict, ckpt_dir):
        kept = None
        if warmup_out and ckpt_dir is not None and record["epoch"] == warmup[1] - 1:
            try:                                       # the end of the warm-up, kept for the trials that share it
                kept = {"wkey": warmup[0], "epoch": record["epoch"],
                        "uri": keep_checkpoint(Path(ckpt_dir) / CHECKPOINT, warmup_out)}
            except Exception as e:  # noqa: BLE001 -- the others then train their own warm-up; said
                caught.append(f"could not keep the shared warm-up at {warmup_out}: {type(e).__name__}: {e}"[:300])
        # the first epoch after a resume says from where
        came = {**(resumed or {}), "note": resume_note} if first[0] and (resumed or resume_note) else None
        first[0] = False
        metrics = encode(os.getpid(), node, warmup=kept, record=record, warnings=pending(), resumed=came)
        if ckpt_dir is not None:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(ckpt_dir)))
        else:
            tune.report(metrics)

    t0 = time.perf_counter()
    try:
        try:
            if bundle is None:                    # a bad data layout fails like any other deterministic failure
                check_split(cfg, key)             # the split lists here are those the trial was keyed with
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
            tune.report(encode(os.getpid(), node, warnings=pending(), failed={   # (a warning may say why)
                "error": f"{type(e).__name__}: {e}".splitlines()[0][:500], "traceback": trace}))
            return
        tune.report(encode(os.getpid(), node, warnings=pending(), final={"metrics": result.metrics, "history": result.history, "info": {
            **result.info, "node": node, "pid": os.getpid(), "resumed_from_epoch": resumed_from,
            **({"resume_note": resume_note} if resume_note else {}),
            "wall_seconds": time.perf_counter() - t0}}))
    finally:
        remove(work, tempfile.gettempdir(), ignore_errors=True)
        if bundle is not None:
            release_device_memory(bundle)              # Tune reuses this actor: the next trial gets the GPU back


def _resume_point(candidates: list, key: str, kind: str, work: Path,
                  storage: str | None = None) -> tuple[dict | None, list[str]]:
    """The first usable of ``candidates`` (Tune checkpoints, or URIs: newest first, a shared
    warm-up last), its checkpoint file copied into ``work``: ``({"epoch", "uri", "history",
    "warmup_from"?}, notes)``, or ``(None, notes)``; a note says why each one before it was
    skipped, and ``started over`` when none could be used."""
    from .. import checkpoint

    resumed, notes = None, []
    for c in candidates:                               # an earlier run's checkpoints: the first usable one
        try:
            c = c if not isinstance(c, str) else checkpoint_at(c)
            with c.as_directory() as d:
                src = Path(d) / CHECKPOINT
                state = checkpoint.load(src)      # a partial upload fails here
                if (why := checkpoint.unusable_on(state, kind)) is not None:   # it cannot continue exactly here
                    notes.append(f"checkpoint {checkpoint_uri(c, storage)} not usable ({why})")
                    continue
                shutil.copy2(src, work / CHECKPOINT)
            resumed = {"epoch": state["epoch"], "uri": checkpoint_uri(c, storage), "history": state.get("history") or []}
            if state.get("key") != key:              # (fit checks it is the warm-up this trial may share)
                resumed["warmup_from"] = state.get("key")
            del state
            break
        except Exception as e:  # noqa: BLE001 -- gone, partial or unreadable: the next older one, and say so
            notes.append(f"checkpoint {c if isinstance(c, str) else checkpoint_uri(c, storage)} not usable "
                         f"({type(e).__name__})")
    if candidates and resumed is None:
        notes.append("started over")
    return resumed, notes
