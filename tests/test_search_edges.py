"""Edges of a grid row's ``search:`` block (issue 26), through real ``raygap run`` processes on the
embedded Ray and a real SQLite store: two grids with searched rows in ONE run (each search its own
budget, samples and winner, its own search.json and tuned cell; an identical searched row in both
grids is one search, deduplicated like trials), and a searched column where every sample fails
(counted against the budget, no winner, no cell, exit 1, one line saying so; the other column's
search and cells are unaffected)."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import yaml

from _proc import raygap
from _tiny import avdigits

BASE = {"data": avdigits(visual_corrupt=0.3),
        "model": {"backbone": "small", "width": 4},
        "optim": {"lr": 0.1},
        "train": {"epochs": 1, "batch_size": 256, "device": "cpu", "threads": 1, "checkpoint_every": 1}}


def search(lo, hi, samples, seeds) -> dict:
    return {"space": {"optim.lr": {"loguniform": [lo, hi]}}, "samples": samples, "searcher": "random",
            "scheduler": "none", "seeds": list(seeds)}


def write(path: Path, name: str, rows: dict, **extra) -> Path:
    path.write_text(yaml.safe_dump({"name": name, **extra, "base": BASE,
                                    "rows": {"Concat": {"method": {"name": "concat"}}, **rows},
                                    "seeds": [0], "metrics": ["acc"], "reference": "Concat",
                                    "resources": {"cpu": 1, "gpu": 0}}, sort_keys=False))
    return path


def trials(db: Path) -> dict[str, dict]:
    with sqlite3.connect(db) as c:
        c.row_factory = sqlite3.Row
        return {r["key"]: dict(r) for r in c.execute("SELECT key, status, attempts, config, error, metrics FROM trials")}


def cells(db: Path, grid: str) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return sorted(c.execute("SELECT label, key, seed FROM memberships WHERE grid=?", (grid,)).fetchall())


SHARED = {"method": {"name": "concat"}, "search": search(0.01, 0.2, 2, [102])}


def test_two_grids_with_searches_in_one_run(tmp_path):
    a = write(tmp_path / "a.yaml", "ga", {"TunedA": {"method": {"name": "concat"}, "search": search(0.003, 0.3, 2, [100])},
                                          "Shared": SHARED})
    b = write(tmp_path / "b.yaml", "gb", {"TunedB": {"method": {"name": "concat"}, "search": search(0.003, 0.3, 3, [101])},
                                          "Shared": SHARED})
    res = tmp_path / "results"
    code, out, err = raygap("run", a, b, "--results", res, "--num-cpus", "2", timeout=550)
    assert code == 0, out + err
    recs = trials(res / "store.sqlite")
    docs = {g: json.loads((res / g / "noprofile" / "search.json").read_text()) for g in ("ga", "gb")}
    rows = {g: {s["row"]: s for s in d["searches"]} for g, d in docs.items()}
    assert set(rows["ga"]) == {"TunedA", "Shared"} and set(rows["gb"]) == {"TunedB", "Shared"}
    # each search its own budget and seeds: ga's TunedA 2 samples on seed 100, gb's TunedB 3 on seed 101
    for g, row, n, seed in (("ga", "TunedA", 2, 100), ("gb", "TunedB", 3, 101), ("ga", "Shared", 2, 102)):
        s = rows[g][row]
        assert s["budget"] == n and len(s["samples"]) == n and s["seeds"] == [seed], s
        for x in s["samples"]:
            (key,) = x["keys"]
            cfg = json.loads(recs[key]["config"])
            assert x["status"] == recs[key]["status"] == "done" and recs[key]["attempts"] == 1
            assert cfg["seed"] == seed and cfg["optim"]["lr"] == x["params"]["optim.lr"]
        best = max(s["samples"], key=lambda x: x["value"])
        assert s["winner"] == {"params": best["params"], "value": best["value"]}
    # not mixed: no sample of one search is in another
    keys = {(g, r): {x["keys"][0] for x in s["samples"]} for g in rows for r, s in rows[g].items()}
    assert not keys["ga", "TunedA"] & keys["gb", "TunedB"] and not keys["ga", "TunedA"] & keys["ga", "Shared"]
    assert "ga/noprofile: searches: 4 sample(s) run in 1 round(s)" in out, out      # TunedA 2 + Shared 2
    # the identical searched row (same space, seeds, row config) is ONE search: the same id, the same
    # samples (trained once, by the first grid), one record in the store; gb runs only TunedB's 3
    assert rows["ga"]["Shared"]["search_id"] == rows["gb"]["Shared"]["search_id"]
    assert rows["ga"]["Shared"]["samples"] == rows["gb"]["Shared"]["samples"]
    assert rows["ga"]["Shared"]["winner"] == rows["gb"]["Shared"]["winner"]
    assert "gb/noprofile: searches: 3 sample(s) run in 1 round(s)" in out, out
    with sqlite3.connect(res / "store.sqlite") as c:
        assert c.execute("SELECT count(*) FROM searches").fetchone()[0] == 3
    # 1 Concat (the same trial in both grids) + 2 + 2 + 3 samples + 3 winners (Shared's: one trial)
    assert len(recs) == 11 and all(r["status"] == "done" and r["attempts"] == 1 for r in recs.values())
    # each table's tuned row is its own search's winner on the table seed
    for g in ("ga", "gb"):
        got = {lab: (key, seed) for lab, key, seed in cells(res / "store.sqlite", f"{g}/noprofile")}
        assert set(got) == {"Concat", "Shared", "TunedA" if g == "ga" else "TunedB"}, got
        for lab in set(got) - {"Concat"}:
            key, seed = got[lab]
            cfg = json.loads(recs[key]["config"])
            assert seed == 0 == cfg["seed"] and cfg["optim"]["lr"] == rows[g][lab]["winner"]["params"]["optim.lr"]
    ga, gb = (dict((lab, key) for lab, key, _ in cells(res / "store.sqlite", f"{g}/noprofile")) for g in ("ga", "gb"))
    assert ga["Shared"] == gb["Shared"] and ga["Concat"] == gb["Concat"] and ga["TunedA"] != gb["TunedB"]
    assert "TunedA \\*" in (res / "ga" / "noprofile" / "table.md").read_text()
    assert "TunedB \\*" in (res / "gb" / "noprofile" / "table.md").read_text()


BOOM = '''\
"""A plug-in method that fails from its second epoch on: a search's column of 2 epochs never finishes."""
from raygap.methods.base import Method
from raygap.registry import METHODS


@METHODS.register("boom", params=None, version=1)
class Boom(Method):
    """Boom: concat's loss; raises at the start of epoch 2."""

    tasks = ("classification",)

    def on_epoch_start(self, st):
        if st.epoch >= 1:
            raise RuntimeError("boom at epoch 2")
'''


def test_a_searched_column_where_no_sample_finishes(tmp_path):
    (tmp_path / "boom.py").write_text(BOOM)
    g = write(tmp_path / "g.yaml", "gf", {"Tuned": {"method": {"name": "boom"}, "search": search(0.003, 0.3, 2, [100])}},
              plugins=["boom.py"], columns={"train.epochs": [1, 2]})
    res = tmp_path / "results"
    code, out, err = raygap("run", g, "--results", res, "--num-cpus", "2", "--max-failures", "0", timeout=550)
    assert code == 1, out + err                 # raygap's exit code for failed trials
    assert "Traceback" not in out
    none = [ln for ln in out.splitlines() if "no winner" in ln]
    assert none == ["search 'Tuned' [train.epochs=2]: no winner: none of its 2 sample(s) finished with a "
                    "validation value (2 failed); its table cells stay empty"], out
    recs = trials(res / "store.sqlite")
    doc = {json.dumps(s["column"]): s for s in json.loads((res / "gf" / "noprofile" / "search.json").read_text())["searches"]}
    bad, good = doc['{"train.epochs": 2}'], doc['{"train.epochs": 1}']
    # every sample failed, each counted against the budget (2 of 2: not asked again), no winner
    assert bad["budget"] == 2 and len(bad["samples"]) == 2 and bad["winner"] is None
    for x in bad["samples"]:
        (key,) = x["keys"]
        assert x["status"] == "failed" and "value" not in x
        assert recs[key]["status"] == "failed" and recs[key]["attempts"] == 1 and "boom at epoch 2" in recs[key]["error"]
    assert "raygap: 2 trial(s) failed:" in err and all(x["keys"][0] in err for x in bad["samples"])
    # the other column's search is unaffected: its winner is its best done sample
    assert [x["status"] for x in good["samples"]] == ["done", "done"]
    best = max(good["samples"], key=lambda x: x["value"])
    assert good["winner"] == {"params": best["params"], "value": best["value"]}
    got = cells(res / "store.sqlite", "gf/noprofile")
    assert [(lab, seed) for lab, _, seed in got] == [("Concat", 0), ("Concat", 0), ("Tuned", 0)], got
    (tuned,) = [key for lab, key, _ in got if lab == "Tuned"]
    cfg = json.loads(recs[tuned]["config"])
    assert cfg["train"]["epochs"] == 1 and cfg["optim"]["lr"] == best["params"]["optim.lr"]
    assert "3 distinct trial(s): 0 reused from the store, 3 run now, 2 failed" in out, out
    # the table: the tuned row's epochs-2 cell is empty ("–"), its epochs-1 cell is the winner's test accuracy
    rows = {r[0]: r[1:] for r in (ln.split(",") for ln in (res / "gf" / "noprofile" / "table.csv").read_text().splitlines())}
    acc = json.loads(recs[tuned]["metrics"])["acc"]
    assert rows["Tuned *"][:2] == [f"{100 * acc:.2f} (n=1)", "–"], rows
    assert all(v.endswith("(n=1)") for v in rows["Concat"][:2]), rows
    # the same command again: nothing is run again (the failed samples spent the budget), the line again
    code2, out2, err2 = raygap("run", g, "--results", res, "--num-cpus", "2", "--max-failures", "0", timeout=300)
    assert code2 == 0 and "0 sample(s) run in 0 round(s)" in out2, out2 + err2
    assert "3 distinct trial(s): 3 reused from the store, 0 run now, 0 failed" in out2, out2
    assert [ln for ln in out2.splitlines() if "no winner" in ln] == none, out2
    assert trials(res / "store.sqlite") == recs
