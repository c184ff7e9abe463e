"""Store safety (issue 25): a store raygap must not write is refused before anything is written,
a migration keeps what it does not know, a bad row is one line naming its trial, and on a
network file system the store does not use WAL. The refusals through real ``raygap`` processes."""
from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
import yaml

from _proc import raygap
from raygap.errors import StoreError
from raygap.grid import load_grid
from raygap.store import SCHEMA_VERSION, Store
from raygap.store import connection


@pytest.fixture
def grid(tmp_path):
    g = tmp_path / "t.yaml"
    g.write_text(yaml.safe_dump({"name": "t", "base": {"method": {"name": "concat"}}, "rows": {"Concat": {}},
                                 "columns": {"data.name": ["avdigits"]}, "seeds": [0], "metrics": ["acc"]}))
    return g


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def one_line(code: int, out: str, err: str) -> str:
    assert code == 2 and "Traceback" not in out + err and (out + err).count("\n") == 1, out + err
    return (out + err).strip()


def test_a_store_of_a_later_schema_is_refused_by_every_verb_and_nothing_is_written(grid, tmp_path):
    results = tmp_path / "results"
    db = results / "store.sqlite"
    Store(db).close()
    c = sqlite3.connect(db)
    c.execute(f"PRAGMA user_version={SCHEMA_VERSION + 3}")
    c.execute("PRAGMA journal_mode=DELETE")           # everything in the file itself: its bytes tell any write
    c.close()
    before = digest(db)
    for verb in (["run", str(grid)], ["status", str(grid)], ["export", str(grid)], ["run", str(grid), "--dry-run"]):
        line = one_line(*raygap(*verb, "--results", str(results), timeout=120))
        assert f"{db}: a trial store of schema version {SCHEMA_VERSION + 3}, written by a newer raygap" in line, line
        assert "upgrade raygap" in line
    assert digest(db) == before


def test_an_sqlite_file_that_is_not_a_store_is_refused_and_left_as_it_was(grid, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    db = results / "store.sqlite"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE users (name TEXT)")
        c.execute("INSERT INTO users VALUES ('ada')")
    before = digest(db)
    line = one_line(*raygap("run", str(grid), "--results", str(results), timeout=120))
    assert f"{db}: an SQLite file that is not a raygap trial store (its tables: users)" in line, line
    assert digest(db) == before and [p for p in results.rglob("*")] == [db]      # no table folder made either
    with sqlite3.connect(db) as c:
        assert [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["users"]


def test_the_migration_keeps_columns_it_does_not_know(tmp_path):
    """A version-1 ``trials`` table (no 'interrupted' status, so it is rebuilt) with a column
    a user added: the column and its value survive the rebuild."""
    db = tmp_path / "store.sqlite"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE trials (key TEXT PRIMARY KEY, status TEXT NOT NULL CHECK (status IN "
                  "('pending','running','done','failed')), config JSON, metrics JSON, history JSON, error TEXT, "
                  "attempts INTEGER DEFAULT 0, created REAL, started REAL, finished REAL, wall_seconds REAL, "
                  "info JSON, my_note TEXT)")
        c.execute("INSERT INTO trials (key, status, metrics, my_note) VALUES ('k1', 'done', '{\"acc\": 0.5}', 'keep me')")
        c.execute("PRAGMA user_version=1")
    s = Store(db)
    assert s.status_of(["k1"]) == {"k1": "done"}
    s.close()
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT my_note, metrics FROM trials WHERE key='k1'").fetchone() == ("keep me", '{"acc": 0.5}')
        assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert "'interrupted'" in c.execute("SELECT sql FROM sqlite_master WHERE name='trials'").fetchone()[0]


def test_a_row_with_bad_json_is_one_line_naming_its_trial(grid, tmp_path):
    results = tmp_path / "results"
    key = load_grid(grid).trials[0].key
    s = Store(results / "store.sqlite")
    s.register(load_grid(grid))
    s.save_done(key, {"acc": 0.5}, [{"epoch": 0, "val_acc": 0.5}], 1.0)
    s.close()
    with sqlite3.connect(results / "store.sqlite") as c:
        c.execute("UPDATE trials SET history='[{\"epoch\": 0,' WHERE key=?", (key,))
    code, out, err = raygap("export", str(grid), "--results", str(results), timeout=120)
    note, line = (out + err).strip().splitlines()          # the profile it defaults to, then the error
    assert code == 2 and "Traceback" not in out + err and note.startswith("raygap: no profile"), out + err
    assert f"trial {key}: its history is not valid JSON" in line and f"--rerun {key}" in line, line


def test_the_corrupt_store_hint_moves_the_wal_and_shm_with_it(tmp_path):
    db = tmp_path / "store.sqlite"
    db.write_bytes(b"not a database at all" * 100)
    (tmp_path / "store.sqlite-wal").write_bytes(b"x")
    (tmp_path / "store.sqlite-shm").write_bytes(b"x")
    with pytest.raises(StoreError) as e:
        Store(db, readonly=True)
    assert (f"mv {db} {db}.bad; mv {db}-wal {db}.bad-wal; mv {db}-shm {db}.bad-shm" in e.value.line()), e.value.line()


def test_on_a_network_file_system_the_store_uses_a_rollback_journal(tmp_path, monkeypatch):
    """The mount type is faked (no NFS here); another process then reads the store's journal mode."""
    fake = tmp_path / "mounts"
    fake.write_text(f"server:/export {tmp_path} nfs4 rw,relatime 0 0\n/dev/sda1 / ext4 rw 0 0\n")
    from raygap import system

    assert system.mount_fs_type(tmp_path / "results", str(fake)) == "nfs4"
    assert system.mount_fs_type("/", str(fake)) == "ext4"
    monkeypatch.setattr(connection, "mount_fs_type", lambda p: system.mount_fs_type(p, str(fake)))
    db = tmp_path / "results" / "store.sqlite"
    s = Store(db)
    s.save_done("k", {"acc": 1.0}, [], 1.0)
    s.close()
    import subprocess
    import sys

    mode = subprocess.run([sys.executable, "-c", f"import sqlite3; print(sqlite3.connect({str(db)!r})"
                           ".execute('PRAGMA journal_mode').fetchone()[0])"], capture_output=True, text=True)
    assert mode.stdout.strip() == "delete" and not Path(f"{db}-wal").exists(), mode
    # and the same store on a local disk goes back to WAL
    monkeypatch.setattr(connection, "mount_fs_type", lambda p: "ext4")
    Store(db).close()
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_foreign_file_in_wal_mode_keeps_its_wal_and_a_corrupt_store_its_wal_and_shm(grid, tmp_path):
    """A writing connection, once closed, merges the WAL into the database and deletes it: the
    file is refused through a read-only look first, so "raygap wrote nothing" holds for the WAL
    too, and the corrupt-store hint's -wal and -shm are still there to move (before, both were
    gone when the hint was printed)."""
    results = tmp_path / "results"
    results.mkdir()
    db = results / "store.sqlite"
    keep = sqlite3.connect(db)              # held open: its last frames stay in the WAL
    keep.execute("PRAGMA journal_mode=WAL")
    keep.execute("PRAGMA wal_autocheckpoint=0")
    keep.execute("CREATE TABLE users (name TEXT)")
    keep.execute("INSERT INTO users VALUES ('ada')")
    keep.commit()
    wal = Path(f"{db}-wal")
    before = (digest(db), digest(wal))
    line = one_line(*raygap("run", str(grid), "--results", str(results), timeout=120))
    assert "an SQLite file that is not a raygap trial store (its tables: users); raygap wrote nothing" in line, line
    assert (digest(db), digest(wal)) == before
    keep.close()

    other = tmp_path / "other"
    other.mkdir()
    bad = other / "store.sqlite"
    bad.write_bytes(b"not a database at all" * 100)
    for ext in ("-wal", "-shm"):
        Path(f"{bad}{ext}").write_bytes(b"x")
    line = one_line(*raygap("run", str(grid), "--results", str(other), timeout=120))
    assert f"mv {bad}-wal {bad}.bad-wal; mv {bad}-shm {bad}.bad-shm" in line, line
    # the WAL as it was; the -shm (SQLite's index of the WAL, rebuilt from it on every open) still there
    assert Path(f"{bad}-wal").read_bytes() == b"x" and Path(f"{bad}-shm").is_file()
