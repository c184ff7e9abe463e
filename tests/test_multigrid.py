"""Several grids in one ``raygap run`` (issue 24, "the whole paper in one run"), through real
``raygap`` processes on a local Ray: two tiny grids that share a trial run in one Tune
experiment, the shared trial trains once, each table is written as soon as its own trials have
ended, and the tables are the bytes two runs one after the other write on a fresh store; a bad
grid among several is one line (exit 2) before anything runs; status, export and report take
several grids."""
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
        "optim": {"lr": 0.1},
        "train": {"epochs": 2, "batch_size": 256, "device": "cpu", "threads": 1, "checkpoint_every": 1}}
TABLE_FILES = ("table.csv", "table.md", "table.tex")


def write_grid(path: Path, name: str, seeds, rows=None) -> Path:
    path.write_text(yaml.safe_dump({"name": name, "base": BASE,
                                    "rows": rows or {"Concat": {"method": {"name": "concat"}}},
                                    "seeds": list(seeds), "metrics": ["acc"], "resources": {"cpu": 1, "gpu": 0}}))
    return path


def trials(db: Path) -> dict[str, dict]:
    with sqlite3.connect(db) as c:
        c.row_factory = sqlite3.Row
        return {r["key"]: dict(r) for r in c.execute("SELECT key, status, attempts, finished FROM trials")}


def run_ok(*args) -> tuple[str, str]:
    code, out, err = raygap(*map(str, args), timeout=400)
    assert code == 0, out + err
    return out, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Grids a (seeds 0, 1) and b (seeds 1, 2): seed 1 is the same trial in both. One run of both
    on one fresh store, and a run of a then a run of b on another."""
    tmp = tmp_path_factory.mktemp("multigrid")
    a, b = write_grid(tmp / "a.yaml", "a", [0, 1]), write_grid(tmp / "b.yaml", "b", [1, 2])
    together, apart = tmp / "together", tmp / "apart"
    one = run_ok("run", a, b, "--results", together, "--num-cpus", "1")
    seq = [run_ok("run", g, "--results", apart, "--num-cpus", "1") for g in (a, b)]
    return tmp, a, b, together, apart, one, seq


def test_the_shared_trial_trains_once_in_one_run_of_both_grids(runs):
    _, a, b, together, _, (out, _), _ = runs
    recs = trials(together / "store.sqlite")
    assert len(recs) == 3 and all(r["status"] == "done" and r["attempts"] == 1 for r in recs.values()), recs
    assert "3 distinct trial(s): 0 reused from the store, 3 run now, 0 failed" in out
    done_lines = [ln for ln in out.splitlines() if "] done " in ln]
    assert len(done_lines) == 3 and all(sum(f"({k})" in ln for ln in done_lines) == 1 for k in recs), done_lines
    assert out.count("launching ") == 1                      # one Tune experiment over both grids
    assert len([p for p in (together / "ray").iterdir() if p.is_dir()]) == 1


def test_the_tables_are_the_bytes_of_two_runs_one_after_the_other(runs):
    _, _, _, together, apart, _, seq = runs
    assert "2 distinct trial(s): 1 reused from the store, 1 run now" in seq[1][0]     # b after a: seed 1 reused
    for grid in ("a", "b"):
        for name in TABLE_FILES:
            one, two = (r / grid / "noprofile" / name for r in (together, apart))
            assert one.read_bytes() == two.read_bytes(), f"{grid}/{name} differs"
        cells = [json.loads((r / grid / "noprofile" / "table.json").read_text())["table"] for r in (together, apart)]
        assert cells[0] == cells[1] and all(c["done"] == c["of"] == 2 for c in cells[0])


def test_each_table_is_written_as_soon_as_its_own_trials_have_ended(runs):
    _, a, b, together, _, (out, _), _ = runs
    from raygap.grid import load_grid

    recs = trials(together / "store.sqlite")
    last = {g: max(recs[t.key]["finished"] for t in load_grid(p).trials) for g, p in (("a", a), ("b", b))}
    written = {g: (together / g / "noprofile" / "table.json").stat().st_mtime for g in last}
    for g in last:
        assert f"{g}/noprofile: its 2 trial(s) have ended: tables: " in out
        assert written[g] >= last[g]
    first = min(last, key=last.get)                # the grid whose trials all ended first (1 CPU: one at a time)
    assert last[first] < max(last.values())
    assert written[first] < max(last.values()), "the first table was written only after the other grid's trials"
    lines = out.splitlines()
    said = next(i for i, ln in enumerate(lines) if f"{first}/noprofile: its 2 trial(s) have ended" in ln)
    assert said < max(i for i, ln in enumerate(lines) if "] done " in ln)      # said before the run's last trial ended


def test_status_export_and_report_take_both_grids(runs):
    _, a, b, together, _, _, _ = runs
    out, _ = run_ok("status", a, b, "--results", together)
    assert "grid a (" in out and "grid b (" in out
    assert "2 grids together: 3 done, 0 running, 0 stale, 0 failed, 0 interrupted, 0 missing (of 3 distinct trials; " \
           "1 used by more than one grid)" in out
    before = {g: (together / g / "noprofile" / "table.md").read_bytes() for g in ("a", "b")}
    out, _ = run_ok("export", a, b, "--results", together)
    assert out.count("written: ") == 2
    assert {g: (together / g / "noprofile" / "table.md").read_bytes() for g in ("a", "b")} == before
    out, _ = run_ok("report", a, b, "--results", together)
    report = together / "report-noprofile.md"
    assert out.strip() == f"written: {report}"
    text = report.read_text()
    assert "## Reproduction report: a" in text and "## Reproduction report: b" in text
    assert "4 of 4 cells done over a, b" in text
    assert (together / "report-noprofile.html").exists()
    assert not (together / "a" / "noprofile" / "report.md").exists()         # one file, not one per grid


def test_a_bad_grid_among_several_is_one_line_and_nothing_runs(tmp_path):
    good = write_grid(tmp_path / "good.yaml", "good", [0])
    bad = write_grid(tmp_path / "bad.yaml", "bad", [0], rows={"Concat": {"method": {"name": "concat", "rhoo": 1}}})
    results = tmp_path / "results"
    code, out, err = raygap("run", good, bad, "--results", results, timeout=120)
    assert code == 2, out + err
    assert err.count("\n") == 1 and str(bad) in err and "rhoo" in err and "Traceback" not in err, err
    assert not (results / "store.sqlite").exists() and not (results / "good").exists()
    # the same file twice, or two files of one name, are refused too, naming the later file
    same = tmp_path / "same.yaml"
    same.write_text(good.read_text())
    for args, named in (((good, good), good), ((good, same), same)):
        code, out, err = raygap("run", *args, "--results", results, timeout=120)
        assert code == 2 and err.count("\n") == 1 and str(named) in err, out + err
    assert not results.exists()
    code, out, err = raygap("status", good, bad, "--profile", "demo", "--results", results, timeout=120)
    assert code == 2 and err.count("\n") == 1 and str(bad) in err, out + err


def test_a_stop_signal_while_a_table_is_written_mid_run_stops_the_run(tmp_path):
    """SIGTERM while the first grid's table is written (inside Tune's run, a protected phase):
    the table is finished, then the run stops as at any other moment -- the other grid's trials
    are left for the next run, not run to their end."""
    import signal

    from _proc import Raygap

    a, b = write_grid(tmp_path / "a.yaml", "a", [0]), write_grid(tmp_path / "b.yaml", "b", [1, 2])
    results = tmp_path / "results"
    run = Raygap("run", str(a), str(b), "--results", str(results), "--num-cpus", "1",
                 env={"RAYGAP_DEBUG_PAUSE": "export:8"})
    run.wait_for(r"raygap: debug: phase export", timeout=400)
    run.send(signal.SIGTERM)
    code, out = run.finish(400)
    assert code == 130, out
    assert "a/noprofile: its 1 trial(s) have ended: tables: " in out
    assert json.loads((results / "a" / "noprofile" / "table.json").read_text())["done"] == 1
    recs = trials(results / "store.sqlite")
    assert sum(r["status"] == "done" for r in recs.values()) < 3, recs       # b's trials did not all run on
    assert "run the same command again to finish them" in out
