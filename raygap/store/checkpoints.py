"""Where the checkpoints are: each running trial's latest one (the next run resumes there)
and the shared warm-ups (``TrialConfig.warmup``: trials with one warm-up key start from its
checkpoint). The store records the paths or URIs; the caller deletes the files it is handed."""
from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from .connection import Connection


class Checkpoints(Connection):
    """The ``checkpoint`` columns of the trials and the ``warmups`` table."""

    def record_checkpoint(self, key: str, uri: str, epoch: int | None) -> list[str]:
        """The latest checkpoint of a running trial is at ``uri`` (epoch ``epoch``). Returns
        the checkpoints now of no use, for the caller to delete: the one recorded before (an
        earlier run's, once this run has its own), or ``uri`` itself when the trial is done.
        A trial whose token moved since this connection claimed it (another driver has it)
        is not written, and nothing is returned: its checkpoints are the other driver's."""
        fence, token = self._fence(key)
        with self._tx():
            row = self._db.execute(f"SELECT status, checkpoint FROM trials WHERE key=?{fence}",
                                   (key, *token)).fetchone()
            if fence and row is None:
                return []
            if row and row[0] == "done":
                return [uri]
            self._db.execute("UPDATE trials SET checkpoint=?, checkpoint_epoch=?, heartbeat=? WHERE key=?",
                             (uri, epoch, time.time(), key))
        return [row[1]] if row and row[1] and row[1] != uri else []

    def take_checkpoint(self, key: str) -> str | None:
        """Clear and return the trial's recorded checkpoint (to delete it: the trial is done,
        or will start over); None, with nothing cleared, once its token has moved since this
        connection claimed it."""
        fence, token = self._fence(key)
        with self._tx():
            row = self._db.execute(f"SELECT checkpoint FROM trials WHERE key=?{fence}", (key, *token)).fetchone()
            if row is not None:
                self._db.execute("UPDATE trials SET checkpoint=NULL, checkpoint_epoch=NULL WHERE key=?", (key,))
        return row[0] if row else None

    def record_warmup(self, wkey: str, uri: str, epoch: int, leader: str) -> str | None:
        """Trial ``leader`` kept the end of warm-up ``wkey`` (epoch ``epoch``) at ``uri``.
        Returns a checkpoint now of no use (one recorded before for the key), or None."""
        with self._tx():
            row = self._db.execute("SELECT uri FROM warmups WHERE wkey=?", (wkey,)).fetchone()
            self._db.execute("INSERT OR REPLACE INTO warmups VALUES (?,?,?,?,?)",
                             (wkey, uri, int(epoch), leader, time.time()))
        return row[0] if row and row[0] != uri else None

    def warmups(self, wkeys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The recorded shared warm-ups among ``wkeys``: wkey -> {uri, epoch, leader}."""
        if not self._has_table("warmups"):           # a read-only store of an older schema
            return {}
        return self._by_key(wkeys, "wkey, uri, epoch, leader", table="warmups", key="wkey")

    def drop_warmup(self, wkey: str) -> str | None:
        """Forget a shared warm-up; returns its checkpoint (for the caller to delete)."""
        with self._tx():
            row = self._db.execute("SELECT uri FROM warmups WHERE wkey=?", (wkey,)).fetchone()
            self._db.execute("DELETE FROM warmups WHERE wkey=?", (wkey,))
        return row[0] if row else None
