"""The hyperparameter searches of the store (schema version 6): one row per searched (grid
expansion, row, column) -- its settings, every sample asked for (params, trial keys, value,
status) and, once its budget is spent, the winner (:mod:`raygap.search`,
:mod:`raygap.runner.search`). Every sample is an ordinary trial of the ``trials`` table; a
sample's status here is ``asked`` (its trials not all finished), ``done`` (value set) or
``stopped`` (the scheduler ended it early: no value), and the trials say the rest."""
from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from .connection import Connection


class Searches(Connection):
    """Reading and writing the ``searches`` table (absent in a read-only store of version 5)."""

    def search(self, sid: str) -> dict[str, Any] | None:
        """The search ``sid``: dict with grid, label, column, settings, samples (a list), winner
        (params or None), value; None when it never ran."""
        return self.searches([sid]).get(sid)

    def searches(self, sids: Iterable[str]) -> dict[str, dict[str, Any]]:
        sids = list(sids)
        if not sids or not self._has_table("searches"):
            return {}
        out = {}
        for rec in self._keyed("SELECT * FROM searches WHERE", sids, column="sid", run=self._rows):
            for c in ("column", "settings", "samples", "winner"):
                rec[c] = json.loads(rec[c]) if rec[c] else None
            rec["samples"] = rec["samples"] or []
            out[rec["sid"]] = rec
        return out

    def winners(self, sids: Iterable[str]) -> dict[str, dict]:
        """sid -> the winner's params, for the searches among ``sids`` that have one."""
        return {sid: r["winner"] for sid, r in self.searches(sids).items() if r["winner"] is not None}

    def save_search(self, sid: str, grid: str, label: str, column: dict, settings: dict, samples: list[dict],
                    winner: dict | None = None, value: float | None = None) -> None:
        """Write (or replace) search ``sid``: its samples so far and, when chosen, the winner."""
        with self._tx():
            self._db.execute('INSERT OR REPLACE INTO searches (sid, grid, label, "column", settings, samples, '
                             'winner, value, updated) VALUES (?,?,?,?,?,?,?,?,?)',
                             (sid, grid, label, json.dumps(column, sort_keys=True, default=str),
                              json.dumps(settings, default=str), json.dumps(samples, default=str),
                              None if winner is None else json.dumps(winner, default=str), value, time.time()))

    def mark_stopped(self, key: str) -> bool:
        """A running trial a search's scheduler (ASHA) ended early: ``stopped``, with the epochs it
        recorded (never a table cell; never run again by its search). Returns whether it was written."""
        fence, token = self._fence(key)
        with self._tx():
            return self._db.execute(f"UPDATE trials SET status='stopped', finished=? WHERE key=? "
                                    f"AND status='running'{fence}", (time.time(), key, *token)).rowcount > 0
