"""The interrupt matrix, through real ``raygap run`` subprocesses: SIGINT and SIGTERM
mid-grid, inside ray.init, during Ray's teardown and during the table export, one grid
taken through the phases in turn. Each step checks the exit code, the store, the tables
and that no process is left behind (every process raygap starts inherits a unique tag in
its environment, so leftovers are found even after they are re-parented); the first also
lists the listening sockets of the whole process tree while trials run."""
from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import json
import signal
import sqlite3
import time
from pathlib import Path

import pytest
import yaml

from _proc import Raygap, leftovers, listening
from _tiny import avdigits

SIGS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]
BASE = {"data": avdigits(visual_corrupt=0.3),
        "model": {"backbone": "small", "width": 4},
        "optim": {"lr": 0.1},
        "train": {"epochs": 3, "batch_size": 256, "device": "cpu", "threads": 1}}


def grid(tmp_path: Path, rows: dict, epochs: int = 3, seeds=(0,)) -> Path:
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump({"name": "g", "base": {**BASE, "train": {**BASE["train"], "epochs": epochs}},
                                 "rows": rows, "seeds": list(seeds), "metrics": ["acc"],
                                 "resources": {"cpu": 1, "gpu": 0}}))
    return p


def loopback(ip: str) -> bool:
    a = ipaddress.ip_address(ip)
    return (getattr(a, "ipv4_mapped", None) or a).is_loopback


def statuses(results: Path) -> list[str]:
    with sqlite3.connect(results / "store.sqlite") as c:
        return sorted(s for (s,) in c.execute("SELECT status FROM trials"))


def manifest(results: Path) -> dict:
    return json.loads((results / "g" / "noprofile" / "table.json").read_text())


ONE = {"Concat": {"method": {"name": "concat"}}}


def finished(results: Path) -> dict:
    with sqlite3.connect(results / "store.sqlite") as c:
        return dict(c.execute("SELECT key, finished FROM trials WHERE status='done'").fetchall())


EPOCHS = 6


def mid_trial(results: Path, timeout: float = 120) -> None:
    """Until a trial in the store is running with at least one epoch reported and not its last."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with sqlite3.connect(results / "store.sqlite") as c:
            rows = c.execute("SELECT status, history FROM trials").fetchall()
        if any(st == "running" and 1 <= len(json.loads(h or "[]")) < EPOCHS for st, h in rows):
            return
        time.sleep(0.05)
    raise AssertionError(f"no trial was mid-way within {timeout} s: {rows}")


@pytest.mark.parametrize("sig", SIGS)
def test_the_interrupt_matrix(sig, tmp_path):
    """One grid of 3 trials (2 at a time), interrupted by ``sig`` in each phase in turn:
    mid-grid, inside Ray's start-up, in Ray's teardown and in the table export; then twice."""
    results = tmp_path / "results"
    g = grid(tmp_path, ONE, epochs=EPOCHS, seeds=[0, 1, 2])
    cmd = ("run", str(g), "--results", str(results), "--num-cpus", "2")

    # 1. mid-grid: what finished is kept, the trials it had started are marked interrupted
    run = Raygap(*cmd)
    run.wait_for(r"\[2/3\] done")          # (the first two, 2 at a time, end together) ...
    mid_trial(results)                       # ... and the third is mid-way
    socks = listening(run.tree())            # while it runs, nothing of its tree listens beyond this machine
    assert socks and all(loopback(ip) for _, ip, _ in socks), socks
    run.send(sig)
    code, out = run.finish(180)
    assert code == 130, out
    assert "Traceback" not in out and "trial(s) not finished" in out and "marked interrupted in the store" in out, out
    assert "Tuner.restore" not in out                       # Tune's advice is not raygap's: the same command is
    first, st = finished(results), statuses(results)
    assert 1 <= st.count("done") < 3 and "running" not in st and "interrupted" in st, st
    assert manifest(results)["done"] == st.count("done")     # the tables hold what finished
    assert leftovers(run.tag) == []

    # 2. inside ray.init: start-up stops, the half-started Ray is gone, the store is untouched
    run = Raygap(*cmd)
    run.wait_for("starting a local Ray instance")
    time.sleep(1.0)                                           # ray.init takes several seconds: we are inside it
    run.send(sig)
    code, out = run.finish(120)
    assert code == 130, out
    assert "launching" not in out, "the signal came after start-up: this step did not test start-up"
    assert f"raygap: interrupted ({sig.name}): {3 - len(first)} trial(s) not finished" in out
    assert "Traceback" not in out and "terminate called" not in out
    assert statuses(results) == st
    assert leftovers(run.tag) == []

    # 3. in Ray's teardown, then in the export: each phase finishes first, the run completes
    run = Raygap(*cmd, env={"RAYGAP_DEBUG_PAUSE": "teardown:3,export:3"})
    run.wait_for("phase teardown")
    run.send(sig)
    run.wait_for("phase export")
    run.send(sig)
    code, out = run.finish(300)
    assert code == 0, out                                     # every trial had finished: the run is complete
    assert f"{sig.name} received: finishing teardown first" in out
    assert f"{sig.name} received: finishing export first" in out
    assert f"{sig.name} received after every trial had finished" in out and "Traceback" not in out
    assert f"3 distinct trial(s): {len(first)} reused from the store, {3 - len(first)} run now" in out
    after = finished(results)
    assert len(after) == 3 and all(after[k] == first[k] for k in first)   # finished ones never ran again
    assert statuses(results) == ["done"] * 3 and manifest(results)["done"] == 3
    assert leftovers(run.tag) == []

    # 4. a second signal stops at once: exit 130, and the tables on disk stay whole
    before = (results / "g" / "noprofile" / "table.md").read_text()
    run = Raygap(*cmd, env={"RAYGAP_DEBUG_PAUSE": "export:30"})
    run.wait_for("phase export")
    run.send(sig)
    run.wait_for("finishing export first")
    run.send(sig)
    code, out = run.finish(60)
    assert code == 130 and f"raygap: interrupted ({sig.name})" in out, out
    assert (results / "g" / "noprofile" / "table.md").read_text() == before
    assert not list((results / "g" / "noprofile").glob(".*.tmp"))


def test_a_killed_drivers_leftovers_are_ended_by_the_next_run_and_nothing_else(tmp_path):
    """The ledger: pid and start time of every process a driver started; the next run ends
    those of a gone driver. A process merely reusing a recorded pid, a process that is not one
    of Ray's, and any process named in a ledger folder others can write, are never touched."""
    import json
    import socket
    import stat

    import psutil

    from raygap import interrupts

    # a Ray worker sets its title to ray::...: `exec -a` gives this child the same command line
    child = subprocess.Popen(["bash", "-c", f"exec -a ray::IDLE {sys.executable} -c 'import time; time.sleep(120)'"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])     # not Ray's
    try:
        deadline = time.time() + 10
        while psutil.Process(child.pid).cmdline()[0] != "ray::IDLE" and time.time() < deadline:
            time.sleep(0.05)
        assert interrupts.record_children(tmp_path, "me") >= 2
        folder = tmp_path / interrupts.LEDGER_DIR
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        ledger, = folder.glob("*.json")
        doc = json.loads(ledger.read_text())
        assert doc["owner"] == "me" and {child.pid, other.pid} <= {pid for pid, _ in doc["procs"]}
        # while its driver lives (or lives on another machine), nothing is ended
        assert interrupts.end_leftovers(tmp_path, lambda o: True) == [] and child.poll() is None
        assert interrupts.end_leftovers(tmp_path, lambda o: None) == [] and child.poll() is None
        # another process at a recorded pid (its start time differs) is left alone
        ledger.write_text(json.dumps({"owner": "me", "procs": [[child.pid, psutil.Process(child.pid).create_time() - 50]]}))
        assert interrupts.end_leftovers(tmp_path, lambda o: False) == [] and child.poll() is None
        assert not ledger.exists()                    # a gone driver's ledger is done with either way
        # a ledger folder others may write is not acted on at all (anyone could have written it)
        interrupts.record_children(tmp_path, "me")
        folder.chmod(0o777)
        assert interrupts.end_leftovers(tmp_path, lambda o: False) == [] and child.poll() is None
        # ... and what was planted there while it was open is gone once a run closes it again
        planted = folder / f"{socket.gethostname()}-2.json"
        planted.write_text(json.dumps({"owner": "x", "procs": [[child.pid, psutil.Process(child.pid).create_time()]]}))
        interrupts.record_children(tmp_path, "me")
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and not planted.exists()
        interrupts.drop_ledger(tmp_path)
        assert interrupts.end_leftovers(tmp_path, lambda o: False) == [] and child.poll() is None
        # a ledger file others may write is not acted on either
        loose = folder / f"{socket.gethostname()}-3.json"
        loose.write_text(json.dumps({"owner": "x", "procs": [[child.pid, psutil.Process(child.pid).create_time()]]}))
        loose.chmod(0o666)
        assert interrupts.end_leftovers(tmp_path, lambda o: False) == [] and child.poll() is None
        loose.unlink()
        interrupts.record_children(tmp_path, "me")      # this driver's own ledger again
        # a hand-written ledger naming a process that is not Ray's, with its true start time: it survives
        hand = folder / f"{socket.gethostname()}-1.json"
        hand.write_text(json.dumps({"owner": "x", "procs": [[other.pid, psutil.Process(other.pid).create_time()]]}))
        ended = interrupts.end_leftovers(tmp_path, lambda o: False)
        assert ended == [child.pid] and other.poll() is None          # the Ray process goes, the other stays
        assert child.wait(10) is not None
        # another machine's ledger in a shared results folder is not this machine's to act on
        foreign = folder / f"not-{socket.gethostname()}-1.json"
        foreign.write_text(json.dumps({"owner": "x", "procs": [[os.getpid(), 0]]}))
        assert interrupts.end_leftovers(tmp_path, lambda o: False) == [] and foreign.exists()
        interrupts.drop_ledger(tmp_path)
        assert not (folder / f"{socket.gethostname()}-{os.getpid()}.json").exists()
    finally:
        for p in (child, other):
            p.kill()
            p.wait()
