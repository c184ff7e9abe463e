"""A grid row's ``search:`` block (issue 26, "hyperparameter search on validation"), through real
``raygap`` processes on the embedded Ray and a real SQLite store: bad blocks are one line (exit 2)
naming the file, the row and the key; a tiny search runs as many samples as its budget, each an
ordinary trial in the store, ASHA's stopped samples are ``stopped`` with their epochs and are no
table cell, a larger budget later continues the same search (the finished samples told back, not
run again), and the row's table cell is the winner trained on the table seed; a store of schema 5
is migrated to 6."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from _proc import raygap
from _tiny import avdigits

BASE = {"data": avdigits(visual_corrupt=0.3),
        "model": {"backbone": "small", "width": 4},
        "optim": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 3, "batch_size": 256, "device": "cpu", "threads": 1, "checkpoint_every": 1}}
SEARCH = {"space": {"optim.lr": {"loguniform": [0.003, 0.3]}}, "samples": 2, "searcher": "optuna",
          "scheduler": {"name": "asha", "grace": 1, "reduction": 2}, "seeds": [100]}


def write_grid(path: Path, search: dict | None = None, seeds=(0,), **row) -> Path:
    tuned = {"method": {"name": "concat"}, **row, "search": search if search is not None else SEARCH}
    path.write_text(yaml.safe_dump({"name": "tiny", "base": BASE,
                                    "rows": {"Concat": {"method": {"name": "concat"}}, "Tuned": tuned},
                                    "seeds": list(seeds), "metrics": ["acc"], "reference": "Concat",
                                    "resources": {"cpu": 1, "gpu": 0}}, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- bad blocks
BAD = [
    ({**SEARCH, "space": {"optim.lr": {"loguniformm": [0.01, 0.1]}}},
     "rows.Tuned.search.space.optim.lr: unknown distribution 'loguniformm' (nearest valid choice: loguniform)"),
    ({**SEARCH, "space": {"optim.lrr": {"uniform": [0.01, 0.1]}}},
     "rows.Tuned.search.space.optim.lrr"),
    ({**SEARCH, "sampels": 3}, "rows.Tuned.search.sampels: unknown key (nearest valid key: samples)"),
    ({**SEARCH, "searcher": "optuan"}, "rows.Tuned.search.searcher: unknown searcher 'optuan' (nearest valid choice: optuna)"),
    ({**SEARCH, "scheduler": "ashaa"}, "rows.Tuned.search.scheduler: unknown scheduler 'ashaa' (nearest valid choice: asha)"),
    ({**SEARCH, "space": {"optim.lr": {"loguniform": [0.0, 0.1]}}}, "loguniform needs lo > 0, got 0.0"),
    ({**SEARCH, "space": {"optim.lr": {"uniform": [0.3, 0.1]}}}, "uniform needs [lo, hi] with lo < hi"),
    ({**SEARCH, "samples": 0}, "rows.Tuned.search.samples: expected an integer >= 1, got 0"),
    ({**SEARCH, "metric": "test_acc"}, "never the test one"),
    ({**SEARCH, "seeds": [0, 100]},
     "rows.Tuned.search.seeds: search seeds [0, 100] share [0] with the table seeds [0]: the winner would be "
     "reported on the seeds it was picked on (the winner's curse) (e.g. seeds: [101])"),
]


@pytest.mark.parametrize("search,expected", BAD, ids=[b[1][:40] for b in BAD])
def test_a_bad_search_block_is_one_line_naming_file_row_and_key(tmp_path, search, expected):
    g = write_grid(tmp_path / "g.yaml", search)
    code, out, err = raygap("run", g, "--dry-run", "--results", tmp_path / "r", timeout=120)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, (code, out, err)
    assert str(g) in lines[0] and expected in lines[0], lines[0]
    assert "Traceback" not in err


def test_a_search_key_that_is_no_trial_key_names_the_nearest(tmp_path):
    g = write_grid(tmp_path / "g.yaml", {**SEARCH, "space": {"method.alpha": {"uniform": [0.1, 1.0]}}})
    code, _, err = raygap("run", g, "--dry-run", "--results", tmp_path / "r", timeout=120)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "rows.Tuned.search.space.method.alpha" in err and "concat" in err, err   # concat has no alpha


def test_the_dry_run_shows_the_search_cost_in_epochs(tmp_path):
    g = write_grid(tmp_path / "g.yaml", {**SEARCH, "samples": 5, "seeds": [100, 101]}, seeds=(0, 1, 2))
    code, out, err = raygap("run", g, "--dry-run", "--results", tmp_path / "r", timeout=120)
    assert code == 0, err
    # 5 samples x 2 search seeds x 3 epochs = 30; the winner on 3 table seeds x 3 epochs = 9
    assert ("search 'Tuned': 1 column(s) x 5 samples x 2 seed(s) = 30 epochs at most (optuna, scheduler asha) + "
            "the winner on the table seeds 9 epochs; the fixed row it replaces: 9 epochs (4.3x)") in out, out
    assert not [ln for ln in out.splitlines() if ln.startswith("  Tuned")], out   # no cells before a winner


# ----------------------------------------------------------------------------- store schema
def test_a_store_of_schema_5_is_migrated_to_6_with_its_rows(tmp_path):
    from raygap.store import SCHEMA_VERSION, Store

    db = tmp_path / "store.sqlite"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE trials (key TEXT PRIMARY KEY, status TEXT NOT NULL CHECK (status IN ('pending', "
                  "'running', 'done', 'failed', 'interrupted')), config TEXT, metrics TEXT, history TEXT, error TEXT, "
                  "attempts INTEGER NOT NULL DEFAULT 0, created REAL, started REAL, finished REAL, wall_seconds REAL, "
                  "info TEXT, owner TEXT, heartbeat REAL, lease_until REAL, checkpoint TEXT, checkpoint_epoch INTEGER, "
                  "token INTEGER NOT NULL DEFAULT 0, beats INTEGER NOT NULL DEFAULT 0, lease_s REAL)")
        c.execute("INSERT INTO trials (key, status, metrics, attempts) VALUES ('d', 'done', '{\"acc\": 0.5}', 1)")
        c.execute("PRAGMA user_version=5")
    s = Store(db)
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
    assert s.get("d")["status"] == "done" and s.get("d")["metrics"] == {"acc": 0.5}
    s.mark_running("r", {"seed": 0})
    assert s.mark_stopped("r") and s.get("r")["status"] == "stopped"
    assert not s.mark_stopped("d") and s.get("d")["status"] == "done"       # only a running trial
    assert not s.save_failed("r", "ended") and s.get("r")["status"] == "stopped"   # a stop is no failure
    assert s.search("x") is None
    s.save_search("x", "g/v", "Row", {"data.name": "ave"}, {"samples": 2}, [{"index": 0}], {"optim.lr": 0.1}, 0.5)
    assert s.winners(["x", "y"]) == {"x": {"optim.lr": 0.1}}
    assert s.search("x")["column"] == {"data.name": "ave"} and s.search("x")["samples"] == [{"index": 0}]


# ----------------------------------------------------------------------------- a tiny search
def trials(db: Path) -> dict[str, dict]:
    with sqlite3.connect(db) as c:
        c.row_factory = sqlite3.Row
        return {r["key"]: dict(r) for r in c.execute("SELECT key, status, attempts, history, config FROM trials")}


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """Budget 2, then the same search with budget 4 (profiles `two` and `four` beside the grid),
    one CPU so the samples train one after the other (ASHA's decisions then depend on the seeded
    sampler and the deterministic CPU training only)."""
    tmp = tmp_path_factory.mktemp("search")
    g = write_grid(tmp / "g.yaml")
    (tmp / "profiles").mkdir()
    for name, n in (("two", 2), ("four", 4)):
        (tmp / "profiles" / f"{name}.yaml").write_text(yaml.safe_dump({"search": {"samples": n, "batch": 4}}))
    res = tmp / "results"
    runs = []
    for prof in ("two", "four"):
        code, out, err = raygap("run", g, "--profile", prof, "--results", res, "--num-cpus", "1", timeout=500)
        assert code == 0, out + err
        runs.append((out, err, trials(res / "store.sqlite")))
    return g, res, runs


def test_the_samples_run_are_the_budget_each_an_ordinary_trial(searched):
    _, res, [(out, _, recs), _] = searched
    doc = json.loads((res / "tiny" / "two" / "search.json").read_text())
    (s,) = doc["searches"]
    assert s["budget"] == 2 and len(s["samples"]) == 2 and s["metric"] == "val_acc" and s["seeds"] == [100]
    assert s["space"] == {"optim.lr": {"loguniform": [0.003, 0.3]}} and s["searcher"] == "optuna"
    assert "tiny/two: searches: 2 sample(s) run in 1 round(s)" in out, out
    for x in s["samples"]:
        (key,) = x["keys"]
        rec = recs[key]
        cfg = json.loads(rec["config"])
        assert cfg["seed"] == 100 and cfg["optim"]["lr"] == x["params"]["optim.lr"]
        assert 0.003 <= x["params"]["optim.lr"] <= 0.3
        assert rec["status"] == x["status"] and rec["attempts"] == 1
        if x["status"] == "done":       # the value: the stored trial's validation accuracy (never test)
            hist = json.loads(rec["history"])
            assert x["value"] == max(h["val_acc"] for h in hist) and len(hist) == 3


def test_asha_stopped_samples_are_stopped_with_their_epochs_and_no_table_cell(searched):
    _, res, [_, (out, _, recs)] = searched
    doc = json.loads((res / "tiny" / "four" / "search.json").read_text())
    (s,) = doc["searches"]
    stopped = [x for x in s["samples"] if x["status"] == "stopped"]
    # deterministic here (seeded TPE, deterministic CPU training, one trial at a time): ASHA (grace 1,
    # reduction 2) stops at least one of the four samples after epoch 1
    assert stopped, s["samples"]
    for x in stopped:
        (key,) = x["keys"]
        assert recs[key]["status"] == "stopped" and len(json.loads(recs[key]["history"])) == x["epochs"][0] < 3
    with sqlite3.connect(res / "store.sqlite") as c:
        cells = {k for (k,) in c.execute("SELECT key FROM memberships WHERE grid='tiny/four'")}
        searched = {k for (k,) in c.execute("SELECT key FROM memberships WHERE grid='tiny/four/search'")}
    assert len(cells) == 2 and not {x["keys"][0] for x in s["samples"]} & cells
    assert {x["keys"][0] for x in s["samples"][2:]} <= searched
    assert "tuned on validation: 4 samples of {optim.lr: loguniform\\[0.003, 0.3\\]}" in \
        (res / "tiny" / "four" / "table.md").read_text()


def test_a_larger_budget_continues_the_search_without_rerunning_its_samples(searched):
    _, res, [(_, _, first), (out, _, recs)] = searched
    earlier = json.loads((res / "tiny" / "two" / "search.json").read_text())["searches"][0]["samples"]
    now = json.loads((res / "tiny" / "four" / "search.json").read_text())["searches"][0]
    assert "2 of 4 samples finished earlier, told back to the searcher; 2 to run" in out, out
    assert "tiny/four: searches: 2 sample(s) run in 1 round(s)" in out, out
    assert now["samples"][:2] == earlier and len(now["samples"]) == 4
    for x in earlier:                   # not trained again
        assert recs[x["keys"][0]]["attempts"] == 1 and recs[x["keys"][0]] == first[x["keys"][0]]
    assert len({x["keys"][0] for x in now["samples"]}) == 4


def test_the_winner_is_trained_on_the_table_seed(searched):
    g, res, [_, (out, _, recs)] = searched
    s = json.loads((res / "tiny" / "four" / "search.json").read_text())["searches"][0]
    done = [x for x in s["samples"] if x["status"] == "done"]
    best = max(done, key=lambda x: x["value"])
    assert s["winner"] == {"params": best["params"], "value": best["value"]}
    with sqlite3.connect(res / "store.sqlite") as c:
        cells = c.execute("SELECT key, seed FROM memberships WHERE grid='tiny/four' AND label='Tuned'").fetchall()
    (key, seed), = cells
    cfg = json.loads(recs[key]["config"])
    assert seed == 0 and cfg["seed"] == 0 and cfg["optim"]["lr"] == best["params"]["optim.lr"]
    assert recs[key]["status"] == "done" and key not in {x["keys"][0] for x in s["samples"]}
    md = (res / "tiny" / "four" / "table.md").read_text()
    assert "| Tuned \\* |" in md and "(n=1)" in md.split("| Tuned \\* |")[1].splitlines()[0], md


def test_raygap_status_shows_the_real_search_and_its_winners_cell(searched):
    # the status of the search the runner wrote: its samples as search.json holds them, its winner, and
    # the winner's table trial (done) as the row's ordinary cell
    g, res, _ = searched
    s = json.loads((res / "tiny" / "four" / "search.json").read_text())["searches"][0]
    stopped = sum(1 for x in s["samples"] if x["status"] == "stopped")
    code, out, err = raygap("status", g, "--profile", "four", "--results", res, timeout=120)
    assert code == 0, out + err
    lines = out.splitlines()
    assert (f"  search Tuned | -: 4/4 samples finished ({stopped} stopped early by ASHA, 0 failed): winner chosen: "
            f"optim.lr={s['winner']['params']['optim.lr']:.3g} (val_acc {s['winner']['value']:.3f}), trained on "
            "the table seeds [0] as the row's cells") in lines, out
    assert "  Tuned   -          1       0     0      0           0       0" in lines, out


def test_results_in_python_hold_the_tuned_row_as_the_table_does(searched):
    # raygap.results() reads the searched row's cells from the store's winner, as the export does
    import csv

    import raygap

    g, res, [_, (_, _, recs)] = searched
    frame = raygap.results(g, profile="four", results_dir=res).trials
    exported = list(csv.DictReader((res / "tiny" / "four" / "trials.csv").open()))
    tuned = frame[frame["label"] == "Tuned"]
    assert len(tuned) == 1 and sorted(tuned["hash"]) == sorted(r["hash"] for r in exported if r["label"] == "Tuned")
    assert sorted(frame["hash"]) == sorted(r["hash"] for r in exported)


def test_a_search_interrupted_by_ctrl_c_resumes_without_rerunning_its_finished_samples(tmp_path):
    """SIGINT once the first sample is done (one sample a round, one CPU): exit 130; the same
    command again tells the finished samples back and runs only the rest of the budget."""
    import signal

    from _proc import Raygap

    g = write_grid(tmp_path / "g.yaml", {**SEARCH, "samples": 3, "batch": 1, "scheduler": "none"})
    res = tmp_path / "results"
    run = Raygap("run", g, "--results", res, "--num-cpus", "1")
    run.wait_for(r"\] done ", timeout=400)
    run.send(signal.SIGINT)
    code, out = run.finish(300)
    assert code == 130, out
    before = trials(res / "store.sqlite")
    finished = {k for k, r in before.items() if r["status"] == "done" and json.loads(r["config"])["seed"] == 100}
    assert 1 <= len(finished) < 3, before
    code, out, err = raygap("run", g, "--results", res, "--num-cpus", "1", timeout=500)
    assert code == 0, out + err
    assert f"{len(finished)} of 3 samples finished earlier, told back to the searcher; {3 - len(finished)} to run" \
        in out, out
    after = trials(res / "store.sqlite")
    assert all(after[k] == before[k] for k in finished)              # not trained again
    s = json.loads((res / "tiny" / "noprofile" / "search.json").read_text())["searches"][0]
    assert len(s["samples"]) == 3 and all(x["status"] == "done" for x in s["samples"])
    assert {x["keys"][0] for x in s["samples"]} >= finished
