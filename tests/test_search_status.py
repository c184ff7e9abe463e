"""``raygap status`` of a grid with a searched row (issue 26): per searched (row, column) the search's
progress read from a real SQLite store -- not started; samples finished of the budget, stopped early
by ASHA, failed, asked and not finished, the best validation value so far; the winner chosen, whose
table trials are then the row's ordinary cells; a winner of a smaller budget not used -- built
through the store's own API as the search runner writes it (``save_search``, ``save_done``,
``register``), so no Ray runs here. Expected lines are written out by hand."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from _proc import raygap
from test_search import BASE
from test_search import SEARCH as SEARCH_2

SEARCH = {**SEARCH_2, "samples": 3}          # test_search's tiny search, with a budget of 3


def write_grid(path: Path, samples: int = 3) -> Path:
    path.write_text(yaml.safe_dump({
        "name": "tinys", "base": BASE, "columns": {"data.name": ["avdigits"]},
        "rows": {"Concat": {"method": {"name": "concat"}},
                 "Tuned": {"method": {"name": "concat"}, "search": {**SEARCH, "samples": samples}}},
        "seeds": [0], "metrics": ["acc"], "reference": "Concat", "resources": {"cpu": 1, "gpu": 0}},
        sort_keys=False))
    return path


def sample(i: int, lr: float, status: str, value: float | None = None) -> dict:
    x = {"index": i, "params": {"optim.lr": lr}, "status": status, "keys": [f"k{i}"]}
    if value is not None:
        x["value"] = value
    return x


@pytest.fixture
def setup(tmp_path):
    from raygap.grid import load_grid
    from raygap.store import Store

    g = write_grid(tmp_path / "g.yaml")
    grid = load_grid(g)
    store = Store(tmp_path / "store.sqlite")
    store.register(grid)                         # the run record status defaults to; the fixed row's trial
    s = grid.searches["Tuned"]
    (column, raw), = s.bases
    sid = s.search_id(raw)

    def save(samples, winner=None, value=None):
        store.save_search(sid, grid.store_name, "Tuned", column, s.describe(), samples, winner, value)

    yield g, grid, store, save
    store.close()


def status_of(g: Path, tmp_path: Path, store=None) -> list[str]:
    from raygap.grid import load_grid
    from raygap.search import winners_from
    from raygap.status import status_text

    grid = load_grid(g)
    winners_from(grid, store)                    # as the CLI's grid_of does
    return status_text(grid, store).splitlines()


def search_line(lines):
    got = [ln for ln in lines if ln.startswith("  search ")]
    assert len(got) == 1, lines
    return got[0]


def test_a_search_not_started_says_so_and_its_cell_is_searching(setup, tmp_path):
    g, _, store, _ = setup
    lines = status_of(g, tmp_path, store)
    assert search_line(lines) == ("  search Tuned | avdigits: not started (budget 3 samples, optuna, scheduler asha): "
                                  "`raygap run` runs it before the row's table trials")
    assert "  Tuned   avdigits  (searching: no table trials before its winner; see the search line below)" in lines
    assert "  Concat  avdigits     0       0     0      0           0       1" in lines
    assert "total: 0 done, 0 running, 0 stale, 0 failed, 0 interrupted, 1 missing (of 1 distinct trials)" in lines


def test_a_search_under_way_counts_its_samples_and_the_best_so_far(setup, tmp_path):
    g, _, store, save = setup
    save([sample(0, 0.11, "done", 0.781), sample(1, 0.004, "stopped"), sample(2, 0.05, "asked")])
    assert search_line(status_of(g, tmp_path, store)) == (
        "  search Tuned | avdigits: 2/3 samples finished (1 stopped early by ASHA, 0 failed), 1 asked and not "
        "finished (run or resumed by the next `raygap run`), best val_acc 0.781 so far (optim.lr=0.11)")


def test_a_failed_sample_counts_and_no_value_yet_says_so(setup, tmp_path):
    g, _, store, save = setup
    save([sample(0, 0.2, "failed")])
    assert search_line(status_of(g, tmp_path, store)) == (
        "  search Tuned | avdigits: 1/3 samples finished (0 stopped early by ASHA, 1 failed), no val_acc yet")


def test_the_winner_chosen_and_its_table_trial_an_ordinary_cell(setup, tmp_path):
    g, grid, store, save = setup
    samples = [sample(0, 0.11, "done", 0.781), sample(1, 0.004, "stopped"), sample(2, 0.0523, "done", 0.812)]
    save(samples, {"optim.lr": 0.0523}, 0.812)
    lines = status_of(g, tmp_path, store)
    assert search_line(lines) == ("  search Tuned | avdigits: 3/3 samples finished (1 stopped early by ASHA, "
                                  "0 failed): winner chosen: optim.lr=0.0523 (val_acc 0.812), trained on the "
                                  "table seeds [0] as the row's cells")
    assert "  Tuned   avdigits     0       0     0      0           0       1" in lines   # to run
    assert "total: 0 done, 0 running, 0 stale, 0 failed, 0 interrupted, 2 missing (of 2 distinct trials)" in lines
    # the winner's table trial done: the row's cell says so, as any cell
    key = grid.searches["Tuned"].sample_specs("Tuned", {"data.name": "avdigits"}, grid.searches["Tuned"].bases[0][1],
                                              {"optim.lr": 0.0523}, [0])[0].key
    assert store.save_done(key, {"test_acc": 0.8}, [], 1.0)
    lines = status_of(g, tmp_path, store)
    assert "  Tuned   avdigits     1       0     0      0           0       0" in lines
    assert "total: 1 done, 0 running, 0 stale, 0 failed, 0 interrupted, 1 missing (of 2 distinct trials)" in lines


def test_a_larger_budget_does_not_use_the_smaller_budgets_winner(setup, tmp_path):
    g, _, store, save = setup
    save([sample(0, 0.11, "done", 0.781), sample(1, 0.004, "done", 0.5), sample(2, 0.05, "done", 0.7)],
         {"optim.lr": 0.11}, 0.781)
    big = write_grid(tmp_path / "big.yaml", samples=5)
    lines = status_of(big, tmp_path, store)
    assert search_line(lines) == (
        "  search Tuned | avdigits: 3/5 samples finished (0 stopped early by ASHA, 0 failed), best val_acc 0.781 "
        "so far (optim.lr=0.11); the winner of a smaller budget is not used: the search goes on")
    assert "  Tuned   avdigits  (searching: no table trials before its winner; see the search line below)" in lines


def test_raygap_status_prints_the_search_line(setup, tmp_path):
    g, _, store, save = setup
    save([sample(0, 0.11, "done", 0.781), sample(1, 0.004, "stopped")])
    store.close()
    code, out, err = raygap("status", g, "--results", tmp_path, timeout=120)
    assert code == 0, out + err
    assert ("  search Tuned | avdigits: 2/3 samples finished (1 stopped early by ASHA, 0 failed), best val_acc "
            "0.781 so far (optim.lr=0.11)") in out.splitlines(), out
    assert "Traceback" not in err


def test_a_smaller_budget_than_the_samples_stored_says_so(setup, tmp_path):
    g, _, store, save = setup
    save([sample(i, 0.01 * (i + 1), "done", 0.5 + 0.01 * i) for i in range(4)], {"optim.lr": 0.04}, 0.53)
    small = write_grid(tmp_path / "small.yaml", samples=2)
    assert search_line(status_of(small, tmp_path, store)) == (
        "  search Tuned | avdigits: 4 samples (more than this grid's budget of 2: a larger budget ran) finished "
        "(0 stopped early by ASHA, 0 failed): winner chosen: optim.lr=0.04 (val_acc 0.530), trained on the table "
        "seeds [0] as the row's cells")


def test_the_status_of_a_searched_grid_imports_no_torch_nor_ray_nor_optuna(setup, tmp_path):
    from test_import_cost import loaded_after

    g, _, store, save = setup
    save([sample(0, 0.11, "done", 0.781), sample(1, 0.004, "stopped"), sample(2, 0.05, "done", 0.7)],
         {"optim.lr": 0.11}, 0.781)
    store.close()
    code = f"""
from raygap.cli import main
assert main(["status", {str(g)!r}, "--results", {str(tmp_path)!r}]) == 0
import sys
assert "optuna" not in sys.modules
"""
    assert loaded_after(code) == []
