"""A results folder where nothing has run yet, as a user meets it: real ``raygap`` processes
reading a grid with no ``store.sqlite`` at all. ``export`` and ``report`` are one line naming
the store and the command to run (exit 2, nothing written); ``status`` lists every trial as
missing and ``run --dry-run`` as new (the demo profile: 3 avdigits trials) (exit 0); without ``--profile`` each is the line saying
the grid never ran."""
from __future__ import annotations

import pytest
import yaml

from _proc import Raygap


@pytest.fixture
def grid(tmp_path):
    g = tmp_path / "t3.yaml"
    g.write_text(yaml.safe_dump({"name": "t3", "base": {"method": {"name": "concat"}}, "rows": {"Concat": {}},
                                 "columns": {"data.name": ["cremad", "ave"]}, "seeds": [0, 1], "metrics": ["acc"]}))
    return g


def raygap(*args: str) -> tuple[int, str]:
    return Raygap(*args).finish(timeout=300)


@pytest.mark.parametrize("verb", [["export"], ["export", "--format", "csv"], ["report"]])
def test_export_and_report_with_no_store_are_one_line_naming_it_and_the_run(grid, tmp_path, verb):
    results = tmp_path / "results"
    code, out = raygap(verb[0], str(grid), "--profile", "demo", "--results", str(results), *verb[1:])
    assert code == 2, out
    assert out == (f"raygap: results error: {results / 'store.sqlite'}: no trial of grid 't3' has run here "
                   f"(no trial store); run it first: raygap run {grid} --profile demo --results {results}\n")
    assert not results.exists()                                  # nothing written, no folder made


def test_the_run_named_carries_the_set_items_and_leaves_out_the_default_results(grid, tmp_path):
    code, out = Raygap("export", str(grid), "--set", "train.epochs=1", "--set", "model.width=4",
                       cwd=tmp_path).finish(timeout=300)
    assert code == 2 and out.count("\n") == 1, out
    assert out.endswith(f"run it first: raygap run {grid} --set train.epochs=1 --set model.width=4\n"), out
    assert not (tmp_path / "results").exists()


def test_status_and_a_dry_run_with_no_store_show_every_trial_still_to_run(grid, tmp_path):
    results = tmp_path / "results"
    code, out = raygap("status", str(grid), "--profile", "demo", "--results", str(results))
    assert code == 0 and "total: 0 done, 0 running, 0 stale, 0 failed, 0 interrupted, 3 missing (of 3 distinct trials)" in out
    code, out = raygap("run", str(grid), "--profile", "demo", "--results", str(results), "--dry-run")
    assert code == 0 and out.count(" new\n") == 3 and "3 cells, 3 distinct trials: 0 already done (reused), 3 to run" \
        in out, out
    assert not results.exists()


@pytest.mark.parametrize("verb", ["status", "export", "report"])
def test_without_a_profile_each_says_the_grid_never_ran(grid, tmp_path, verb):
    results = tmp_path / "results"
    code, out = raygap(verb, str(grid), "--results", str(results))
    assert code == 2 and out == (
        f"raygap: error: {grid}: grid 't3' has never run with --results {results}, so there is no profile to "
        f"default to (run it first (raygap run {grid} --profile demo) or pass --profile NAME)\n"), out
    assert not results.exists()
