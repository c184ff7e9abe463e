"""A driver that lost its claim on a trial (it was stopped past its lease -- a SIGSTOP, a
suspended VM, a renewal stuck on a slow disk -- and another driver took the trial over, or
``--rerun`` took it out of the store) says so in one line on stderr and drops the trial: Tune
stops it at its next result (:func:`lost_stopper`), and the callback writes nothing more of it
and deletes none of its checkpoints. The store's own fence (the token every write checks in
its transaction, :mod:`raygap.store.claims`) is the guarantee; this is how the driver notices."""
from __future__ import annotations

import sys
import threading


class Fence:
    """The trials this driver has lost (``dropped``: key -> the line it said)."""

    def __init__(self, store, summary=None, progress=None):
        self.store, self.summary, self.progress = store, summary, progress
        self.dropped: dict[str, str] = {}
        self.settled: set[str] = set()         # ended here (done, failed) and released: no claim to keep
        self._lock = threading.Lock()

    def __getstate__(self):            # Tune pickles its callbacks and stopper: the state, not the lock
        return {"store": self.store, "summary": self.summary, "progress": self.progress, "dropped": self.dropped,
                "settled": self.settled}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def settle(self, key: str) -> None:
        """``key`` ended here, its end in the store: its claim is released, not renewed any more."""
        self.settled.add(key)
        self.store.release([key])

    def check(self, key: str, label: str | None = None) -> bool:
        """Whether this driver still holds ``key`` (one read); says so and drops it if not."""
        if key in self.dropped:
            return False
        if self.store.lost([key]):
            self.lose([key], {key: label} if label else None)
            return False
        return True

    def after_write(self, key: str, written: bool, label: str | None = None) -> bool:
        """After a fenced write of ``key`` that wrote nothing: was it because the claim moved?"""
        return written or self.check(key, label)

    def lose(self, keys, labels: dict | None = None) -> None:
        """The claims on ``keys`` have moved: one line each (once), the trials dropped."""
        for key in keys:
            with self._lock:
                if key in self.dropped:
                    continue
                rec = self.store.get(key) or {}
                now = (f"another driver holds it now ({rec.get('owner')}, token {rec.get('token')})" if rec
                       else "it was taken out of the store (--rerun)")
                line = (f"raygap: lost the claim on trial {key}" + (f" ({labels[key]})" if labels and key in labels
                                                                    else "")
                        + f": {now}; this driver was stopped past its lease. It drops the trial and writes "
                          "nothing more of it")
                self.dropped[key] = line
                # one write of the whole line, under the lock: print() writes the text and its newline
                # apart, and two threads losing trials at once (the lease renewer, Tune's stopper) then
                # glued their lines into one (seen in CI)
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
            if self.summary is not None:
                self.summary.dropped[key] = line
            if self.progress is not None:
                self.progress.trial_dropped(key)


def lost_stopper(fence: Fence):
    """Tune's stopper (a :class:`ray.tune.Stopper`): a trial this driver lost is stopped at its
    next result, checked before the callback sees the result, so nothing of it is written."""
    from ray.tune import Stopper

    class LostStopper(Stopper):
        def __call__(self, trial_id: str, result: dict) -> bool:
            t = (result.get("config") or {}).get("t") or {}
            key = t.get("key")
            return bool(key) and not fence.check(key, t.get("label"))

        def stop_all(self) -> bool:
            return False

    return LostStopper()
