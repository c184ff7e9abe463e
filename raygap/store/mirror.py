"""The store outlives the head: a copy of the results folder's trial store and tables on the
run's storage (``--storage``: a local path, ``s3://...``, ``gs://...``), read and written through
pyarrow's file systems, never through Ray.

Layout on the storage: ``<storage>/results/store.sqlite`` and ``<storage>/results/<grid>/<variant>/``
(the tables, as in the results folder). Every copy of the store is consistent: SQLite's online
backup API (:meth:`sqlite3.Connection.backup`) copies it, whatever the driver writes meanwhile,
into a temporary file, which is uploaded under a temporary name and renamed into place, so a
reader of the storage finds the last whole copy or the one before, never half of one.

A results folder without a store takes the mirror's (:meth:`Mirror.restore`); one with a store
and a mirror are merged by trial key (:func:`merge_stores`): a done row is a fact about a config
hash, so neither side's is dropped; a key done on both keeps the earlier result, said in one line.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import sys
import tempfile
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import refuse_link, results_dir
from ..errors import StoreError
from ..removal import remove, temp_folder
from .schema import TRIAL_COLUMNS

FOLDER = "results"           # the mirror's folder on the storage
STORE = "store.sqlite"


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def filesystem(uri: str):
    """(pyarrow file system, path in it) of a storage URI or local path. pyarrow's S3 client
    reads the endpoint from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` itself (the AWS SDK
    does), and keys from the environment, as Ray Tune's storage does; the URI's query parameters
    (``?endpoint_override=HOST:PORT&scheme=http&region=...``) are pyarrow's own."""
    import pyarrow.fs

    if "://" in uri:
        return pyarrow.fs.FileSystem.from_uri(uri)
    return pyarrow.fs.LocalFileSystem(), str(Path(uri).resolve())


@dataclass
class Merged:
    """What :func:`merge_stores` took from the other store."""
    added: list[str] = field(default_factory=list)        # done there, not done here: taken
    earlier: list[str] = field(default_factory=list)      # done on both with other results: the earlier kept
    earlier_there: list[str] = field(default_factory=list)   # ... and that earlier one was the other's
    rows: int = 0                                         # other rows taken (not done, unknown here)

    def line(self, here: str, there: str) -> str | None:
        """The one line a merge says about keys done on both sides (None when there are none)."""
        if not self.earlier:
            return None
        return (f"raygap: {len(self.earlier)} trial(s) done both in {here} and in {there} with different results: "
                f"kept the earlier of each ({len(self.earlier_there)} from {there}): "
                + ", ".join(k[:12] for k in self.earlier[:20]) + (" ..." if len(self.earlier) > 20 else ""))


# a row of the other store that ``--rerun`` here did not set aside after it was written
KEPT = ("NOT EXISTS (SELECT 1 FROM main.forgotten f WHERE f.key = o.key "
        "AND f.forgotten >= COALESCE(o.finished, o.started, o.created, 0))")


def merge_stores(db: sqlite3.Connection, other: str | Path) -> Merged:
    """Merge the store file ``other`` into the store open on ``db`` (one transaction), by trial key:

    * a trial done there and not done here (absent, pending, running, failed, interrupted) is
      taken, unless ``--rerun`` here set it aside after it finished (``forgotten``);
    * a trial done on both with different results keeps the one that finished first;
    * a trial there that is unknown here is taken as it is (unless set aside here, too) (an interrupted one keeps the
      checkpoint it resumes from); a trial not done on both sides keeps its row here;
    * the grids' memberships, the shared warm-ups and the ``forgotten`` rows are united, each
      grid keeps its latest run record, and each hyperparameter search the record that has seen
      more samples (of two as many, the later).
    """
    cols = ", ".join(TRIAL_COLUMNS)
    out = Merged()
    db.execute("ATTACH DATABASE ? AS m", (str(Path(other).resolve()),))
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            pairs = db.execute(
                "SELECT o.key, t.status, t.finished, o.finished, o.metrics IS t.metrics AND o.history IS t.history "
                f"FROM m.trials o LEFT JOIN main.trials t ON t.key = o.key WHERE o.status = 'done' AND {KEPT}"
            ).fetchall()
            take = []
            for key, status, here_fin, there_fin, same in pairs:
                if status != "done":
                    out.added.append(key)
                    take.append(key)
                elif not same:
                    out.earlier.append(key)
                    if (there_fin or 0) < (here_fin or 0):
                        out.earlier_there.append(key)
                        take.append(key)
            db.executemany(f"INSERT OR REPLACE INTO main.trials ({cols}) SELECT {cols} FROM m.trials WHERE key=?",
                           [(k,) for k in take])
            out.rows = db.execute(f"INSERT INTO main.trials ({cols}) SELECT {cols} FROM m.trials o "
                                  f"WHERE o.key NOT IN (SELECT key FROM main.trials) AND {KEPT}").rowcount
            db.execute("INSERT OR IGNORE INTO main.memberships SELECT * FROM m.memberships")
            db.execute("INSERT OR IGNORE INTO main.warmups SELECT * FROM m.warmups")
            if db.execute("SELECT 1 FROM m.sqlite_master WHERE type='table' AND name='searches'").fetchone():
                # a search on both sides: the record that has seen more samples (then the later)
                db.execute("INSERT OR REPLACE INTO main.searches SELECT * FROM m.searches o WHERE NOT EXISTS "
                           "(SELECT 1 FROM main.searches s WHERE s.sid = o.sid AND (json_array_length(s.samples) > "
                           "json_array_length(o.samples) OR (json_array_length(s.samples) = json_array_length(o.samples) "
                           "AND s.updated >= o.updated)))")
            db.execute("INSERT INTO main.forgotten SELECT * FROM m.forgotten o WHERE NOT EXISTS (SELECT 1 FROM "
                       "main.forgotten f WHERE f.key = o.key AND f.forgotten = o.forgotten)")
            db.execute("INSERT OR REPLACE INTO main.runs SELECT * FROM m.runs o WHERE NOT EXISTS (SELECT 1 FROM "
                       "main.runs r WHERE r.grid = o.grid AND r.variant = o.variant AND r.started >= o.started)")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    finally:
        db.execute("DETACH DATABASE m")
    return out


class Mirror:
    """The copy of a results folder (its store and tables) under ``<storage>/results``."""

    def __init__(self, storage: str, results: str | Path, say: Callable[[str], None] = _say):
        self.storage = storage
        base, sep, query = storage.partition("?")      # query parameters (endpoint_override=, region=) kept
        self.uri = f"{base.rstrip('/')}/{FOLDER}"         # (what the lines say: no parameters, no secrets)
        self._open_uri = f"{self.uri}{sep}{query}"
        self.results = Path(results)
        self._say = say
        self._failing = False
        try:
            self.fs, self.root = filesystem(self._open_uri)
        except Exception as e:  # noqa: BLE001 -- pyarrow's errors: an unknown scheme, a bad URI
            raise StoreError(base, f"cannot open the storage to mirror the store ({_first(e)})",
                             "give --storage a local path or an s3:// / gs:// URI pyarrow can open") from None

    def __repr__(self) -> str:
        return f"Mirror({self.uri!r})"

    # -- writing ------------------------------------------------------------------------
    def _upload(self, src: Path, rel: str) -> None:
        """``src`` to ``<root>/<rel>``: under a temporary name, then renamed into place."""
        dest = f"{self.root}/{rel}"
        if self.fs.type_name == "local":      # (an object store needs no folders: no marker objects)
            self.fs.create_dir(dest.rpartition("/")[0], recursive=True)
        tmp = f"{dest}.part-{uuid.uuid4().hex[:8]}"
        try:
            with open(src, "rb") as f, self.fs.open_output_stream(tmp) as out:
                shutil.copyfileobj(f, out, 8 << 20)
            self.fs.move(tmp, dest)   # (on S3 a copy, then the temporary deleted; pyarrow marks the folder)
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.delete_file(tmp)
            raise

    def push_store(self, store_path: str | Path | None = None) -> bool:
        """Upload a consistent copy of the store (SQLite's backup API into a temporary file).
        A storage that refuses is said in one line (once until it works again), never raised:
        the store on disk is intact and the next push (every finished trial, the run's end)
        tries again. Returns whether the copy is there."""
        path = Path(store_path or self.results / STORE)
        try:
            with temp_folder("raygap-mirror-") as tmp:
                copy = Path(tmp) / STORE
                src = _readonly(path)
                dst = sqlite3.connect(copy)
                try:
                    src.backup(dst)
                    # a plain file, not WAL: a reader of the mirror (a local or NFS one) leaves no -wal/-shm
                    dst.execute("PRAGMA journal_mode=DELETE")
                finally:
                    dst.close()
                    src.close()
                self._upload(copy, STORE)
        except Exception as e:  # noqa: BLE001 -- said; the store on disk is whole
            if not self._failing:
                self._say(f"raygap: could not mirror the store to {self.uri}/{STORE} ({_first(e)}); the store on "
                          "disk is intact, the next finished trial tries again")
            self._failing = True
            return False
        if self._failing:
            self._say(f"raygap: the store is mirrored to {self.uri}/{STORE} again")
        self._failing = False
        return True

    def push_tables(self, paths: Iterable[str | Path]) -> bool:
        """Upload the files ``paths`` (under the results folder: the tables an export wrote, its
        figures) to the same places under the mirror. Failures are said in one line."""
        try:
            root = self.results.resolve()
            files = []
            for p in paths:
                p = Path(p)
                files += sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p] if p.is_file() else []
            for f in files:
                self._upload(f, f.resolve().relative_to(root).as_posix())
        except Exception as e:  # noqa: BLE001 -- said; the tables on disk are whole
            self._say(f"raygap: could not mirror the tables to {self.uri} ({_first(e)}); they are on disk, and "
                      "`raygap export` writes them again")
            return False
        return True

    # -- reading ------------------------------------------------------------------------
    def has_store(self) -> bool:
        import pyarrow.fs

        return self.fs.get_file_info(f"{self.root}/{STORE}").type == pyarrow.fs.FileType.File

    def _download(self, rel: str, dest: Path) -> None:
        """``<root>/<rel>`` to ``dest``, whole or not at all (a temporary file beside it, renamed)."""
        import pyarrow.fs

        refuse_link(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        os.close(fd)
        try:
            pyarrow.fs.copy_files(f"{self.root}/{rel}", tmp, source_filesystem=self.fs,
                                  destination_filesystem=pyarrow.fs.LocalFileSystem())
            os.replace(tmp, dest)
        except BaseException:
            remove(tmp, dest.parent, ignore_errors=True)
            raise

    def restore(self, store_path: str | Path | None = None) -> str | None:
        """Before a run: a results folder without a store takes the mirror's; one with a store
        takes from the mirror what it lacks (:func:`merge_stores`). Returns the line saying what
        was restored (None when the storage holds no mirror yet)."""
        path = Path(store_path or self.results / STORE)
        try:
            if not self.has_store():
                return None
            if not path.exists():
                self._download(STORE, path)
                n = _count_done(path)
                return f"restored the store from {self.uri}/{STORE}: {n} done trial(s) (this results folder had none)"
            with temp_folder("raygap-mirror-") as tmp:
                there = Path(tmp) / STORE
                self._download(STORE, there)
                merged = self.merge_into(path, there)
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 -- an unreadable storage: one line, exit 2
            raise StoreError(self.uri, f"cannot read the mirrored store ({_first(e)})",
                             "check --storage and its credentials, or run without --storage") from None
        return (f"merged the mirrored store {self.uri}/{STORE} into {path}: {len(merged.added)} done trial(s) "
                f"taken from it, {merged.rows} other row(s)")

    def merge_into(self, path: Path, there: Path) -> Merged:
        """Merge the store file ``there`` into the store at ``path``, saying a key done on both."""
        from . import Store

        Store(there).close()                 # an older schema brought to this one (a temporary copy)
        store = Store(path)
        try:
            with store._lock, store._guard():
                merged = merge_stores(store._db, there)
        finally:
            store.close()
        line = merged.line(str(path), f"{self.uri}/{STORE}")
        if line:
            self._say(line)
        return merged

    def pull(self) -> tuple[str, list[Path]]:
        """Fetch the store (merged into one already in the results folder) and every table file
        to the results folder. Returns (what happened to the store, the table files written)."""
        import pyarrow.fs

        if not self.has_store():
            raise StoreError(self.uri, f"no mirrored store here ({STORE} missing)",
                             "give the --storage that a `raygap run --storage` used")
        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self.root, recursive=True))
        rels = []
        for i in infos:
            rel = i.path[len(self.root):].lstrip("/")
            # the tables are in <grid>/<variant>/ (beside the store only: what a reader of it left)
            if i.type != pyarrow.fs.FileType.File or "/" not in rel or ".part-" in rel:
                continue
            refuse_link(self.results / rel, self.results)   # each copy link-safe, all checked before any is written
            rels.append(rel)
        refuse_link(self.results / STORE, self.results)
        said = self.restore()
        got = []
        for rel in rels:
            results_dir(self.results, *Path(rel).parts[:-1])
            self._download(rel, self.results / rel)
            got.append(self.results / rel)
        return said or "", got


def _count_done(path: Path) -> int:
    db = _readonly(path)
    try:
        return db.execute("SELECT count(*) FROM trials WHERE status='done'").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        db.close()


def _readonly(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro", uri=True)


def _first(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


__all__ = ["FOLDER", "STORE", "Merged", "Mirror", "filesystem", "merge_stores"]
