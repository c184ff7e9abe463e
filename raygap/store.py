"""The trial store: one SQLite file (default ``results/store.sqlite``), one row per distinct trial.

A trial is keyed by :meth:`TrialConfig.key` (a hash of its resolved config, resources
excluded, plus the results version of the code and of its method). A ``done`` row is
never run again and never overwritten by a later failure; :meth:`Store.forget`
(``raygap run --rerun``) removes rows so they run again.

Concurrency: the driver process is the only writer; the file is in WAL mode, so readers
(``raygap status`` / ``export`` in another process) see the last committed state without
blocking the writer or being blocked by it. Every write is one short ``BEGIN IMMEDIATE``
transaction; a connection is guarded by a lock, so the driver's threads may share it. A
``Store`` pickles as its path (Tune pickles its callbacks) and reconnects when unpickled.

Schema::

    trials(key TEXT PRIMARY KEY,
           status TEXT  -- pending | running | done | failed
           config JSON, metrics JSON, history JSON, error TEXT, attempts INT,
           created REAL, started REAL, finished REAL  -- unix times
           wall_seconds REAL, info JSON)
    memberships(grid, key, label, "column" JSON, seed, PRIMARY KEY(grid, key, label, "column"))

Life of a trial: ``register(grid)`` records the grid's cells and adds a ``pending`` row
(with its config) for every key not yet stored -> ``mark_running`` (attempts + 1) ->
``record_epoch`` (partial history, while running) -> ``save_done`` or ``save_failed``.

Records (``get``, ``records``, ``rows_for_grid``) are plain dicts with the columns above,
the JSON columns decoded (``None`` where empty).
"""
from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STATUSES = ("pending", "running", "done", "failed")
SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    config TEXT,
    metrics TEXT,
    history TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL,
    started REAL,
    finished REAL,
    wall_seconds REAL,
    info TEXT
);
CREATE TABLE IF NOT EXISTS memberships (
    grid TEXT NOT NULL,
    key TEXT NOT NULL,
    label TEXT NOT NULL,
    "column" TEXT NOT NULL,
    seed INTEGER NOT NULL,
    PRIMARY KEY (grid, key, label, "column")
);
CREATE INDEX IF NOT EXISTS memberships_key ON memberships(key);
"""
JSON_COLUMNS = ("config", "metrics", "history", "info")
_CHUNK = 500


def _dumps(obj) -> str:
    """JSON with NaN/inf as null (strict JSON, readable by any tool) and odd types as str."""
    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o
    return json.dumps(clean(obj), default=str, allow_nan=False)


class Store:
    """The SQLite trial store at ``path`` (created with its parent directory if missing)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._connect()

    # -- connection -----------------------------------------------------------------
    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=30000")
        if self._db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        have = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}
        if not {"trials", "memberships", "memberships_key"} <= have:
            with self._lock:        # each statement is IF NOT EXISTS: safe if two processes race
                self._db.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        cols = [r[1] for r in self._db.execute("PRAGMA table_info(memberships)")]
        if "col" in cols and "column" not in cols:          # stores written before the rename
            with self._tx():
                self._db.execute('ALTER TABLE memberships RENAME COLUMN col TO "column"')

    def __getstate__(self):            # Tune pickles its callbacks: carry the path, not the connection
        return {"path": self.path}

    def __setstate__(self, state):
        self.path = Path(state["path"])
        self._connect()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[None]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: Iterable = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    def _records(self, sql: str, args: Iterable = ()) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute(sql, tuple(args))
            names = [d[0] for d in cur.description]
            rows = cur.fetchall()
        out = []
        for row in rows:
            rec = dict(zip(names, row, strict=True))
            for c in JSON_COLUMNS:
                if c in rec:
                    rec[c] = json.loads(rec[c]) if rec[c] else None
            if "column" in rec and isinstance(rec["column"], str):
                rec["column"] = json.loads(rec["column"])
            out.append(rec)
        return out

    # -- reading ----------------------------------------------------------------------
    def get(self, key: str) -> dict[str, Any] | None:
        """The stored record of ``key``, or None."""
        recs = self._records("SELECT * FROM trials WHERE key=?", (key,))
        return recs[0] if recs else None

    def records(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """key -> record for the stored ones among ``keys`` (one query per 500 keys)."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, dict] = {}
        for i in range(0, len(keys), _CHUNK):
            chunk = keys[i:i + _CHUNK]
            for rec in self._records(f"SELECT * FROM trials WHERE key IN ({','.join('?' * len(chunk))})", chunk):
                out[rec["key"]] = rec
        return out

    def status_of(self, keys: Iterable[str]) -> dict[str, str]:
        """key -> status for the stored ones among ``keys`` (absent keys are new)."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, str] = {}
        for i in range(0, len(keys), _CHUNK):
            chunk = keys[i:i + _CHUNK]
            out.update(dict(self._query(f"SELECT key, status FROM trials WHERE key IN ({','.join('?' * len(chunk))})",
                                        chunk)))
        return out

    def done_keys(self) -> set[str]:
        return {k for (k,) in self._query("SELECT key FROM trials WHERE status='done'")}

    def memberships(self, grid: str) -> list[dict]:
        """The cells registered for grid ``grid``: dicts with key, label, column, seed."""
        return self._records('SELECT key, label, "column", seed FROM memberships WHERE grid=? ORDER BY rowid', (grid,))

    def rows_for_grid(self, name: str) -> list[dict[str, Any]]:
        """Every registered cell of grid ``name`` joined with its trial record: dicts with
        label, column, seed, key, status ('new' when the trial has no row) and the trial's
        columns (config, metrics, history, error, attempts, times, wall_seconds, info)."""
        recs = self._records(
            'SELECT m.label, m."column", m.seed, m.key, COALESCE(t.status, \'new\') AS status, t.config, '
            't.metrics, t.history, t.error, t.attempts, t.created, t.started, t.finished, t.wall_seconds, t.info '
            'FROM memberships m LEFT JOIN trials t ON t.key = m.key WHERE m.grid=? ORDER BY m.rowid', (name,))
        return recs

    def grids(self) -> list[str]:
        return [g for (g,) in self._query("SELECT DISTINCT grid FROM memberships ORDER BY grid")]

    # -- writing (the driver) ---------------------------------------------------------
    def register(self, grid) -> None:
        """Record which cells of ``grid`` use which trial (replacing the grid's earlier
        memberships, so an edited grid does not keep stale cells), and add a ``pending``
        row with its config for every trial not stored yet."""
        now = time.time()
        with self._tx():
            self._db.execute("DELETE FROM memberships WHERE grid=?", (grid.name,))
            self._db.executemany(
                "INSERT OR IGNORE INTO memberships VALUES (?,?,?,?,?)",
                [(grid.name, t.key, t.label, json.dumps(t.column, sort_keys=True, default=str), t.seed)
                 for t in grid.trials])
            self._db.executemany(
                "INSERT OR IGNORE INTO trials(key, status, config, attempts, created) VALUES (?, 'pending', ?, 0, ?)",
                [(k, _dumps(t.config.to_dict()), now) for k, t in grid.distinct().items()])

    def mark_running(self, key: str, config: dict) -> None:
        """A trial starts (or restarts): status running, attempts + 1. No-op on a done trial."""
        now = time.time()
        with self._tx():
            row = self._db.execute("SELECT status FROM trials WHERE key=?", (key,)).fetchone()
            if row and row[0] == "done":
                return
            if row is None:
                self._db.execute("INSERT INTO trials(key, status, config, attempts, created, started) "
                                 "VALUES (?, 'running', ?, 1, ?, ?)", (key, _dumps(config), now, now))
            else:
                self._db.execute("UPDATE trials SET status='running', config=?, attempts=attempts+1, started=?, "
                                 "finished=NULL, error=NULL WHERE key=?", (_dumps(config), now, key))

    def record_epoch(self, key: str, history: list[dict]) -> None:
        """The history so far of a running trial (ignored unless the trial is running)."""
        with self._tx():
            self._db.execute("UPDATE trials SET history=? WHERE key=? AND status='running'", (_dumps(history), key))

    def save_done(self, key: str, metrics: dict, history: list[dict], wall_seconds: float,
                  info: dict | None = None) -> None:
        """A trial finished: final metrics, full history, wall time, free-form info."""
        now = time.time()
        with self._tx():
            if self._db.execute("SELECT 1 FROM trials WHERE key=?", (key,)).fetchone() is None:
                self._db.execute("INSERT INTO trials(key, status, attempts, created, started) "
                                 "VALUES (?, 'running', 1, ?, ?)", (key, now, now))
            self._db.execute("UPDATE trials SET status='done', metrics=?, history=?, wall_seconds=?, info=?, "
                             "finished=?, error=NULL WHERE key=?",
                             (_dumps(metrics), _dumps(history), wall_seconds, _dumps(info or {}), now, key))

    def save_failed(self, key: str, error: str) -> None:
        """A trial failed with ``error`` (kept to its first line). A done trial stays done."""
        now = time.time()
        error = (str(error).strip().splitlines() or [""])[0][:2000]
        with self._tx():
            row = self._db.execute("SELECT status FROM trials WHERE key=?", (key,)).fetchone()
            if row and row[0] == "done":
                return
            if row is None:
                self._db.execute("INSERT INTO trials(key, status, error, attempts, created, finished) "
                                 "VALUES (?, 'failed', ?, 1, ?, ?)", (key, error, now, now))
            else:
                self._db.execute("UPDATE trials SET status='failed', error=?, finished=? WHERE key=?",
                                 (error, now, key))

    def forget(self, keys: Iterable[str]) -> int:
        """Delete the trials ``keys`` (whatever their status) so they run again; memberships
        stay. Returns how many rows were deleted."""
        keys = list(dict.fromkeys(keys))
        n = 0
        with self._tx():
            for i in range(0, len(keys), _CHUNK):
                chunk = keys[i:i + _CHUNK]
                n += self._db.execute(f"DELETE FROM trials WHERE key IN ({','.join('?' * len(chunk))})", chunk).rowcount
        return n
