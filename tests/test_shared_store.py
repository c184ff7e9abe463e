"""A store on a network file system shared by drivers on several hosts is refused (issue 25:
SQLite's WAL does not work across hosts, and its locks there are only as good as the NFS
server's): a driver that finds a live claim of a driver on another host stops with one line
saying what to do instead, exit 2, nothing written. The mount type is faked through
``RAYGAP_TEST_MOUNTS`` (a mount table read instead of /proc/mounts: test-only); the other
host's driver is a second process holding (and renewing) a claim under another host's name."""
from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raygap.errors import StoreError
from raygap.store import Store
from raygap.store.hosts import other_hosts_holding, refuse_other_hosts
from test_figures import _grid
from _tiny import avdigits

ROOT = Path(__file__).resolve().parent.parent


def mounts(tmp_path: Path, kind: str) -> Path:
    table = tmp_path / f"mounts-{kind}"
    table.write_text(f"server:/export {tmp_path} {kind} rw,relatime 0 0\n/dev/sda1 / ext4 rw 0 0\n")
    return table


HOLDER = """
import sys, time
from raygap.store import Store
store = Store(sys.argv[1])
key = sys.argv[2]
claimed, _ = store.claim([key], owner="node-b:4242:1700000000.00", lease_s=30)
print("held", claimed, flush=True)
while sys.stdin.readline():        # renew while the test keeps the pipe open
    store.renew([key], owner="node-b:4242:1700000000.00", lease_s=30)
"""


def dump(db: Path) -> list:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT key, status, owner, lease_until, attempts FROM trials ORDER BY key").fetchall()


def test_a_second_host_on_one_nfs_store_is_refused_with_one_line(tmp_path):
    grid = _grid(tmp_path)
    results = tmp_path / "results"
    db = results / "store.sqlite"
    with Store(db) as store:
        store.register(grid)
        store.add_pending(grid.trials)
    env = {**os.environ, "RAYGAP_TEST_MOUNTS": str(mounts(tmp_path, "nfs4")), "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), grid.trials[0].key], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert holder.stdout.readline().startswith("held ['"), "the other host's driver did not claim its trial"
        before = dump(db)
        r = subprocess.run([sys.executable, "-m", "raygap", "run", str(tmp_path / "figs.yaml"), "--results",
                            str(results)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        text = r.stdout + r.stderr
        errors = [ln for ln in text.splitlines() if "error" in ln]
        assert r.returncode == 2 and "Traceback" not in text and len(errors) == 1, text
        assert (f"{db}: is on a network file system (nfs4) where a driver on host node-b holds 1 trial(s) now"
                in errors[0]), text
        assert "one SLURM job running `raygap run grids/table*.yaml`" in errors[0], text
        assert "starting a local Ray" not in text
        assert dump(db) == before                                     # nothing written: no claim, no run
        with sqlite3.connect(db) as c:                                # and no WAL on the faked NFS
            assert c.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_what_is_not_refused(tmp_path, monkeypatch):
    grid = _grid(tmp_path)
    db = tmp_path / "results" / "store.sqlite"
    monkeypatch.setenv("RAYGAP_TEST_MOUNTS", str(mounts(tmp_path, "nfs4")))
    with Store(db) as store:
        store.register(grid)
        store.add_pending(grid.trials)
        k0, k1 = grid.trials[0].key, grid.trials[1].key
        store.claim([k0], owner="node-b:1:1.00", lease_s=30)
        with pytest.raises(StoreError, match="network file system"):
            refuse_other_hosts(store)
        assert other_hosts_holding(store) == {"node-b:1:1.00": 1}
        refuse_other_hosts(store, host="node-b")                       # that host's own drivers: local locks
        # its heartbeat still for a lease as this observer watched (its own monotonic clock): not a live driver
        import raygap.store.claims as claims

        watch, t0 = claims.Watch(), time.monotonic()
        with pytest.raises(StoreError, match="network file system"):
            refuse_other_hosts(store, watch=watch)                     # first look: live
        monkeypatch.setattr(claims.time, "monotonic", lambda: t0 + 31)
        refuse_other_hosts(store, watch=watch)
        monkeypatch.undo()
        monkeypatch.setenv("RAYGAP_TEST_MOUNTS", str(mounts(tmp_path, "nfs4")))
        store.claim([k1], owner="node-c:1:1.00", lease_s=30)
        with pytest.raises(StoreError, match=r"holds 1 trial\(s\) now \(and 1 other driver\(s\)\)"):
            refuse_other_hosts(store)
        monkeypatch.setenv("RAYGAP_TEST_MOUNTS", str(mounts(tmp_path, "ext4")))
        refuse_other_hosts(store)                                      # a local disk: its locks work


def test_a_driver_on_another_host_starting_mid_run_stops_this_one_before_its_next_batch(tmp_path):
    """This driver passed the check at its start; a driver on another host then claims a trial of
    the same network-FS store while this one runs its first batch (a shared warm-up's leader; the
    variant waits for it). Before claiming its next batch this driver looks again: one line,
    exit 2; the leader it finished is kept, the other host's trial is not touched."""
    import yaml

    doc = {"name": "mid", "base": {"data": avdigits(), "model": {"backbone": "small", "width": 4},
                                   "train": {"epochs": 3, "device": "cpu", "threads": 1, "checkpoint_every": 1},
                                   "method": {"name": "gap_adaptive", "warmup_epochs": 1}},
           "rows": {"Lead": {}, "Variant": {"method": {"alpha": 0.5}}},
           "seeds": [0], "metrics": ["acc"], "resources": {"cpu": 1, "gpu": 0}}
    (tmp_path / "mid.yaml").write_text(yaml.safe_dump(doc))
    from raygap.grid import load_grid

    grid = load_grid(tmp_path / "mid.yaml")
    lead, variant = (next(t.key for t in grid.trials if t.label == lab) for lab in ("Lead", "Variant"))
    results = tmp_path / "results"
    db = results / "store.sqlite"
    # and the ledger of the run's Ray processes cannot be written there (a file where its folder goes):
    # the run says so once, and goes on
    results.mkdir()
    (results / ".raygap-procs").write_text("not a folder")
    env = {**os.environ, "RAYGAP_TEST_MOUNTS": str(mounts(tmp_path, "nfs4")), "PYTHONPATH": str(ROOT)}
    run = subprocess.Popen([sys.executable, "-m", "raygap", "run", str(tmp_path / "mid.yaml"), "--results",
                            str(results), "--num-cpus", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, env=env, cwd=tmp_path)
    holder = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:          # the leader has trained an epoch: the first batch runs
            row = None
            if db.exists():
                with sqlite3.connect(db) as c, contextlib.suppress(sqlite3.OperationalError):
                    # (the file exists a moment before its tables: "no such table" is "not yet")
                    row = c.execute("SELECT status, history FROM trials WHERE key=?", (lead,)).fetchone()
                if row and row[0] == "running" and row[1] and row[1] != "[]":
                    break
            assert run.poll() is None, run.stdout.read()
            time.sleep(0.2)
        else:
            pytest.fail("the leader never trained an epoch")
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), variant], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        assert holder.stdout.readline() == f"held ['{variant}']\n"
        text = run.communicate(timeout=240)[0]
    finally:
        if run.poll() is None:
            run.kill()
        if holder is not None:
            holder.stdin.close()
            holder.wait(timeout=30)
    errors = [ln for ln in text.splitlines() if "error" in ln]
    assert run.returncode == 2 and "Traceback" not in text and len(errors) == 1, text
    assert f"{db}: is on a network file system (nfs4) where a driver on host node-b holds 1 trial(s) now" in errors[0]
    warned = [ln for ln in text.splitlines() if "the ledger of this run's Ray processes cannot be written" in ln]
    assert len(warned) == 1 and str(results / ".raygap-procs") in warned[0], text
    rows = {k: (st, owner) for k, st, owner, _, _ in dump(db)}
    assert rows[lead][0] == "done"                                    # finished before the look: kept
    assert rows[variant][1] == "node-b:4242:1700000000.00"            # the other host's claim: untouched
