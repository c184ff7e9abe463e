"""The trial store: one SQLite file (``results/store.sqlite``), one row per distinct trial.

A trial is keyed by :meth:`TrialConfig.key` (its resolved config, resources excluded,
plus the results version of the code). A ``done`` row is never run again and never
overwritten by a later failure; ``forget`` (``raygap run --rerun``) removes rows.
The driver is the only writer (WAL mode, so ``raygap status`` can read meanwhile).

Tables:
  trials(key PK, status, config, metrics, history, error, attempts, created, started,
         finished, wall_seconds, info)            JSON in the text columns
  memberships(grid, key, label, col, seed)        which grid cell uses which trial
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL,
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
    col TEXT NOT NULL,
    seed INTEGER NOT NULL,
    PRIMARY KEY (grid, key, label, col)
);
"""
JSON_COLUMNS = ("config", "metrics", "history", "info")


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connect()

    def _connect(self) -> None:
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def __getstate__(self):            # Tune pickles its callbacks: carry the path, not the connection
        return {"path": self.path}

    def __setstate__(self, state):
        self.path = state["path"]
        self._connect()

    # -- reading ----------------------------------------------------------------------
    def get(self, key: str) -> dict[str, Any] | None:
        cur = self._db.execute("SELECT * FROM trials WHERE key=?", (key,))
        row = cur.fetchone()
        if row is None:
            return None
        rec = dict(zip([d[0] for d in cur.description], row, strict=True))
        for c in JSON_COLUMNS:
            rec[c] = json.loads(rec[c]) if rec[c] else None
        return rec

    def status_of(self, keys: Iterable[str]) -> dict[str, str]:
        keys = list(keys)
        out: dict[str, str] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            q = f"SELECT key, status FROM trials WHERE key IN ({','.join('?' * len(chunk))})"
            out.update(dict(self._db.execute(q, chunk).fetchall()))
        return out

    def done_keys(self) -> set[str]:
        return {k for (k,) in self._db.execute("SELECT key FROM trials WHERE status='done'")}

    def memberships(self, grid: str) -> list[dict]:
        rows = self._db.execute("SELECT key, label, col, seed FROM memberships WHERE grid=?", (grid,)).fetchall()
        return [{"key": k, "label": lab, "column": json.loads(c), "seed": s} for k, lab, c, s in rows]

    # -- writing (the driver) ---------------------------------------------------------
    def register(self, grid) -> None:
        """Record which cells of ``grid`` use which trial (for status and exports)."""
        with self._tx():
            self._db.execute("DELETE FROM memberships WHERE grid=?", (grid.name,))
            self._db.executemany(
                "INSERT OR IGNORE INTO memberships VALUES (?,?,?,?,?)",
                [(grid.name, t.key, t.label, json.dumps(t.column, sort_keys=True), t.seed) for t in grid.trials])

    def mark_running(self, key: str, config: dict) -> None:
        now = time.time()
        with self._tx():
            row = self._db.execute("SELECT status FROM trials WHERE key=?", (key,)).fetchone()
            if row and row[0] == "done":
                return
            if row is None:
                self._db.execute("INSERT INTO trials(key, status, config, attempts, created, started) "
                                 "VALUES (?, 'running', ?, 1, ?, ?)", (key, json.dumps(config), now, now))
            else:
                self._db.execute("UPDATE trials SET status='running', config=?, attempts=attempts+1, started=?, "
                                 "error=NULL WHERE key=?", (json.dumps(config), now, key))

    def record_epoch(self, key: str, history: list[dict]) -> None:
        with self._tx():
            self._db.execute("UPDATE trials SET history=? WHERE key=? AND status='running'",
                             (json.dumps(history, default=str), key))

    def save_done(self, key: str, metrics: dict, history: list[dict], wall_seconds: float, info: dict) -> None:
        now = time.time()
        with self._tx():
            if self._db.execute("SELECT 1 FROM trials WHERE key=?", (key,)).fetchone() is None:
                self._db.execute("INSERT INTO trials(key, status, attempts, created) VALUES (?, 'running', 1, ?)",
                                 (key, now))
            self._db.execute("UPDATE trials SET status='done', metrics=?, history=?, wall_seconds=?, info=?, "
                             "finished=?, error=NULL WHERE key=?",
                             (json.dumps(metrics, default=str), json.dumps(history, default=str), wall_seconds,
                              json.dumps(info, default=str), now, key))

    def save_failed(self, key: str, error: str) -> None:
        """Record a failure; a trial already done stays done."""
        now = time.time()
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
        keys = list(keys)
        with self._tx():
            n = 0
            for k in keys:
                n += self._db.execute("DELETE FROM trials WHERE key=?", (k,)).rowcount
        return n

    def _tx(self):
        db = self._db

        class _T:
            def __enter__(self):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, et, ev, tb):
                db.execute("ROLLBACK" if et else "COMMIT")
                return False
        return _T()

    def close(self) -> None:
        self._db.close()
