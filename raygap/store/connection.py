"""The SQLite plumbing under the store: opening the file, faults, waiting on a lock, the
schema's migration, transactions, and the one helper through which every query by key goes.

Concurrency: on a local disk the file is in WAL mode, so readers (``raygap status`` / ``export`` in
another process) see the last committed state without blocking the writer or being
blocked by it. Every write is one short ``BEGIN IMMEDIATE`` transaction; a connection is
guarded by a lock, so the driver's threads may share it. A write that finds the file
locked by another process waits, saying so once on stderr (and again every minute),
instead of failing after a fixed timeout. A connection pickles as its path (Tune pickles
its callbacks) and reconnects when unpickled. On a network file system (NFS, Lustre...: see
:func:`journal_mode`) the file uses SQLite's rollback journal instead, as WAL needs shared memory
on one machine.

Faults -- a corrupt or truncated file, a read-only or full disk -- raise
:class:`~raygap.errors.StoreError`: one line naming the file and what to do. A store
opened with ``readonly=True`` (``status``, ``export``, ``run --dry-run``) never writes, so a
read-only results folder can still be inspected.
"""
from __future__ import annotations

import json
import math
import sqlite3
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..system import NETWORK_FS, mount_fs_type
from .schema import JSON_COLUMNS, SCHEMA_VERSION, migrate

CHUNK = 500                  # keys per query: far below SQLite's limit on bound variables
BUSY_POLL_MS = 2000          # SQLite's own wait per try before raygap says it is waiting
BUSY_REPEAT_S = 60.0         # how often the waiting message is repeated


def dumps(obj) -> str:
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


def aside(path: Path) -> str:
    """The commands that move a store aside with its ``-wal`` and ``-shm`` files (SQLite reads a
    WAL left without its database into the next file of that name, so they go together)."""
    return "; ".join(f"mv {path}{x} {path}.bad{x}" for x in ("", "-wal", "-shm") if x == "" or Path(f"{path}{x}").exists())


def journal_mode(path: Path) -> str:
    """``wal`` on a local disk; ``delete`` on a file system several machines mount (NFS, Lustre...,
    FUSE: ``system.NETWORK_FS``), where SQLite's WAL index (shared memory) does not work."""
    return "delete" if mount_fs_type(path.parent) in NETWORK_FS else "wal"


class Connection:
    """An open SQLite trial store at ``path``.

    ``readonly=False`` (the default) creates the file and its folder when missing and
    migrates an older schema; ``readonly=True`` only reads (the file must exist).
    """

    def __init__(self, path: str | Path, readonly: bool = False, notify=None):
        self.path = Path(path)
        self.readonly = readonly
        self._notify = notify
        self._fences: dict[str, int] = {}     # key -> the token of this connection's claim (claims.py)
        self._connect()

    # -- faults -------------------------------------------------------------------------
    def _fault(self, e: sqlite3.Error) -> StoreError:
        msg = str(e)
        low = msg.lower()
        if "not a database" in low or "malformed" in low or "corrupt" in low:
            return StoreError(self.path, f"not a readable SQLite trial store ({msg})",
                              f"move it aside with its -wal and -shm files ({aside(self.path)}) and run again, "
                              "which runs every trial again; or restore it from a copy")
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
            self._open()
            cols = [r[1] for r in self._db.execute("PRAGMA table_info(trials)")]
            self._has_owner = "owner" in cols
            self._columns = set(cols)          # (a store of an older schema opened read-only lacks some)

    def _open(self) -> None:
        if self.readonly:
            self._open_readonly()
        else:
            self._open_readwrite()

    def _open_readwrite(self) -> None:
        if self.path.exists() and not self.path.is_file():
            raise StoreError(self.path, "is not a file", "pass --results DIR with a folder raygap may use")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(self.path.parent, f"cannot create the results folder ({e.strerror or e})",
                             "pass --results DIR with a writable folder") from None
        self._probe_readonly()
        self._db = sqlite3.connect(self.path, timeout=BUSY_POLL_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute(f"PRAGMA busy_timeout={BUSY_POLL_MS}")
        version = self._busy_retry(lambda: self._db.execute("PRAGMA user_version").fetchone()[0])
        self._refuse_foreign(version)        # before anything is written to the file
        want = journal_mode(self.path)
        mode = self._busy_retry(lambda: self._db.execute("PRAGMA journal_mode").fetchone()[0])
        if mode.lower() != want:
            self._busy_retry(lambda: self._db.execute(f"PRAGMA journal_mode={want}").fetchone())
        self._db.execute("PRAGMA synchronous=NORMAL" if want == "wal" else "PRAGMA synchronous=FULL")
        if version < SCHEMA_VERSION:
            with self._tx():
                migrate(self._db)

    def _probe_readonly(self) -> None:
        """An existing file is first read through a read-only connection: one that is not a store
        of this raygap, or not a database at all, is refused before a writing connection touches
        it (closing one merges a WAL file into the database and deletes it, with its -shm)."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        uri = "file:" + urllib.parse.quote(str(self.path.resolve())) + "?mode=ro"
        try:
            probe = sqlite3.connect(uri, uri=True, timeout=BUSY_POLL_MS / 1000, isolation_level=None,
                                    check_same_thread=False)
        except sqlite3.OperationalError:
            return                            # (cannot be opened read-only: the writing open says why)
        try:
            self._db = probe
            self._refuse_foreign(self._busy_retry(lambda: probe.execute("PRAGMA user_version").fetchone()[0]))
        except sqlite3.OperationalError as e:
            if "unable to open" not in str(e).lower() and "readonly" not in str(e).lower():
                raise
        finally:
            probe.close()

    def _refuse_foreign(self, version: int) -> None:
        """A file raygap must not write: a store of a later raygap (its schema version is newer),
        or an SQLite file that is not a trial store (tables, none of them raygap's)."""
        if version > SCHEMA_VERSION:
            raise StoreError(self.path, f"a trial store of schema version {version}, written by a newer raygap; "
                                        f"this raygap reads version {SCHEMA_VERSION} (and wrote nothing)",
                             "upgrade raygap, or pass --results DIR with another folder")
        tables = [r[0] for r in self._busy_retry(
            lambda: self._db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall())]
        if tables and not set(tables) & {"trials", "memberships", "runs", "forgotten", "warmups"}:
            raise StoreError(self.path, f"an SQLite file that is not a raygap trial store (its tables: "
                                        f"{', '.join(sorted(tables)[:5])}); raygap wrote nothing",
                             "pass --results DIR with a folder of raygap's own")

    def _open_readonly(self) -> None:
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
                self._refuse_foreign(self._busy_retry(lambda db=db: db.execute("PRAGMA user_version").fetchone()[0]))
                return
            except sqlite3.OperationalError as e:
                last = e
                if "unable to open" not in str(e).lower() and "readonly" not in str(e).lower():
                    raise
        raise self._fault(last)  # type: ignore[arg-type]

    def __getstate__(self):            # Tune pickles its callbacks: carry the path and the fences, not the connection
        return {"path": self.path, "readonly": self.readonly, "fences": dict(self._fences)}

    def __setstate__(self, state):
        self.path = Path(state["path"])
        self.readonly = state.get("readonly", False)
        self._notify = None
        self._fences = dict(state.get("fences") or {})
        self._connect()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- statements -----------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[None]:
        if self.readonly:
            raise StoreError(self.path, "opened read-only", "this command only reads the store")
        with self._lock, self._guard():
            self._busy_retry(lambda: self._db.execute("BEGIN IMMEDIATE"))
            try:
                yield
                self._busy_retry(lambda: self._db.execute("COMMIT"))
            except BaseException:
                # SQLite may have rolled back already (a full disk, an I/O error), or kept
                # the transaction open after a failed COMMIT: end it either way
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _query(self, sql: str, args: Iterable = ()) -> list[tuple]:
        with self._lock, self._guard():
            return self._busy_retry(lambda: self._db.execute(sql, tuple(args)).fetchall())

    def _rows(self, sql: str, args: Iterable = ()) -> list[dict[str, Any]]:
        """The rows as dicts of their columns, as stored (JSON columns as text)."""
        with self._lock, self._guard():
            def run():
                cur = self._db.execute(sql, tuple(args))
                return [d[0] for d in cur.description], cur.fetchall()
            names, rows = self._busy_retry(run)
        return [dict(zip(names, row, strict=True)) for row in rows]

    def _records(self, sql: str, args: Iterable = ()) -> list[dict[str, Any]]:
        """The rows as dicts, the JSON columns decoded (``None`` where empty)."""
        out = self._rows(sql, args)
        for rec in out:
            for c in JSON_COLUMNS:
                if c in rec:
                    try:
                        rec[c] = json.loads(rec[c]) if rec[c] else None
                    except (ValueError, TypeError) as e:
                        who = f"trial {rec['key']}" if "key" in rec else "a row"
                        raise StoreError(self.path, f"{who}: its {c} is not valid JSON ({e})",
                                         f"take the trial out and run it again: raygap run GRID --rerun {rec.get('key', 'HASH')}"
                                         ) from None
            if "column" in rec and isinstance(rec["column"], str):
                rec["column"] = json.loads(rec["column"])
        return out

    def _changed(self, sql: str, args: Iterable = ()) -> list[int]:
        """Run a write (inside :meth:`_tx`); ``[the number of rows it changed]``."""
        return [self._db.execute(sql, tuple(args)).rowcount]

    def _fence(self, key: str) -> tuple[str, tuple]:
        """The condition (``AND token=?``) and its parameter by which a write of ``key``'s state
        checks this connection's claim; nothing for a trial it never claimed (a tool, a test)."""
        return (" AND token=?", (self._fences[key],)) if key in self._fences else ("", ())

    def _fenced_update(self, head: str, keys: Iterable[str], args: Iterable = ()) -> int:
        """Run ``head`` (an UPDATE ending in its WHERE condition) for each of ``keys`` (inside
        :meth:`_tx`), those this connection claimed only while their token has not moved.
        Returns how many rows changed."""
        keys = list(dict.fromkeys(keys))
        fenced = [(*args, k, self._fences[k]) for k in keys if k in self._fences]
        n = self._db.executemany(f"{head} AND key=? AND token=?", fenced).rowcount if fenced else 0
        return n + sum(self._keyed(f"{head} AND", [k for k in keys if k not in self._fences], args,
                                   run=self._changed))

    def _keyed(self, head: str, keys: Iterable[str], args: Iterable = (), column: str = "key",
               run: Callable[[str, tuple], list] | None = None) -> list:
        """Every query by key: ``head`` (a statement ending in its WHERE clause, or in
        ``AND``) followed by ``column IN (?,?,...)``, run once per :data:`CHUNK` of the
        distinct ``keys`` with ``args`` bound before them; every chunk's result of
        ``run(sql, params)`` (:meth:`_query` by default; :meth:`_records`, :meth:`_rows`,
        or :meth:`_changed` in a transaction), in one list."""
        keys = list(dict.fromkeys(keys))
        run = run or self._query
        out: list = []
        for i in range(0, len(keys), CHUNK):
            chunk = keys[i:i + CHUNK]
            out += run(f"{head} {column} IN ({','.join('?' * len(chunk))})", (*args, *chunk))
        return out

    def _by_key(self, keys: Iterable[str], columns: str = "*", where: str = "", table: str = "trials",
                key: str = "key") -> dict[str, dict[str, Any]]:
        """key -> ``columns`` (which include ``key``) of the rows of ``table`` among ``keys``,
        ``where`` (a condition ending in ``AND``) holding."""
        return {rec[key]: rec for rec in self._keyed(f"SELECT {columns} FROM {table} WHERE {where}", keys,
                                                     column=key, run=self._records)}

    def _has_table(self, name: str) -> bool:
        return bool(self._query("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)))
