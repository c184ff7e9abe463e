"""Paper-scale safety with a real local Ray, through real ``raygap run`` processes: a driver
killed with SIGKILL mid-trial, then the same command -- the trial resumes at the checkpoint
the store recorded and ends with exactly the numbers of an uninterrupted run; two drivers
started together on one store -- every trial runs once."""
from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import psutil
import pytest
import yaml

from _proc import Raygap, tagged
from raygap.config import resolve
from raygap.store import Store
from raygap.trial import run_trial
from _tiny import avdigits

BASE = {"data": avdigits(visual_corrupt=0.3),
        "model": {"backbone": "small", "width": 4},
        "optim": {"lr": 0.1},
        "train": {"epochs": 7, "batch_size": 256, "device": "cpu", "threads": 1, "checkpoint_every": 1}}
VOLATILE = ("train_seconds", "epoch_seconds", "worker_pid", "worker_node", "device")


def write_grid(path: Path, name: str, seeds, epochs: int = 7) -> Path:
    path.write_text(yaml.safe_dump({"name": name, "base": {**BASE, "train": {**BASE["train"], "epochs": epochs}},
                                    "rows": {"Concat": {"method": {"name": "concat"}}}, "seeds": list(seeds),
                                    "metrics": ["acc"], "resources": {"cpu": 1, "gpu": 0}}))
    return path


def row(db: Path, key: str) -> dict:
    with sqlite3.connect(db) as c:
        c.row_factory = sqlite3.Row
        try:
            r = c.execute("SELECT * FROM trials WHERE key=?", (key,)).fetchone()
        except sqlite3.OperationalError:      # the run is creating the store's tables right now
            return {}
    return dict(r) if r else {}


def stable(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in VOLATILE} for h in history]


def test_a_driver_killed_mid_trial_resumes_at_its_checkpoint_with_identical_numbers(tmp_path):
    results = tmp_path / "results"
    g = write_grid(tmp_path / "k.yaml", "k", [0])
    from raygap.grid import load_grid

    spec = load_grid(g).trials[0]
    db = results / "store.sqlite"
    cmd = ("run", str(g), "--results", str(results), "--num-cpus", "2")
    run = Raygap(*cmd)
    deadline = time.time() + 300
    while time.time() < deadline:              # the trial at epoch >= 3, with a checkpoint recorded
        r = row(db, spec.key) if db.exists() else {}
        if len(json.loads(r.get("history") or "[]")) >= 4 and (r.get("checkpoint_epoch") or -1) >= 2:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the trial never reached epoch 3:\n" + run.output[-3000:])
    run.p.send_signal(signal.SIGKILL)          # no handler, no teardown: a lost head, an OOM kill
    run.p.wait(30)
    before = row(db, spec.key)
    last_reported = max(h["epoch"] for h in json.loads(before["history"]))
    ckpt_epoch, ckpt_path = before["checkpoint_epoch"], before["checkpoint"]
    assert before["status"] == "running" and Path(ckpt_path).is_dir()
    assert Store(db, readonly=True).status_of([spec.key]) == {spec.key: "interrupted"}   # its driver is gone
    time.sleep(2)                              # what Ray ends by itself once its driver is gone
    orphans = {p.pid for p in tagged(run.tag)}    # what the killed driver could not end (Ray's agents)

    again = Raygap(*cmd)
    code, out = again.finish(300)
    assert code == 0, out
    # the next run ended them (recorded by pid and start time in the results folder), nothing else
    still = {p.pid for p in tagged(run.tag)}
    try:
        assert not still, [psutil.Process(p).cmdline() for p in still]
    finally:
        for p in tagged(run.tag):
            p.kill()
    if orphans:
        assert "Ray process(es) a killed raygap run had left running" in out, out
    assert not list((results / ".raygap-procs").glob("*.json"))     # the second run's own ledger is gone too
    assert "1 resuming from a checkpoint" in out and f"(recorded: epoch {ckpt_epoch})" in out
    rec = Store(db).get(spec.key)
    # the newest checkpoint in storage: the recorded one, or a later one written after the store
    # last heard of it (the killed driver's worker lives on for a moment and uploads it itself)
    newest_epoch = rec["info"]["resumed_from_epoch"]
    assert rec["status"] == "done" and newest_epoch >= ckpt_epoch
    assert f"resumed after epoch {newest_epoch} from " in out
    assert [h["epoch"] for h in rec["history"]] == list(range(7))            # every epoch once
    recomputed = last_reported - newest_epoch
    assert recomputed <= 1, (last_reported, newest_epoch)                     # only epochs after the checkpoint
    assert rec["checkpoint"] is None and not Path(ckpt_path).exists()         # done: its checkpoints are removed
    assert not list((results / "ray").rglob("checkpoint_*")), list((results / "ray").rglob("checkpoint_*"))
    print(f"killed after epoch {last_reported} reported; recorded checkpoint epoch {ckpt_epoch}; "
          f"resumed after epoch {newest_epoch}; epochs computed twice: {max(recomputed, 0)}")
    # exactly the numbers of a run never interrupted (CPU, deterministic)
    whole = run_trial(resolve(spec.config.to_dict()), checkpoint_dir=tmp_path / "whole")
    assert rec["metrics"] == pytest.approx(whole.metrics)
    assert stable(rec["history"]) == stable(whole.history)


def test_two_drivers_on_one_store_run_every_trial_once(tmp_path):
    results = tmp_path / "results"
    a = write_grid(tmp_path / "a.yaml", "a", [0, 1, 2], epochs=2)     # seeds 1 and 2 are in both grids
    b = write_grid(tmp_path / "b.yaml", "b", [1, 2, 3], epochs=2)
    runs = [Raygap("run", str(g), "--results", str(results), "--num-cpus", "1") for g in (a, b)]
    outs = [r.finish(600) for r in runs]
    for code, out in outs:
        assert code == 0, out
    from raygap.grid import load_grid

    keys = {t.seed: t.key for g in (a, b) for t in load_grid(g).trials}
    store = Store(results / "store.sqlite")
    recs = store.records(keys.values())
    assert len(recs) == 4 and all(r["status"] == "done" and r["attempts"] == 1 for r in recs.values())
    # each trial was run by exactly one of the two drivers, and only it says "done"
    done_lines = [[ln for ln in out.splitlines() if "] done " in ln] for _, out in outs]
    ran = [{k for k in keys.values() if any(f"({k})" in ln for ln in lines)} for lines in done_lines]
    assert ran[0].isdisjoint(ran[1]) and ran[0] | ran[1] == set(keys.values()), ran
    for (code, out), grid in zip(outs, ("a", "b"), strict=True):
        assert "3 distinct trial(s)" in out
        table = json.loads((results / grid / "noprofile" / "table.json").read_text())
        assert table["done"] == 3                                            # complete tables for both
    # two Tune experiments, two folders
    assert len([p for p in (results / "ray").iterdir() if p.is_dir()]) >= 2
