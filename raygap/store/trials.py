"""The trials of the store: what a grid registers, a trial's life, and reading it back.

Life of a trial: ``register(grid)`` records the grid's cells and adds a ``pending`` row
(with its config) for every key not yet stored -> ``mark_running`` (attempts + 1, owner)
-> ``record_epoch`` (partial history, while running) -> ``save_done`` or ``save_failed``,
or ``mark_interrupted`` when the driver is stopped. A ``running`` row whose owner is a
process of this machine that no longer exists (a driver killed with SIGKILL) reads as
``interrupted``. A ``done`` row is never run again and never overwritten (by a failure or by
another ``save_done``); every write of a trial this connection claimed checks its token
(:mod:`raygap.store.claims`) and does nothing once it has moved; :meth:`Claims.forget`
(``raygap run --rerun``) moves rows to the ``forgotten`` table so they run again while their
old results stay readable.

Records (``get``, ``records``, ``rows_for_grid``) are plain dicts with the columns of the
``trials`` table (:mod:`raygap.store.schema`), the JSON columns decoded (``None`` where empty).
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from .connection import Connection, dumps
from .owners import owner_alive, this_process_owner


class Trials(Connection):
    """The trial rows, the grids' memberships and runs: reading, and the trial lifecycle."""

    # -- reading ----------------------------------------------------------------------
    def get(self, key: str) -> dict[str, Any] | None:
        """The stored record of ``key``, or None."""
        recs = self._records("SELECT * FROM trials WHERE key=?", (key,))
        return recs[0] if recs else None

    def records(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """key -> record for the stored ones among ``keys``."""
        return self._by_key(keys)

    def finished_times(self, keys: Iterable[str]) -> dict[str, float]:
        """key -> when each done trial among ``keys`` finished (no history read)."""
        return {k: r["finished"] for k, r in self._by_key(keys, "key, finished", "status='done' AND").items()}

    def done_infos(self, keys: Iterable[str]) -> dict[str, dict]:
        """key -> the ``info`` of each done trial among ``keys`` (no history read)."""
        return {k: r.get("info") or {} for k, r in self._by_key(keys, "key, info", "status='done' AND").items()}

    def status_of(self, keys: Iterable[str]) -> dict[str, str]:
        """key -> status for the stored ones among ``keys`` (absent keys are new). A
        ``running`` trial whose driver was a process of this machine that is gone reads
        as ``interrupted``."""
        owner_col = "owner" if self._has_owner else "NULL"
        return {k: "interrupted" if st == "running" and owner_alive(owner) is False else st
                for k, st, owner in self._keyed(f"SELECT key, status, {owner_col} FROM trials WHERE", keys)}

    def all_records(self) -> dict[str, dict[str, Any]]:
        """key -> record of every trial in the store (not the forgotten ones), oldest first."""
        return {r["key"]: r for r in self._records("SELECT * FROM trials ORDER BY created, key")}

    def done_keys(self) -> set[str]:
        return {k for (k,) in self._query("SELECT key FROM trials WHERE status='done'")}

    def memberships(self, grid: str) -> list[dict]:
        """The cells registered for ``grid`` (``name/variant``): dicts with key, label, column, seed."""
        return self._records('SELECT key, label, "column", seed FROM memberships WHERE grid=? ORDER BY rowid', (grid,))

    def rows_for_grid(self, name: str) -> list[dict[str, Any]]:
        """Every registered cell of grid ``name`` joined with its trial record: dicts with
        label, column, seed, key, status ('new' when the trial has no row) and the trial's
        columns (config, metrics, history, error, attempts, times, wall_seconds, info)."""
        return self._records(
            'SELECT m.label, m."column", m.seed, m.key, COALESCE(t.status, \'new\') AS status, t.config, '
            't.metrics, t.history, t.error, t.attempts, t.created, t.started, t.finished, t.wall_seconds, t.info '
            'FROM memberships m LEFT JOIN trials t ON t.key = m.key WHERE m.grid=? ORDER BY m.rowid', (name,))

    def grids(self) -> list[str]:
        return [g for (g,) in self._query("SELECT DISTINCT grid FROM memberships ORDER BY grid")]

    def last_run(self, grid_name: str) -> dict[str, Any] | None:
        """The latest run of grid ``grid_name`` (any variant): variant, profile, sets (list),
        path, started; None when it never ran (or the store predates run records)."""
        if not self._has_table("runs"):
            return None
        recs = self._records("SELECT * FROM runs WHERE grid=? ORDER BY started DESC LIMIT 1", (grid_name,))
        if not recs:
            return None
        rec = recs[0]
        rec["sets"] = json.loads(rec["sets"]) if rec.get("sets") else []
        return rec

    # -- writing (the driver) ---------------------------------------------------------
    def register(self, grid) -> None:
        """Record which cells of ``grid`` use which trial (replacing the expansion's earlier
        memberships, so an edited grid does not keep stale cells), add a ``pending`` row
        with its config for every trial not stored yet, and record this run of the grid
        (its profile and ``--set`` items) for ``status``/``export`` to default to."""
        now = time.time()
        with self._tx():
            self._db.execute("DELETE FROM memberships WHERE grid=?", (grid.store_name,))
            self._db.executemany(
                "INSERT OR IGNORE INTO memberships VALUES (?,?,?,?,?)",
                [(grid.store_name, t.key, t.label, json.dumps(t.column, sort_keys=True, default=str), t.seed)
                 for t in grid.trials])
            self._insert_pending(grid.distinct().values(), now)
            self._db.execute("INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?)",
                             (grid.name, grid.variant, grid.profile, json.dumps(list(grid.sets)), str(grid.path), now))

    def add_pending(self, specs) -> int:
        """Add a ``pending`` row with its config for each of the trials ``specs`` (grid trial
        specs) not stored: new, or taken out by :meth:`forget`. Returns how many were added."""
        with self._tx():
            return self._insert_pending(specs, time.time())

    def _insert_pending(self, specs, now: float) -> int:
        return sum(self._db.execute(
            "INSERT OR IGNORE INTO trials(key, status, config, attempts, created) VALUES (?, 'pending', ?, 0, ?)",
            (s.key, dumps(s.config.to_dict()), now)).rowcount for s in {s.key: s for s in specs}.values())

    def mark_running(self, key: str, config: dict, owner: str | None = None) -> bool:
        """A trial starts (or restarts): status running, attempts + 1, owned by ``owner``
        (default: this process). No-op on a done trial, and on one this connection claimed
        whose token has moved (another driver has it now). Returns whether it was written."""
        now = time.time()
        owner = owner or this_process_owner()
        fence, token = self._fence(key)
        with self._tx():
            row = self._db.execute("SELECT status FROM trials WHERE key=?", (key,)).fetchone()
            if row and row[0] == "done":
                return False
            if row is None:
                if fence:                      # claimed, and taken out of the store since (--rerun)
                    return False
                self._db.execute("INSERT INTO trials(key, status, config, attempts, created, started, owner, heartbeat) "
                                 "VALUES (?, 'running', ?, 1, ?, ?, ?, ?)", (key, dumps(config), now, now, owner, now))
                return True
            return self._db.execute("UPDATE trials SET status='running', config=?, attempts=attempts+1, started=?, "
                                    f"finished=NULL, error=NULL, owner=?, heartbeat=? WHERE key=?{fence}",
                                    (dumps(config), now, owner, now, key, *token)).rowcount > 0

    def record_epoch(self, key: str, history: list[dict]) -> bool:
        """The history so far of a running trial (ignored unless the trial is running and, if
        this connection claimed it, its token has not moved). Returns whether it was written."""
        fence, token = self._fence(key)
        with self._tx():
            return self._db.execute(f"UPDATE trials SET history=?, heartbeat=? WHERE key=? AND status='running'{fence}",
                                    (dumps(history), time.time(), key, *token)).rowcount > 0

    def save_done(self, key: str, metrics: dict, history: list[dict], wall_seconds: float,
                  info: dict | None = None) -> bool:
        """A trial finished: final metrics, full history, wall time, free-form info. A done row
        is never replaced (only ``--rerun`` takes it out), nor is a row whose token moved since
        this connection claimed it. Returns whether it was written."""
        now = time.time()
        fence, token = self._fence(key)
        with self._tx():
            row = self._db.execute("SELECT status FROM trials WHERE key=?", (key,)).fetchone()
            if row is None:
                if fence:
                    return False
                self._db.execute("INSERT INTO trials(key, status, attempts, created, started) "
                                 "VALUES (?, 'running', 1, ?, ?)", (key, now, now))
            elif row[0] == "done":
                return False
            return self._db.execute("UPDATE trials SET status='done', metrics=?, history=?, wall_seconds=?, info=?, "
                                    f"finished=?, error=NULL WHERE key=?{fence}",
                                    (dumps(metrics), dumps(history), wall_seconds, dumps(info or {}), now, key,
                                     *token)).rowcount > 0

    def save_failed(self, key: str, error: str) -> bool:
        """A trial failed with ``error`` (kept to its first line). A done trial stays done, a
        stopped one stopped (a search's scheduler ended it); a trial whose token moved since this
        connection claimed it is not written."""
        now = time.time()
        error = (str(error).strip().splitlines() or [""])[0][:2000]
        fence, token = self._fence(key)
        with self._tx():
            row = self._db.execute("SELECT status FROM trials WHERE key=?", (key,)).fetchone()
            if row and row[0] in ("done", "stopped"):
                return False
            if row is None:
                if fence:
                    return False
                self._db.execute("INSERT INTO trials(key, status, error, attempts, created, finished) "
                                 "VALUES (?, 'failed', ?, 1, ?, ?)", (key, error, now, now))
                return True
            return self._db.execute(f"UPDATE trials SET status='failed', error=?, finished=? WHERE key=?{fence}",
                                    (error, now, key, *token)).rowcount > 0

    def mark_interrupted(self, keys: Iterable[str], owner: str | None = None) -> int:
        """The driver stopped before these trials ended: their ``running`` rows owned by
        ``owner`` (default: this process) become ``interrupted`` (history so far kept), those
        whose token has not moved since this connection claimed them. Returns how many changed."""
        owner = owner or this_process_owner()
        with self._tx():
            return self._fenced_update("UPDATE trials SET status='interrupted', finished=? WHERE status='running' "
                                       "AND owner=?", keys, (time.time(), owner))
