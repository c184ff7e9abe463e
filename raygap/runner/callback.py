"""The driver's Tune callback: every epoch, every finished trial and every failure written to
the trial store as the workers report them (:func:`raygap.runner.protocol.decode`), the
progress lines fed, and checkpoints of no more use deleted. The driver is the store's only
writer, so a driver killed mid-grid loses nothing that finished.

Tune retries every failed trial (the runner gives it ``max_failures=-1``); this callback keeps
the counts (:mod:`raygap.runner.failures`): a trial's own errors are retried ``--max-failures``
times, the loss of its node is not counted against them (at most NODE_LOSSES_MAX). A trial out
of retries is told so through its config when Tune restarts it, and reports itself failed."""
from __future__ import annotations

import os
from pathlib import Path

from .failures import NODE_LOSSES_MAX, alive_nodes, last_error, node_lost
from .protocol import decode
from .storage import checkpoint_uri, delete_checkpoint, trial_checkpoints
from .summary import RunSummary


def store_callback(store, summary: RunSummary, progress, max_failures: int = 1, storage: str | None = None,
                   after_done=None, on_settled=None, fence=None, stopped: set | None = None):
    """The callback of one Tune experiment (``summary`` counts what finished and what failed;
    ``max_failures``: the retries of a trial's own errors, -1 for no limit; ``storage``: the
    run's, whose query parameters its checkpoints' URIs keep; ``after_done()``, if given, is
    called once each finished trial is in the store: the mirror; ``on_settled(key)`` once a
    trial's end, done or failed, is in the store; ``fence``: the driver's :class:`~raygap.runner.fence.Fence`,
    through which a trial whose claim another driver took over is dropped: nothing more of it is
    written or deleted); ``stopped``: the keys a search's scheduler stopped (filled by it as it
    decides, before this callback sees the result): such a trial is ``stopped`` in the store once
    its epoch is recorded)."""
    from ray.tune import Callback

    from ..metrics import shown_metric

    log = progress.note
    if fence is None:
        from .fence import Fence

        fence = Fence(store, summary, progress)

    class StoreCallback(Callback):
        """Writes every epoch, every finished trial and every failure to the trial store."""

        def __init__(self):
            self.warned: set[str] = set()
            self.history: dict[str, list] = {}
            self.ours: set[str] = set()              # checkpoints this experiment wrote
            self.swept: set[str] = set()             # trials whose earlier run's checkpoints are deleted
            self.node: dict[str, str] = {}           # the node each trial last reported from since it (re)started
            self.own: dict[str, int] = {}            # each trial's own errors so far (retried up to max_failures)
            self.lost: dict[str, int] = {}           # each trial's node losses so far (not counted against them)

        def _key(self, trial) -> str:
            return trial.config["t"]["key"]

        def _label(self, trial) -> str:
            return trial.config["t"]["label"]

        def _gone(self, trial) -> bool:
            """This driver lost the trial's claim (said once, by the fence): write nothing of it."""
            return self._key(trial) in fence.dropped

        def on_trial_start(self, iteration, trials, trial, **info):
            key = self._key(trial)
            if not fence.check(key, self._label(trial)):
                return
            resume = trial.config["t"].get("resume")
            if resume and key not in self.history:    # keep the epochs the earlier run recorded, up to its checkpoint
                rec = store.get(key) or {}
                upto = rec.get("checkpoint_epoch")
                self.history[key] = [h for h in rec.get("history") or [] if upto is not None and h["epoch"] <= upto]
                newer = f" ({len(resume) - 1} newer in storage, not recorded)" if len(resume) > 1 else ""
                log(f"  {self._label(trial)}: resuming from the checkpoint of an earlier run "
                    f"(recorded: epoch {upto}){newer}")
            self.history.setdefault(key, [])
            if trial.config["t"].get("give_up"):    # Tune's restart of a trial out of retries only reports
                return                              # its failure: no attempt (and still running in the store)
            if fence.after_write(key, store.mark_running(key, trial.config["t"]["trial"]), self._label(trial)):
                progress.trial_started(key, self._label(trial))

        def on_step_end(self, iteration, trials, **info):
            progress.tick()

        def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
            key = self._key(trial)
            if self._gone(trial):
                return
            epoch = (trial.last_result or {}).get("epoch")
            uri = checkpoint_uri(checkpoint, storage)
            self.ours.add(uri)
            for stale in store.record_checkpoint(key, uri, epoch):
                if stale == uri or stale not in self.ours:   # (Tune deletes this run's older ones itself)
                    delete_checkpoint(stale, storage)          # an earlier run's, or the trial finished meanwhile
            if fence.check(key, self._label(trial)):  # (a lost trial's earlier checkpoints are another driver's)
                self._drop_earlier(trial)

        def _drop_earlier(self, trial):
            """The earlier run's checkpoints of this trial: of no use once it has its own, or is done.
            All of its trial folder's, once: a driver killed after recording checkpoint N but before
            Tune deleted N-1 left that one behind too (seen in the bucket after a kill)."""
            resume = trial.config["t"].get("resume") or []
            key = self._key(trial)
            if not resume or key in self.swept:
                return
            self.swept.add(key)
            for c in dict.fromkeys([*resume, *trial_checkpoints(resume[-1])]):
                if c not in self.ours:
                    delete_checkpoint(c, storage)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            key = self._key(trial)
            if self._gone(trial):                    # (the stopper stops it: this result is not written)
                return
            hist = self.history.setdefault(key, [])
            if result.get("node"):
                self.node[key] = result["node"]
            parts = decode(result)
            if "resumed" in parts:                   # the epochs the checkpoint holds, whichever it was
                r = parts["resumed"]
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
            if "warmup" in parts:
                w = parts["warmup"]
                delete_checkpoint(store.record_warmup(w["wkey"], w["uri"], int(w["epoch"]), key), storage)
            for text in parts.get("warnings", []):
                if text not in self.warned:          # each distinct warning once per run
                    self.warned.add(text)
                    log(f"  warning from {self._label(trial)}: {text}")
            if "record" in parts:
                rec = parts["record"]                # (with the worker's pid and node)
                hist[:] = [h for h in hist if h["epoch"] < rec["epoch"]] + [rec]   # a restart replays epochs
                if not fence.after_write(key, store.record_epoch(key, hist), self._label(trial)):
                    return
                name = shown_metric(rec, "val_")
                progress.epoch(key, self._label(trial), int(rec["epoch"]), name, rec.get("val_" + name, float("nan")),
                               rec.get("epoch_seconds", float("nan")), rec.get("device", ""))
                if stopped is not None and key in stopped and "final" not in parts:
                    self._stop(trial, int(rec["epoch"]))
            if "final" in parts:
                fin = parts["final"]
                if not store.save_done(key, fin["metrics"], fin["history"], fin["info"].get("wall_seconds", 0.0),
                                       fin["info"]):
                    # not written: the claim moved (the fence says so), or the row was done already
                    # (never replaced: a done row changes only through --rerun)
                    if fence.check(key, self._label(trial)):
                        log(f"  {self._label(trial)} ({key}): already done in the store; its stored result is kept")
                        if on_settled is not None:
                            on_settled(key)
                    return
                delete_checkpoint(store.take_checkpoint(key), storage)   # done: its checkpoints are of no more use
                self._drop_earlier(trial)
                fence.settle(key)                    # released: `--rerun` elsewhere may take it out now
                if after_done is not None:
                    after_done()
                summary.done += 1
                progress.trial_done(key, f"{self._label(trial)} ({key}): {(name := shown_metric(fin['metrics']))} "
                                         f"{fin['metrics'].get(name, float('nan')):.4f} on {fin['info'].get('device', '?')}")
                if on_settled is not None:
                    on_settled(key)
            if "failed" in parts:
                failed = parts["failed"]
                self._fail(trial, failed["error"], failed.get("traceback"))

        def _stop(self, trial, epoch: int):
            """The search's scheduler stopped the trial after ``epoch``: ``stopped``, its epochs kept."""
            key = self._key(trial)
            if not fence.after_write(key, store.mark_stopped(key), self._label(trial)):
                return
            store.take_checkpoint(key)    # never resumed (Tune removes its folder's own; deleting it here races Tune)
            self._drop_earlier(trial)
            fence.settle(key)
            summary.stopped += 1
            progress.trial_done(key, f"{self._label(trial)} ({key}): stopped early by the search's scheduler "
                                     f"after {epoch + 1} epoch(s)")
            if on_settled is not None:
                on_settled(key)

        def on_trial_recover(self, iteration, trials, trial, **info):
            """Tune caught a failure and will restart the trial: a node loss, or one of its own
            errors within ``max_failures``, restarts it from its latest checkpoint; otherwise the
            restarted trial is told to report itself failed (Tune has already queued it)."""
            key, label = self._key(trial), self._label(trial)
            if self._gone(trial):                    # lost to another driver: nothing to retry here
                return
            why = node_lost(last_error(trial), self.node.pop(key, None), alive_nodes())
            err = _error_line(trial)
            if why:
                n = self.lost[key] = self.lost.get(key, 0) + 1
                if n <= NODE_LOSSES_MAX:
                    log(f"  {label}: {why} (node loss {n}, not counted against --max-failures): "
                        "restarting it from its latest checkpoint")
                    return
                out = f"lost its node {n} times (the last: {why}): {err}"
            else:
                n = self.own[key] = self.own.get(key, 0) + 1
                if max_failures < 0 or n <= max_failures:
                    log(f"  {label}: {err}: retrying from its latest checkpoint "
                        f"(error {n} of its own; --max-failures {max_failures})")
                    return
                out = f"failed {n} time(s) of its own, retried {n - 1} (--max-failures {max_failures}): {err}"
            trial.config["t"]["give_up"] = {"error": out[:500], "traceback": _error_file(trial)}

        def on_trial_error(self, iteration, trials, trial, **info):
            if self._gone(trial):
                return
            self._fail(trial, _error_line(trial), _error_file(trial))

        def _fail(self, trial, err: str, trace: str | None = None):
            key = self._key(trial)
            if stopped is not None and key in stopped:      # its stop (Tune ending its actor) is no failure
                return
            if not fence.after_write(key, store.save_failed(key, err), self._label(trial)):
                return
            fence.settle(key)
            summary.failed[key] = err + (f" [full traceback: {trace}]" if trace else "")
            progress.trial_failed(key, f"{self._label(trial)} ({key}): {summary.failed[key]}")
            if on_settled is not None:
                on_settled(key)

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

