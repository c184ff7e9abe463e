"""The trial store: one SQLite file (default ``results/store.sqlite``), one row per distinct trial.

A trial is keyed by :meth:`TrialConfig.key` (a hash of its resolved config, resources
excluded, plus the results version of the code and of its method). A ``done`` row is
never run again and never overwritten by a later failure; :meth:`Store.forget`
(``raygap run --rerun``) moves rows to the ``forgotten`` table so they run again while
their old results stay readable.

Concurrency: the file is in WAL mode, so readers (``raygap status`` / ``export`` in
another process) see the last committed state without blocking the writer or being
blocked by it. Every write is one short ``BEGIN IMMEDIATE`` transaction; a connection is
guarded by a lock, so the driver's threads may share it. A write that finds the file
locked by another process waits, saying so once on stderr (and again every minute),
instead of failing after a fixed timeout. A ``Store`` pickles as its path (Tune pickles
its callbacks) and reconnects when unpickled.

Faults -- a corrupt or truncated file, a read-only or full disk -- raise
:class:`~raygap.errors.StoreError`: one line naming the file and what to do. A store
opened with ``readonly=True`` (``status``, ``export``, ``run --dry-run``) never writes, so a
read-only results folder can still be inspected.

Schema (``PRAGMA user_version`` 4)::

    trials(key TEXT PRIMARY KEY,
           status TEXT  -- pending | running | done | failed | interrupted
           config JSON, metrics JSON, history JSON, error TEXT, attempts INT,
           created REAL, started REAL, finished REAL  -- unix times
           wall_seconds REAL, info JSON,
           owner TEXT      -- the driver running it: "host:pid:process start time"
           heartbeat REAL  -- its last sign of life (start, each epoch)
           lease_until REAL    -- the owner's claim holds until then (renewed while it runs)
           checkpoint TEXT     -- the latest checkpoint on the run's storage (path or URI) ...
           checkpoint_epoch INT)  -- ... and its epoch: the next run resumes there
    memberships(grid, key, label, "column" JSON, seed, PRIMARY KEY(grid, key, label, "column"))
        -- grid is "<name>/<variant>" (table3/demo): which cells of an expansion use a trial
    runs(grid, variant, profile, sets JSON, path, started REAL, PRIMARY KEY(grid, variant))
        -- the last run of each grid expansion: `status`/`export` default to the latest
    forgotten(key, forgotten REAL, record JSON)   -- rows --rerun replaced
    warmups(wkey TEXT PRIMARY KEY, uri, epoch INT, leader, created REAL)
        -- shared warm-up checkpoints (TrialConfig.warmup): trials with the key start from uri

Life of a trial: ``register(grid)`` records the grid's cells and adds a ``pending`` row
(with its config) for every key not yet stored -> ``mark_running`` (attempts + 1, owner)
-> ``record_epoch`` (partial history, while running) -> ``save_done`` or ``save_failed``,
or ``mark_interrupted`` when the driver is stopped. A ``running`` row whose owner is a
process of this machine that no longer exists (a driver killed with SIGKILL) reads as
``interrupted``.

Records (``get``, ``records``, ``rows_for_grid``) are plain dicts with the columns above,
the JSON columns decoded (``None`` where empty).
"""
from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import StoreError

STATUSES = ("pending", "running", "done", "failed", "interrupted")
SCHEMA_VERSION = 4
TRIALS_SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed', 'interrupted')),
    config TEXT,
    metrics TEXT,
    history TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL,
    started REAL,
    finished REAL,
    wall_seconds REAL,
    info TEXT,
    owner TEXT,
    heartbeat REAL,
    lease_until REAL,
    checkpoint TEXT,
    checkpoint_epoch INTEGER
);
"""
SCHEMA = TRIALS_SCHEMA + """
CREATE TABLE IF NOT EXISTS memberships (
    grid TEXT NOT NULL,
    key TEXT NOT NULL,
    label TEXT NOT NULL,
    "column" TEXT NOT NULL,
    seed INTEGER NOT NULL,
    PRIMARY KEY (grid, key, label, "column")
);
CREATE INDEX IF NOT EXISTS memberships_key ON memberships(key);
CREATE TABLE IF NOT EXISTS runs (
    grid TEXT NOT NULL,
    variant TEXT NOT NULL,
    profile TEXT,
    sets TEXT,
    path TEXT,
    started REAL,
    PRIMARY KEY (grid, variant)
);
CREATE TABLE IF NOT EXISTS forgotten (
    key TEXT NOT NULL,
    forgotten REAL NOT NULL,
    record TEXT
);
CREATE TABLE IF NOT EXISTS warmups (
    wkey TEXT PRIMARY KEY,
    uri TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    leader TEXT,
    created REAL
);
"""
TRIAL_COLUMNS = ("key", "status", "config", "metrics", "history", "error", "attempts", "created", "started",
                 "finished", "wall_seconds", "info", "owner", "heartbeat", "lease_until", "checkpoint",
                 "checkpoint_epoch")
JSON_COLUMNS = ("config", "metrics", "history", "info")
_CHUNK = 500
BUSY_POLL_MS = 2000          # SQLite's own wait per try before raygap says it is waiting
BUSY_REPEAT_S = 60.0         # how often the waiting message is repeated


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


def this_process_owner() -> str:
    """``host:pid:start time`` of this process: identifies a driver even after pid reuse."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    try:
        import psutil

        return f"{psutil.Process(pid).create_time():.2f}"
    except Exception:  # noqa: BLE001 -- gone, or not inspectable
        return "?"


def owner_alive(owner: str | None) -> bool | None:
    """Whether the driver ``owner`` still runs: True/False on this machine, None elsewhere."""
    if not owner:
        return None
    host, _, rest = owner.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname():
        return None
    try:
        return _start_time(int(pid)) == started
    except ValueError:
        return None


def _live_claim(other: str | None, lease: float | None, owner: str, now: float) -> bool:
    """Whether ``other``'s claim (lease until ``lease``) still holds against ``owner``."""
    return bool(other and other != owner and lease and lease > now and owner_alive(other) is not False)


class Store:
    """The SQLite trial store at ``path``.

    ``readonly=False`` (the default) creates the file and its folder when missing and
    migrates an older schema; ``readonly=True`` only reads (the file must exist).
    """

    def __init__(self, path: str | Path, readonly: bool = False, notify=None):
        self.path = Path(path)
        self.readonly = readonly
        self._notify = notify
        self._connect()

    # -- faults -------------------------------------------------------------------------
    def _fault(self, e: sqlite3.Error) -> StoreError:
        msg = str(e)
        low = msg.lower()
        if "not a database" in low or "malformed" in low or "corrupt" in low:
            return StoreError(self.path, f"not a readable SQLite trial store ({msg})",
                              f"move it aside (mv {self.path} {self.path}.bad) and run again, which runs every "
                              "trial again; or restore it from a copy")
        if "full" in low:
            return StoreError(self.path, "the disk is full",
                              "free some space, then run the same command (finished trials are kept)")
        if "readonly" in low or "read-only" in low:
            return StoreError(self.path, "read-only: raygap cannot write the trial store",
                              "status and export still work; to run, give a writable folder with --results")
        if "unable to open" in low:
            where = self.path.parent
            return StoreError(self.path, f"cannot open ({msg})",
                              f"check that {where} exists and is writable, or pass --results DIR")
        if "disk i/o" in low:
            return StoreError(self.path, f"disk I/O error ({msg})", "check the disk, then run the same command")
        return StoreError(self.path, f"SQLite error: {msg}")

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except StoreError:
            raise
        except sqlite3.Error as e:
            raise self._fault(e) from None

    def _say_waiting(self, since: float) -> None:
        line = (f"raygap: {self.path} is locked by another process (a raygap run, or an open sqlite3 "
                f"write); waiting for it{f' ({time.monotonic() - since:.0f} s so far)' if since else ''}; "
                "Ctrl-C stops")
        (self._notify or (lambda s: print(s, file=sys.stderr, flush=True)))(line)

    def _busy_retry(self, fn):
        """Run ``fn`` (a statement), waiting while the file is locked, saying so."""
        start = None
        last_said = 0.0
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as e:
                if "locked" not in str(e).lower() and "busy" not in str(e).lower():
                    raise
                now = time.monotonic()
                if start is None:
                    start = now
                    self._say_waiting(0)
                    last_said = now
                elif now - last_said >= BUSY_REPEAT_S:
                    self._say_waiting(start)
                    last_said = now
                time.sleep(0.05)

    # -- connection -----------------------------------------------------------------
    def _connect(self) -> None:
        self._lock = threading.RLock()
        with self._guard():
            if self.readonly:
                self._connect_readonly()
            else:
                self._connect_readwrite()
            cols = [r[1] for r in self._db.execute("PRAGMA table_info(trials)")]
            self._has_owner = "owner" in cols

    def _connect_readwrite(self) -> None:
        if self.path.exists() and not self.path.is_file():
            raise StoreError(self.path, "is not a file", "pass --results DIR with a folder raygap may use")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(self.path.parent, f"cannot create the results folder ({e.strerror or e})",
                             "pass --results DIR with a writable folder") from None
        self._db = sqlite3.connect(self.path, timeout=BUSY_POLL_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute(f"PRAGMA busy_timeout={BUSY_POLL_MS}")
        mode = self._busy_retry(lambda: self._db.execute("PRAGMA journal_mode").fetchone()[0])
        if mode.lower() != "wal":
            self._busy_retry(lambda: self._db.execute("PRAGMA journal_mode=WAL").fetchone())
        self._db.execute("PRAGMA synchronous=NORMAL")
        version = self._busy_retry(lambda: self._db.execute("PRAGMA user_version").fetchone()[0])
        if version < SCHEMA_VERSION:
            self._migrate()

    def _connect_readonly(self) -> None:
        if not self.path.exists():
            raise StoreError(self.path, "no trial store here", "nothing has run with this --results folder yet")
        if not self.path.is_file():
            raise StoreError(self.path, "is not a file", "pass --results DIR (the folder that holds store.sqlite)")
        uri = "file:" + urllib.parse.quote(str(self.path.resolve()))
        last: sqlite3.Error | None = None
        # a WAL file needs its -shm index; in a read-only folder that nobody can write,
        # immutable=1 reads the database file as it stands
        for opts in ("?mode=ro", "?mode=ro&immutable=1"):
            try:
                db = sqlite3.connect(uri + opts, uri=True, timeout=BUSY_POLL_MS / 1000, isolation_level=None,
                                     check_same_thread=False)
                self._busy_retry(lambda db=db: db.execute("SELECT count(*) FROM sqlite_master").fetchone())
                self._db = db
                return
            except sqlite3.OperationalError as e:
                last = e
                if "unable to open" not in str(e).lower() and "readonly" not in str(e).lower():
                    raise
        raise self._fault(last)  # type: ignore[arg-type]

    def _migrate(self) -> None:
        """Bring any earlier schema to SCHEMA_VERSION in one transaction."""
        with self._tx():
            have = {r[0]: r[1] for r in self._db.execute("SELECT name, sql FROM sqlite_master WHERE type='table'")}
            cols = [r[1] for r in self._db.execute("PRAGMA table_info(trials)")]
            if "trials" in have and "'interrupted'" not in (have["trials"] or ""):
                self._db.execute("ALTER TABLE trials RENAME TO trials_old")
                self._db.execute(TRIALS_SCHEMA)
                keep = [c for c in TRIAL_COLUMNS if c in cols]
                self._db.execute(f"INSERT INTO trials ({', '.join(keep)}) SELECT {', '.join(keep)} FROM trials_old")
                self._db.execute("DROP TABLE trials_old")
            elif "trials" in have:
                for col, kind in (("owner", "TEXT"), ("heartbeat", "REAL"), ("lease_until", "REAL"),
                                  ("checkpoint", "TEXT"), ("checkpoint_epoch", "INTEGER")):
                    if col not in cols:
                        self._db.execute(f"ALTER TABLE trials ADD COLUMN {col} {kind}")
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    self._db.execute(stmt)
            mcols = [r[1] for r in self._db.execute("PRAGMA table_info(memberships)")]
            if "col" in mcols and "column" not in mcols:          # stores written before the rename
                self._db.execute('ALTER TABLE memberships RENAME COLUMN col TO "column"')
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def __getstate__(self):            # Tune pickles its callbacks: carry the path, not the connection
        return {"path": self.path, "readonly": self.readonly}

    def __setstate__(self, state):
        self.path = Path(state["path"])
        self.readonly = state.get("readonly", False)
        self._notify = None
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
        if self.readonly:
            raise StoreError(self.path, "opened read-only", "this command only reads the store")
        with self._lock, self._guard():
            self._busy_retry(lambda: self._db.execute("BEGIN IMMEDIATE"))
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._busy_retry(lambda: self._db.execute("COMMIT"))

    def _query(self, sql: str, args: Iterable = ()) -> list[tuple]:
        with self._lock, self._guard():
            return self._busy_retry(lambda: self._db.execute(sql, tuple(args)).fetchall())

    def _records(self, sql: str, args: Iterable = ()) -> list[dict[str, Any]]:
        with self._lock, self._guard():
            def run():
                cur = self._db.execute(sql, tuple(args))
                return [d[0] for d in cur.description], cur.fetchall()
            names, rows = self._busy_retry(run)
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

    def _by_key(self, keys: Iterable[str], columns: str = "*", where: str = "", table: str = "trials",
                key: str = "key") -> dict[str, dict[str, Any]]:
        """key -> ``columns`` of the rows of ``table`` among ``keys`` (one query per 500 keys)."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, dict] = {}
        for i in range(0, len(keys), _CHUNK):
            chunk = keys[i:i + _CHUNK]
            for rec in self._records(f"SELECT {columns} FROM {table} WHERE {where}{key} IN "
                                     f"({','.join('?' * len(chunk))})", chunk):
                out[rec[key]] = rec
        return out

    def records(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """key -> record for the stored ones among ``keys``."""
        return self._by_key(keys)

    def finished_times(self, keys: Iterable[str]) -> dict[str, float]:
        """key -> when each done trial among ``keys`` finished (no history read)."""
        return {k: r["finished"] for k, r in self._by_key(keys, "key, finished", "status='done' AND ").items()}

    def done_infos(self, keys: Iterable[str]) -> dict[str, dict]:
        """key -> the ``info`` of each done trial among ``keys`` (no history read)."""
        return {k: r.get("info") or {} for k, r in self._by_key(keys, "key, info", "status='done' AND ").items()}

    def status_of(self, keys: Iterable[str]) -> dict[str, str]:
        """key -> status for the stored ones among ``keys`` (absent keys are new). A
        ``running`` trial whose driver was a process of this machine that is gone reads
        as ``interrupted``."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, str] = {}
        owner_col = "owner" if self._has_owner else "NULL"
        for i in range(0, len(keys), _CHUNK):
            chunk = keys[i:i + _CHUNK]
            for k, st, owner in self._query(
                    f"SELECT key, status, {owner_col} FROM trials WHERE key IN ({','.join('?' * len(chunk))})",
                    chunk):
                out[k] = "interrupted" if st == "running" and owner_alive(owner) is False else st
        return out

    def done_keys(self) -> set[str]:
        return {k for (k,) in self._query("SELECT key FROM trials WHERE status='done'")}

    def memberships(self, grid: str) -> list[dict]:
        """The cells registered for ``grid`` (``name/variant``): dicts with key, label, column, seed."""
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

    def last_run(self, grid_name: str) -> dict[str, Any] | None:
        """The latest run of grid ``grid_name`` (any variant): variant, profile, sets (list),
        path, started; None when it never ran (or the store predates run records)."""
        if "runs" not in {n for (n,) in self._query("SELECT name FROM sqlite_master WHERE type='table'")}:
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
            self._db.executemany(
                "INSERT OR IGNORE INTO trials(key, status, config, attempts, created) VALUES (?, 'pending', ?, 0, ?)",
                [(k, _dumps(t.config.to_dict()), now) for k, t in grid.distinct().items()])
            self._db.execute("INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?)",
                             (grid.name, grid.variant, grid.profile, json.dumps(list(grid.sets)), str(grid.path), now))

    def mark_running(self, key: str, config: dict, owner: str | None = None) -> None:
        """A trial starts (or restarts): status running, attempts + 1, owned by ``owner``
        (default: this process). No-op on a done trial."""
        now = time.time()
        owner = owner or this_process_owner()
        with self._tx():
            row = self._db.execute("SELECT status FROM trials WHERE key=?", (key,)).fetchone()
            if row and row[0] == "done":
                return
            if row is None:
                self._db.execute("INSERT INTO trials(key, status, config, attempts, created, started, owner, heartbeat) "
                                 "VALUES (?, 'running', ?, 1, ?, ?, ?, ?)", (key, _dumps(config), now, now, owner, now))
            else:
                self._db.execute("UPDATE trials SET status='running', config=?, attempts=attempts+1, started=?, "
                                 "finished=NULL, error=NULL, owner=?, heartbeat=? WHERE key=?",
                                 (_dumps(config), now, owner, now, key))

    def record_epoch(self, key: str, history: list[dict]) -> None:
        """The history so far of a running trial (ignored unless the trial is running)."""
        with self._tx():
            self._db.execute("UPDATE trials SET history=?, heartbeat=? WHERE key=? AND status='running'",
                             (_dumps(history), time.time(), key))

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

    def mark_interrupted(self, keys: Iterable[str], owner: str | None = None) -> int:
        """The driver stopped before these trials ended: their ``running`` rows owned by
        ``owner`` (default: this process) become ``interrupted`` (history so far kept).
        Returns how many rows changed."""
        keys = list(dict.fromkeys(keys))
        owner = owner or this_process_owner()
        now = time.time()
        n = 0
        with self._tx():
            for i in range(0, len(keys), _CHUNK):
                chunk = keys[i:i + _CHUNK]
                n += self._db.execute(
                    f"UPDATE trials SET status='interrupted', finished=? WHERE status='running' AND owner=? "
                    f"AND key IN ({','.join('?' * len(chunk))})", (now, owner, *chunk)).rowcount
        return n

    # -- claims: one trial, one run ------------------------------------------------------
    def claim(self, keys: Iterable[str], owner: str | None = None,
              lease_s: float = 120.0) -> tuple[list[str], dict[str, str]]:
        """Claim the trials among ``keys`` that are not done and not held by another
        driver's live claim, for ``lease_s`` seconds (renew with :meth:`renew`). A claim
        is dead when its lease has expired or its owner is a gone process of this machine.
        Returns (claimed keys, {key: owner} of the trials another driver holds)."""
        keys = list(dict.fromkeys(keys))
        owner = owner or this_process_owner()
        now = time.time()
        claimed: list[str] = []
        held: dict[str, str] = {}
        with self._tx():
            for i in range(0, len(keys), _CHUNK):
                chunk = keys[i:i + _CHUNK]
                rows = self._db.execute(f"SELECT key, status, owner, lease_until FROM trials WHERE key IN "
                                        f"({','.join('?' * len(chunk))})", chunk).fetchall()
                for key, status, other, lease in rows:
                    if status == "done":
                        continue
                    if _live_claim(other, lease, owner, now):
                        held[key] = other
                    else:
                        claimed.append(key)
            for i in range(0, len(claimed), _CHUNK):
                chunk = claimed[i:i + _CHUNK]
                self._db.execute(f"UPDATE trials SET owner=?, lease_until=? WHERE key IN ({','.join('?' * len(chunk))})",
                                 (owner, now + lease_s, *chunk))
        return claimed, held

    def held_elsewhere(self, keys: Iterable[str], owner: str | None = None) -> dict[str, str]:
        """{key: owner} of the trials among ``keys`` (not done) that another driver's live
        claim holds. Reads only."""
        keys = list(dict.fromkeys(keys))
        owner = owner or this_process_owner()
        now = time.time()
        out: dict[str, str] = {}
        for i in range(0, len(keys), _CHUNK):
            chunk = keys[i:i + _CHUNK]
            for key, status, other, lease in self._query(
                    f"SELECT key, status, owner, lease_until FROM trials WHERE key IN ({','.join('?' * len(chunk))})",
                    chunk):
                if status != "done" and _live_claim(other, lease, owner, now):
                    out[key] = other
        return out

    def renew(self, keys: Iterable[str], owner: str | None = None, lease_s: float = 120.0) -> int:
        """Extend this driver's claims on ``keys`` (those not done yet)."""
        return self._set_lease(keys, owner, time.time() + lease_s, "AND status != 'done'")

    def release(self, keys: Iterable[str], owner: str | None = None) -> int:
        """Drop this driver's claims on ``keys``."""
        return self._set_lease(keys, owner, None, "")

    def _set_lease(self, keys, owner, until, extra: str) -> int:
        keys = list(dict.fromkeys(keys))
        owner = owner or this_process_owner()
        n = 0
        with self._tx():
            for i in range(0, len(keys), _CHUNK):
                chunk = keys[i:i + _CHUNK]
                n += self._db.execute(f"UPDATE trials SET lease_until=? WHERE owner=? {extra} AND key IN "
                                      f"({','.join('?' * len(chunk))})", (until, owner, *chunk)).rowcount
        return n

    def record_checkpoint(self, key: str, uri: str, epoch: int | None) -> list[str]:
        """The latest checkpoint of a running trial is at ``uri`` (epoch ``epoch``). Returns
        the checkpoints now of no use, for the caller to delete: the one recorded before (an
        earlier run's, once this run has its own), or ``uri`` itself when the trial is done."""
        with self._tx():
            row = self._db.execute("SELECT status, checkpoint FROM trials WHERE key=?", (key,)).fetchone()
            if row and row[0] == "done":
                return [uri]
            self._db.execute("UPDATE trials SET checkpoint=?, checkpoint_epoch=?, heartbeat=? WHERE key=?",
                             (uri, epoch, time.time(), key))
        return [row[1]] if row and row[1] and row[1] != uri else []

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

    def _has_table(self, name: str) -> bool:
        return bool(self._query("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)))

    def take_checkpoint(self, key: str) -> str | None:
        """Clear and return the trial's recorded checkpoint (to delete it: the trial is done,
        or will start over)."""
        with self._tx():
            row = self._db.execute("SELECT checkpoint FROM trials WHERE key=?", (key,)).fetchone()
            self._db.execute("UPDATE trials SET checkpoint=NULL, checkpoint_epoch=NULL WHERE key=?", (key,))
        return row[0] if row else None

    def forget(self, keys: Iterable[str]) -> int:
        """Take the trials ``keys`` (whatever their status) out of the store so they run
        again; their rows are kept in ``forgotten``; memberships stay. Returns how many."""
        keys = list(dict.fromkeys(keys))
        n = 0
        now = time.time()
        with self._tx():
            for i in range(0, len(keys), _CHUNK):
                chunk = keys[i:i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                cur = self._db.execute(f"SELECT * FROM trials WHERE key IN ({marks})", chunk)
                names = [d[0] for d in cur.description]
                self._db.executemany("INSERT INTO forgotten VALUES (?,?,?)",
                                     [(row[0], now, json.dumps(dict(zip(names, row, strict=True))))
                                      for row in cur.fetchall()])
                n += self._db.execute(f"DELETE FROM trials WHERE key IN ({marks})", chunk).rowcount
        return n
