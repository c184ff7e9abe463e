"""The store outlives the head (raygap.store.mirror): the store and tables copied to the run's
storage, restored into an empty results folder, and merged by trial key with a store that holds
other done trials. Hand-built rows here; real ``raygap run`` / ``raygap pull`` processes in
tests/test_mirror_runs.py."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from raygap.store import Store
from raygap.store.mirror import Mirror, merge_stores

COLS = "key, status, config, metrics, history, attempts, created, started, finished, checkpoint, checkpoint_epoch"


def put(path: Path, key: str, status: str, finished: float | None = None, acc: float | None = None,
        checkpoint: str | None = None) -> None:
    """One trial row, written by hand (the times chosen here, not the clock's)."""
    Store(path).close()                                  # the schema
    with sqlite3.connect(path) as db:
        db.execute(f"INSERT OR REPLACE INTO trials ({COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                   (key, status, "{}", json.dumps({"acc": acc}) if acc is not None else None,
                    json.dumps([{"epoch": 0, "acc": acc}]) if acc is not None else None, 1, 1.0, 2.0, finished,
                    checkpoint, 3 if checkpoint else None))


def rows(path: Path) -> dict[str, tuple]:
    with sqlite3.connect(path) as db:
        return {k: (st, json.loads(m)["acc"] if m else None, f, c)
                for k, st, m, f, c in db.execute("SELECT key, status, metrics, finished, checkpoint FROM trials")}


def test_merge_keeps_every_done_row_of_both_sides_and_the_earlier_of_a_key_done_on_both(tmp_path):
    here, there = tmp_path / "here.sqlite", tmp_path / "there.sqlite"
    put(here, "only-here", "done", 100.0, 0.5)
    put(here, "both-here-earlier", "done", 110.0, 0.61)
    put(here, "both-there-earlier", "done", 300.0, 0.7)
    put(here, "same-copy", "done", 120.0, 0.8)
    put(here, "pending-here", "pending")
    put(here, "failed-here", "failed", 130.0)
    put(here, "neither-done", "interrupted", 131.0, checkpoint="/ckpt/here")
    put(there, "only-there", "done", 140.0, 0.55)
    put(there, "both-here-earlier", "done", 210.0, 0.62)
    put(there, "both-there-earlier", "done", 200.0, 0.71)
    put(there, "same-copy", "done", 120.0, 0.8)
    put(there, "pending-here", "done", 150.0, 0.4)
    put(there, "failed-here", "done", 160.0, 0.45)
    put(there, "neither-done", "interrupted", 132.0, checkpoint="/ckpt/there")
    put(there, "interrupted-there", "interrupted", 170.0, checkpoint="s3://b/x/checkpoint_000003")

    store = Store(here)
    merged = merge_stores(store._db, there)
    store.close()
    got = rows(here)
    assert got == {
        "only-here": ("done", 0.5, 100.0, None),
        "only-there": ("done", 0.55, 140.0, None),
        "both-here-earlier": ("done", 0.61, 110.0, None),     # finished first here: kept
        "both-there-earlier": ("done", 0.71, 200.0, None),    # finished first there: taken
        "same-copy": ("done", 0.8, 120.0, None),
        "pending-here": ("done", 0.4, 150.0, None),           # a done row beats any other status
        "failed-here": ("done", 0.45, 160.0, None),
        "neither-done": ("interrupted", None, 131.0, "/ckpt/here"),      # not done on either: ours kept
        "interrupted-there": ("interrupted", None, 170.0, "s3://b/x/checkpoint_000003"),   # unknown here: taken
    }
    assert sorted(merged.added) == ["failed-here", "only-there", "pending-here"]
    assert sorted(merged.earlier) == ["both-here-earlier", "both-there-earlier"]    # not the identical copy
    assert merged.earlier_there == ["both-there-earlier"]
    assert merged.rows == 1
    line = merged.line("here.sqlite", "s3://b/results/store.sqlite")
    assert line == ("raygap: 2 trial(s) done both in here.sqlite and in s3://b/results/store.sqlite with different "
                    "results: kept the earlier of each (1 from s3://b/results/store.sqlite): both-here-ea, both-there-e")
    assert "\n" not in line


def test_merge_keeps_each_search_from_the_side_that_has_seen_more_samples(tmp_path):
    here, there = tmp_path / "here.sqlite", tmp_path / "there.sqlite"
    with Store(here) as a, Store(there) as b:
        a.save_search("only-here", "g/v", "R", {}, {}, [{"index": 0}])
        b.save_search("only-there", "g/v", "R", {}, {}, [{"index": 0}], {"optim.lr": 0.1}, 0.7)
        a.save_search("more-here", "g/v", "R", {}, {}, [{"index": 0}, {"index": 1}], {"optim.lr": 0.2}, 0.6)
        b.save_search("more-here", "g/v", "R", {}, {}, [{"index": 0}], {"optim.lr": 0.3}, 0.9)
        a.save_search("more-there", "g/v", "R", {}, {}, [{"index": 0}], {"optim.lr": 0.4}, 0.5)
        b.save_search("more-there", "g/v", "R", {}, {}, [{"index": 0}, {"index": 1}, {"index": 2}],
                      {"optim.lr": 0.5}, 0.8)
    store = Store(here)
    merge_stores(store._db, there)
    got = store.searches(["only-here", "only-there", "more-here", "more-there"])
    store.close()
    assert {sid: (len(r["samples"]), r["winner"]) for sid, r in got.items()} == {
        "only-here": (1, None), "only-there": (1, {"optim.lr": 0.1}),
        "more-here": (2, {"optim.lr": 0.2}), "more-there": (3, {"optim.lr": 0.5})}


def test_merge_does_not_bring_back_a_trial_rerun_set_aside_after_it_finished(tmp_path):
    here, there = tmp_path / "here.sqlite", tmp_path / "there.sqlite"
    put(here, "k", "done", 100.0, 0.5)
    put(there, "k", "done", 100.0, 0.5)
    put(there, "old", "done", 50.0, 0.3)
    store = Store(here)
    store.forget(["k"])                                    # --rerun here, after the mirror's copy finished
    with sqlite3.connect(here) as db:                      # ... and "old" set aside before its other result
        db.execute("INSERT INTO forgotten VALUES ('old', 40.0, '{}')")
    merged = merge_stores(store._db, there)
    store.close()
    assert "k" not in rows(here)
    assert rows(here)["old"][0] == "done" and merged.added == ["old"]


def test_a_pushed_store_restores_into_an_empty_results_folder_and_merges_into_a_full_one(tmp_path):
    results, storage = tmp_path / "results", tmp_path / "bucket"
    put(results / "store.sqlite", "a", "done", 10.0, 0.9)
    store = Store(results / "store.sqlite")                # held open, in WAL mode, as a driver holds it
    store.save_done("b", {"acc": 0.25}, [], 1.0)           # (in the -wal file, not checkpointed yet)
    said: list[str] = []
    m = Mirror(str(storage), results, say=said.append)
    assert m.push_store() is True
    table = results / "g" / "demo" / "table.csv"
    table.parent.mkdir(parents=True)
    table.write_text("row,acc\n")
    assert m.push_tables([table, results / "g" / "demo" / "figures"]) is True
    assert sorted(p.relative_to(storage).as_posix() for p in storage.rglob("*") if p.is_file()) == \
        ["results/g/demo/table.csv", "results/store.sqlite"]          # no temporary name left behind
    store.close()
    assert rows(storage / "results" / "store.sqlite")["b"][0] == "done"     # what was in the -wal file too
    assert not list((storage / "results").glob("store.sqlite-*"))         # a plain file: a reader leaves nothing

    lost = tmp_path / "new-head"
    line = Mirror(str(storage), lost, say=said.append).restore()
    assert line == f"restored the store from {storage}/results/store.sqlite: 2 done trial(s) (this results " \
                   "folder had none)"
    assert {k: v[:2] for k, v in rows(lost / "store.sqlite").items()} == {"a": ("done", 0.9), "b": ("done", 0.25)}

    laptop = tmp_path / "laptop"
    put(laptop / "store.sqlite", "c", "done", 5.0, 0.1)
    said_pull, tables = Mirror(str(storage), laptop, say=said.append).pull()
    assert said_pull.startswith(f"merged the mirrored store {storage}/results/store.sqlite into")
    assert said_pull.endswith(": 2 done trial(s) taken from it, 0 other row(s)")
    assert set(rows(laptop / "store.sqlite")) == {"a", "b", "c"}
    assert tables == [laptop / "g" / "demo" / "table.csv"] and tables[0].read_text() == "row,acc\n"
    assert said == []                                      # no failure, no key done on both


def test_a_storage_that_refuses_is_said_once_and_the_run_goes_on(tmp_path):
    results = tmp_path / "results"
    put(results / "store.sqlite", "a", "done", 10.0, 0.9)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    said: list[str] = []
    m = Mirror(str(blocker), results, say=said.append)
    assert m.push_store() is False and m.push_store() is False
    assert len(said) == 1 and said[0].startswith(f"raygap: could not mirror the store to {blocker}/results/store.sqlite")
