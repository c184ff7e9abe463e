"""Claims with fencing (issue 25): every write of a trial's state checks the claim's token in its
transaction; a claim is stale only once its heartbeat counter has stood still for the lease on
the observer's own monotonic clock (no clock of another machine compared); a driver stopped
past its lease (a real SIGSTOP) and woken after another driver took its trials over writes
nothing; ``--rerun`` of a trial a live driver holds is refused. Real SQLite files throughout;
the running-grid guarantees through real ``raygap`` processes."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from raygap.status import with_stale
from raygap.store import Store, Watch

COLS = ("status", "metrics", "history", "error", "attempts", "finished", "wall_seconds", "info", "owner",
        "heartbeat", "lease_until", "checkpoint", "checkpoint_epoch", "token", "beats", "lease_s")


def row(db: Path, key: str) -> tuple:
    with sqlite3.connect(db) as c:
        return c.execute(f"SELECT {', '.join(COLS)} FROM trials WHERE key=?", (key,)).fetchone()


def test_a_write_with_a_stale_token_changes_nothing(tmp_path):
    """Driver A claimed two trials (token 1 and 2); by hand, as driver B's takeover writes them,
    one is now B's done row and the other B's running row (tokens 7 and 8). Every write A makes
    of either changes no column, and none hands A a checkpoint of B's to delete."""
    db = tmp_path / "store.sqlite"
    a = Store(db)
    with sqlite3.connect(db) as c:
        c.executemany("INSERT INTO trials(key, status, attempts, created) VALUES (?, 'pending', 0, 1.0)",
                      [("done1",), ("run1",)])
    me = "host-a:10:t100:1"
    assert a.claim(["done1", "run1"], me, lease_s=30) == (["done1", "run1"], {})
    assert a._fences == {"done1": 1, "run1": 2}
    assert a.mark_running("run1", {"seed": 1}, owner=me) is True
    b = "host-b:20:t200:2"
    with sqlite3.connect(db) as c:                      # B's takeover and B's results, as B wrote them
        c.execute("UPDATE trials SET status='done', metrics='{\"acc\": 0.9}', history='[{\"epoch\": 0}]', "
                  "error=NULL, attempts=1, finished=5000.0, wall_seconds=12.5, info='{\"node\": \"b\"}', owner=?, "
                  "heartbeat=4999.0, lease_until=NULL, checkpoint=NULL, checkpoint_epoch=NULL, token=7, beats=3, "
                  "lease_s=30 WHERE key='done1'", (b,))
        c.execute("UPDATE trials SET status='running', metrics=NULL, history='[{\"epoch\": 0}, {\"epoch\": 1}]', "
                  "attempts=2, finished=NULL, owner=?, heartbeat=4998.0, lease_until=5030.0, "
                  "checkpoint='file:///b/ck_e1', checkpoint_epoch=1, token=8, beats=9, lease_s=30 WHERE key='run1'",
                  (b,))
        c.execute("UPDATE fences SET last=8")
    done_before = ("done", '{"acc": 0.9}', '[{"epoch": 0}]', None, 1, 5000.0, 12.5, '{"node": "b"}', b, 4999.0,
                   None, None, None, 7, 3, 30.0)
    run_before = ("running", None, '[{"epoch": 0}, {"epoch": 1}]', None, 2, None, None, None, b, 4998.0,
                  5030.0, "file:///b/ck_e1", 1, 8, 9, 30.0)
    assert (row(db, "done1"), row(db, "run1")) == (done_before, run_before)
    assert a.lost(["done1", "run1"]) == ["done1", "run1"]
    for key in ("done1", "run1"):
        assert a.record_epoch(key, [{"epoch": 5}]) is False
        assert a.save_done(key, {"acc": 0.1}, [{"epoch": 5}], 1.0, {"node": "a"}) is False
        assert a.save_failed(key, "late failure") is False
        assert a.mark_running(key, {"seed": 9}, owner=me) is False
        assert a.record_checkpoint(key, "file:///a/ck_e5", 5) == []        # nothing of B's to delete
        assert a.take_checkpoint(key) is None
    assert a.mark_interrupted(["done1", "run1"], me) == 0
    assert a.renew(["done1", "run1"], me, lease_s=30) == 0
    assert a.release(["done1", "run1"], me) == 0
    assert (row(db, "done1"), row(db, "run1")) == (done_before, run_before)
    # and without a fence (a tool, another connection): a done row is still never replaced
    other = Store(db)
    assert other.save_done("done1", {"acc": 0.1}, [], 1.0, {}) is False and other.save_failed("done1", "x") is False
    assert row(db, "done1") == done_before
    # B's own connection, holding token 8, writes
    bs = Store(db)
    bs._fences["run1"] = 8
    assert bs.record_epoch("run1", [{"epoch": 2}]) is True and row(db, "run1")[2] == '[{"epoch": 2}]'


def test_a_token_is_never_handed_out_twice_even_after_rerun(tmp_path):
    db = tmp_path / "store.sqlite"
    a, b = Store(db), Store(db)
    with sqlite3.connect(db) as c:
        c.execute("INSERT INTO trials(key, status, attempts) VALUES ('k', 'pending', 0)")
    assert a.claim(["k"], "host-a:1:t1:1")[0] == ["k"] and a._fences == {"k": 1}
    assert b.forget(["k"]) == 1                          # --rerun elsewhere: the row out, then back
    with sqlite3.connect(db) as c:
        c.execute("INSERT INTO trials(key, status, attempts) VALUES ('k', 'pending', 0)")
    assert b.claim(["k"], "host-b:2:t2:2")[0] == ["k"] and b._fences == {"k": 2}   # not 1 again
    assert a.lost(["k"]) == ["k"] and a.record_epoch("k", []) is False and a.mark_running("k", {}) is False
    assert row(db, "k")[0] == "pending" and row(db, "k")[8] == "host-b:2:t2:2"


def test_a_store_of_schema_4_is_migrated_and_its_old_claims_judged_by_the_heartbeat(tmp_path):
    """A version-4 store (no token, beats, lease_s; owners ``host:pid:psutil time``) with a done
    row and a running one claimed by a driver of this machine in the old owner format: the rows
    are kept, the new columns take their defaults, and the old claim (its owner string not
    judged by pid any more) holds until an observer has watched it stand still for a lease."""
    import socket

    from raygap.store import SCHEMA_VERSION
    from raygap.store import claims as claims_mod

    db = tmp_path / "store.sqlite"
    old_owner = f"{socket.gethostname()}:1:123.45"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE trials (key TEXT PRIMARY KEY, status TEXT NOT NULL CHECK (status IN ('pending', "
                  "'running', 'done', 'failed', 'interrupted')), config TEXT, metrics TEXT, history TEXT, error TEXT, "
                  "attempts INTEGER NOT NULL DEFAULT 0, created REAL, started REAL, finished REAL, wall_seconds REAL, "
                  "info TEXT, owner TEXT, heartbeat REAL, lease_until REAL, checkpoint TEXT, checkpoint_epoch INTEGER)")
        c.execute("INSERT INTO trials VALUES ('d', 'done', '{}', '{\"acc\": 0.5}', '[]', NULL, 1, 1.0, 2.0, 3.0, 1.0, "
                  "'{}', ?, 3.0, NULL, NULL, NULL)", (old_owner,))
        c.execute("INSERT INTO trials VALUES ('r', 'running', '{}', NULL, '[]', NULL, 1, 1.0, 2.0, NULL, NULL, "
                  "NULL, ?, 3.0, 9e9, 'file:///x/ck', 2)", (old_owner,))
        c.execute("PRAGMA user_version=4")
    s = Store(db)
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
    assert row(db, "d") == ("done", '{"acc": 0.5}', "[]", None, 1, 3.0, 1.0, "{}", old_owner, 3.0, None, None, None,
                            0, 0, None)
    assert row(db, "r")[-3:] == (0, 0, None) and row(db, "r")[11:13] == ("file:///x/ck", 2)
    clock = [0.0]
    real = claims_mod.time.monotonic
    try:
        claims_mod.time.monotonic = lambda: clock[0]
        me = "new-driver:2:t2:2"
        assert s.claim(["d", "r"], me) == ([], {"r": old_owner})        # not judged gone: held, first look
        clock[0] = 119.0
        assert s.claim(["r"], me) == ([], {"r": old_owner})
        clock[0] = 120.5                                                 # the lease (120 s) of standing still
        assert s.claim(["r"], me) == (["r"], {}) and row(db, "r")[13] == 1 and row(db, "r")[8] == me
    finally:
        claims_mod.time.monotonic = real


OWNER_B = textwrap.dedent("""
    # driver B of another machine, whose wall clock is 200 s behind: it claims and beats
    import sys, time
    real = time.time
    time.time = lambda: real() - 200.0
    from raygap.store import Store
    s = Store(sys.argv[1])
    owner = "other-machine:4242:t99:4026531836"
    assert s.claim(["k"], owner, lease_s=2.0)[0] == ["k"]
    print("claimed", flush=True)
    while True:
        time.sleep(0.25)
        s.renew(["k"], owner, lease_s=2.0)
""")


def test_a_claim_written_with_a_clock_200_s_behind_holds_while_its_heartbeat_moves(tmp_path):
    """A real process as the remote owner (its time.time 200 s behind: its lease_until is long
    past by this machine's clock). Watched for 2.5 leases it stays held -- its heartbeat moves --
    and once it is killed the claim lapses one lease later, by this observer's own clock."""
    db = tmp_path / "store.sqlite"
    s = Store(db)
    with sqlite3.connect(db) as c:
        c.execute("INSERT INTO trials(key, status, attempts) VALUES ('k', 'running', 1)")
    b = subprocess.Popen([sys.executable, "-c", OWNER_B, str(db)], stdout=subprocess.PIPE, text=True,
                         cwd=Path(__file__).resolve().parent.parent)
    try:
        assert b.stdout.readline().strip() == "claimed"
        assert row(db, "k")[10] < time.time() - 150        # lease_until: by this clock, expired long ago
        me = "this-machine:1:t1:1"
        watch = Watch()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5.0:                  # 2.5 leases: held all along
            assert s.held_elsewhere(["k"], me) == {"k": "other-machine:4242:t99:4026531836"}
            assert with_stale(s, ["k"], watch) == {"k": "running"}
            time.sleep(0.2)
        beats = row(db, "k")[14]
        assert beats >= 10, beats                             # (one beat every 0.25 s)
        assert s.claim(["k"], me, lease_s=2.0) == ([], {"k": "other-machine:4242:t99:4026531836"})
    finally:
        b.kill()
        b.wait()
    gone = time.monotonic()
    shown = []                                              # what `status` would show, at each look
    while s.held_elsewhere(["k"], me):
        shown.append((time.monotonic() - gone, with_stale(s, ["k"], watch)["k"]))
        assert time.monotonic() - gone < 2.0 + 1.5, "the dead claim never lapsed"
        time.sleep(0.1)
    waited = time.monotonic() - gone
    assert waited >= 2.0 - 0.3, waited                       # not before a lease of standing still
    assert all(st == "running" for t, st in shown if t < 2.0 - 0.3), shown
    while with_stale(s, ["k"], watch)["k"] != "stale":      # `status` says so once it has watched a lease
        assert time.monotonic() - gone < 2.0 + 2.0, shown
        time.sleep(0.05)
    assert s.claim(["k"], me, lease_s=2.0) == (["k"], {}) and row(db, "k")[8] == me
    print(f"a dead remote claim lapsed {waited:.2f} s after its owner was killed (lease 2 s)")


LEASE = 8.0          # RAYGAP_LEASE_S for both drivers: a heartbeat every 2 s


def _wait(what, cond, timeout, *runs):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout} s:\n" + "\n----\n".join(r.output[-3000:] + r.errors[-2000:]
                                                                                  for r in runs))


def test_two_threads_losing_trials_at_once_print_a_whole_line_each(tmp_path, monkeypatch):
    """The lease renewer and Tune's stopper may both find lost claims at the same moment: each
    lost-claim line reaches stderr whole (seen in CI: two lines glued into one). stderr here pauses
    inside every write, so any line written in two pieces would be split by the other thread."""
    import threading

    from raygap.runner.fence import Fence

    class SlowStream:
        def __init__(self):
            self.parts: list[str] = []

        def write(self, text):
            self.parts.append(text)
            time.sleep(0.05)                # the other thread runs here
            return len(text)

        def flush(self):
            pass

    slow = SlowStream()
    monkeypatch.setattr(sys, "stderr", slow)
    fence = Fence(Store(tmp_path / "store.sqlite"))
    go = threading.Barrier(2)

    def lose(key):
        go.wait()
        fence.lose([key])

    threads = [threading.Thread(target=lose, args=(k,)) for k in ("aaaa", "bbbb")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    lines = "".join(slow.parts).splitlines()
    assert sorted(lines) == [
        "raygap: lost the claim on trial aaaa: it was taken out of the store (--rerun); this driver was stopped "
        "past its lease. It drops the trial and writes nothing more of it",
        "raygap: lost the claim on trial bbbb: it was taken out of the store (--rerun); this driver was stopped "
        "past its lease. It drops the trial and writes nothing more of it"], slow.parts


def test_a_driver_stopped_past_its_lease_loses_its_trials_and_writes_nothing(tmp_path):
    """Driver A runs a grid of two trials; `--rerun all` meanwhile is refused (A holds them);
    A is stopped (SIGSTOP) past its lease: `status` shows its running trial stale, driver B takes
    both over, finishes one and is stopped mid-way through the other, with a checkpoint recorded;
    A is woken (SIGCONT): one line per trial saying it lost the claim, and not one column of the
    store changes, B's checkpoint stays; B is woken and both end, A waiting for B's trial."""
    from _proc import Raygap, raygap
    from test_resume_and_claims import write_grid

    from raygap.grid import load_grid

    results = tmp_path / "results"
    db = results / "store.sqlite"
    g = write_grid(tmp_path / "f.yaml", "f", [0, 1], epochs=5)
    keys = [t.key for t in load_grid(g).trials]
    env = {"RAYGAP_LEASE_S": str(LEASE), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    cmd = ("run", str(g), "--results", str(results), "--num-cpus", "1")
    O, T, CK, ST, HI = COLS.index("owner"), COLS.index("token"), COLS.index("checkpoint"), 0, COLS.index("history")

    def rows():
        try:
            return {k: row(db, k) for k in keys}
        except sqlite3.OperationalError:
            return {}

    t0 = time.monotonic()
    a = Raygap(*cmd, env=env, split_stderr=True)
    first = _wait("A's first epoch with a checkpoint", lambda: next(
        (k for k, r in rows().items() if r and r[ST] == "running" and r[CK] and len(json.loads(r[HI] or "[]")) >= 1),
        None), 240, a)
    a_owner = rows()[first][O]
    a_experiment = str(Path(rows()[first][CK]).parent.parent)     # A's Tune folder
    assert a_owner.split(":")[1] == str(a.pid)
    # (3) --rerun of trials a live driver holds: refused, one line, exit 2, nothing set aside
    code, out, err = raygap("run", str(g), "--results", str(results), "--rerun", "all", env=env, timeout=120)
    assert code == 2 and "Traceback" not in out + err and (out + err).count("\n") == 1, out + err
    assert "--rerun refused: 2 of the 2 trial(s) named are held by another live raygap run" in err, err
    assert all(r and r[O] == a_owner for r in rows().values())
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(*) FROM forgotten").fetchone()[0] == 0

    a.send(signal.SIGSTOP)                      # A: stopped, alive (a suspended VM, a stuck disk)
    stopped = time.monotonic()
    code, out, _ = raygap("status", str(g), "--results", str(results), env=env, timeout=120)
    assert code == 0 and "total: 0 done, 1 running, 0 stale" in out, out
    time.sleep(max(0.0, LEASE + 0.5 - (time.monotonic() - stopped)))
    code, out, _ = raygap("status", str(g), "--results", str(results), env=env, timeout=120)
    assert code == 0 and "total: 0 done, 0 running, 1 stale" in out, out        # its heartbeat stood still

    b = Raygap(*cmd, env=env, split_stderr=True)
    b.wait_for(r"waiting for 2 trial\(s\) that another raygap run is running", 120)
    waiting = time.monotonic()
    _wait("B taking both over", lambda: all(r and r[O] != a_owner for r in rows().values()), 120, a, b)
    took = time.monotonic()
    b_owner = rows()[keys[0]][O]
    assert b_owner.split(":")[1] == str(b.pid)
    # B: one trial done, the other running with a checkpoint of B's recorded
    _wait("B's first trial done and its second checkpointed", lambda: sorted(r[ST] for r in rows().values()) ==
          ["done", "running"] and all(r[CK] and not r[CK].startswith(a_experiment)
                                      for r in rows().values() if r[ST] == "running"), 300, a, b)
    b.send(signal.SIGSTOP)                      # (so that nothing changes while A wakes)
    snap = rows()
    done_key = next(k for k, r in snap.items() if r[ST] == "done")
    run_key = next(k for k, r in snap.items() if r[ST] == "running")
    b_ckpt = snap[run_key][CK]
    assert Path(b_ckpt).is_dir() and snap[done_key][O] == snap[run_key][O] == b_owner

    a.send(signal.SIGCONT)
    _wait("A's lost-claim lines", lambda: a.errors.count("raygap: lost the claim on trial") >= 2, 60, a, b)
    time.sleep(2.0)                             # A goes on: its trials stopped, nothing of them written
    lost = [ln for ln in a.errors.splitlines() if "lost the claim" in ln]
    assert sorted(k for k in keys for ln in lost if f"trial {k}" in ln) == sorted(keys), lost
    assert all(f"another driver holds it now ({b_owner}" in ln for ln in lost), lost
    assert rows() == snap                       # not one column of either row changed
    assert Path(b_ckpt).is_dir()                # B's checkpoint not deleted
    b.send(signal.SIGCONT)

    code_b, out_b = b.finish(300)
    code_a, out_a = a.finish(300)
    assert code_b == 0, out_b + b.errors
    assert code_a == 0, out_a + a.errors
    final = rows()
    assert all(r[ST] == "done" and r[O] == b_owner for r in final.values())
    keep = [COLS.index(c) for c in ("status", "metrics", "history", "error", "attempts", "finished",
                                    "wall_seconds", "info", "owner", "token")]
    assert [final[done_key][i] for i in keep] == [snap[done_key][i] for i in keep]   # B's done row, as B wrote it
    assert "finished by the other run" in out_a and "] done " not in out_a, out_a
    assert sum("] done " in ln for ln in out_b.splitlines()) == 2, out_b
    assert len(lost) == 2 and a.errors.count("lost the claim") == 2
    assert "Traceback" not in out_a + a.errors, a.errors[-4000:]     # the one line per trial is all A says
    print(f"B took over {took - waiting:.1f} s after it began to wait (lease {LEASE:.0f} s); whole test "
          f"{time.monotonic() - t0:.0f} s; A said: {lost[0]}")
