"""Figures of a grid: the table figure (mean ± std per row and column, seeds as dots), and
figures whose trials did not change are kept, not drawn again."""
from pathlib import Path

import yaml

from raygap.grid import load_grid
from raygap.figures import grid_figures
from raygap.store import Store
from raygap.table import read_table
from _tiny import avdigits


def _grid(tmp_path: Path):
    doc = {"name": "figs", "base": {"data": avdigits(), "model": {"backbone": "small", "width": 4},
                                    "train": {"epochs": 2, "device": "cpu"}},
           "rows": {"A": {"method": {"name": "concat"}}, "B": {"method": {"name": "warmup_objective"}}},
           "seeds": [0, 1], "metrics": ["acc"], "resources": {"cpu": 1, "gpu": 0}}
    (tmp_path / "figs.yaml").write_text(yaml.safe_dump(doc))
    return load_grid(tmp_path / "figs.yaml")


def _finish(store: Store, key: str, acc: float) -> None:
    hist = [{"epoch": e, "val_acc": acc - 0.1 * (1 - e), "val_acc_audio": 0.5, "val_acc_visual": 0.4}
            for e in range(2)]
    store.mark_running(key, {})
    store.save_done(key, {"acc": acc}, hist, 1.0, {})


def test_unchanged_figures_are_kept_and_the_table_figure_follows_new_results(tmp_path):
    grid = _grid(tmp_path)
    keys = {(t.label, t.seed): t.key for t in grid.trials}
    out = tmp_path / "figures"
    with Store(tmp_path / "store.sqlite") as store:
        store.register(grid)
        _finish(store, keys[("A", 0)], 0.8)
        _finish(store, keys[("B", 0)], 0.6)
        first = grid_figures(read_table(grid, store), out)
        names = sorted(p.name for p in first)
        assert names == ["A_seed0_accuracy.png", "B_seed0_accuracy.png", "table_acc.png"] and first.drawn == 3
        stamps = {p.name: p.stat().st_mtime_ns for p in first}

        again = grid_figures(read_table(grid, store), out)                # nothing changed: nothing drawn
        assert again.drawn == 0 and sorted(p.name for p in again) == names
        assert {p.name: p.stat().st_mtime_ns for p in again} == stamps

        _finish(store, keys[("A", 1)], 0.9)                   # a second seed of A: only the table changes
        third = grid_figures(read_table(grid, store), out)
        assert third.drawn == 1
        changed = {p.name for p in third if p.stat().st_mtime_ns != stamps[p.name]}
        assert changed == {"table_acc.png"}

        (out / "B_seed0_accuracy.png").unlink()               # a deleted figure is drawn again
        fourth = grid_figures(read_table(grid, store), out)
        assert fourth.drawn == 1 and (out / "B_seed0_accuracy.png").stat().st_size > 1000


def test_figures_that_cannot_be_drawn_make_export_exit_1_with_the_traceback_path(tmp_path, monkeypatch, capsys):
    import raygap.figures
    from raygap.cli import main as cli_main

    grid = _grid(tmp_path)
    keys = {(t.label, t.seed): t.key for t in grid.trials}
    with Store(tmp_path / "store.sqlite") as store:
        store.register(grid)
        _finish(store, keys[("A", 0)], 0.8)

    def broken(*a, **k):
        raise ValueError("no axes today")

    monkeypatch.setattr(raygap.figures, "grid_figures", broken)
    code = cli_main(["export", str(tmp_path / "figs.yaml"), "--results", str(tmp_path)])
    err = capsys.readouterr().err
    tb = tmp_path / "figs" / "noprofile" / "figures" / "error.txt"
    assert code == 1
    assert f"figures not drawn: ValueError: no axes today (traceback: {tb})" in err
    assert "no axes today" in tb.read_text() and "Traceback" in tb.read_text()
    assert "| A " in (tmp_path / "figs" / "noprofile" / "table.md").read_text()     # the tables are written


def test_the_figures_traceback_is_never_written_through_a_symlink(tmp_path, monkeypatch, capsys):
    import raygap.figures
    from raygap.cli import main as cli_main

    grid = _grid(tmp_path)
    with Store(tmp_path / "store.sqlite") as store:
        store.register(grid)
        _finish(store, grid.trials[0].key, 0.8)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    tb = tmp_path / "figs" / "noprofile" / "figures" / "error.txt"
    tb.parent.mkdir(parents=True)
    tb.symlink_to(victim)                                   # a link where raygap writes the traceback

    def broken(*a, **k):
        raise ValueError("no axes today")

    monkeypatch.setattr(raygap.figures, "grid_figures", broken)
    assert cli_main(["export", str(tmp_path / "figs.yaml"), "--results", str(tmp_path)]) == 2   # refused, not replaced
    assert victim.read_text() == "precious" and tb.is_symlink()
    assert [p.name for p in tb.parent.iterdir()] == ["error.txt"]          # no temp file left
    assert not (tb.parent.parent / "table.md").exists()                    # refused before anything is written
    err = capsys.readouterr().err
    assert f"{tb}: is a symlink (to {victim}): raygap does not write through it" in err


def test_rows_whose_ascii_names_collide_keep_a_figure_each(tmp_path):
    """"Ours α" and "Ours β" are both ``Ours`` in ASCII: each gets a short hash of its label, so
    neither figure is drawn over the other (issue 25); a label alone in its form keeps it."""
    import hashlib

    doc = {"name": "greek", "base": {"data": avdigits(), "model": {"backbone": "small", "width": 4},
                                     "train": {"epochs": 2, "device": "cpu"}},
           "rows": {"Ours α": {"method": {"name": "concat"}}, "Ours β": {"method": {"name": "warmup_objective"}},
                    "Base": {"method": {"name": "concat"}, "optim": {"lr": 0.05}}},
           "seeds": [0], "metrics": ["acc"], "resources": {"cpu": 1, "gpu": 0}}
    (tmp_path / "greek.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True))
    grid = load_grid(tmp_path / "greek.yaml")
    with Store(tmp_path / "store.sqlite") as store:
        store.register(grid)
        for t in grid.trials:
            _finish(store, t.key, 0.7)
        figs = grid_figures(read_table(grid, store), tmp_path / "figures")
    a, b = (f"Ours_{hashlib.sha256(s.encode()).hexdigest()[:6]}" for s in ("Ours α", "Ours β"))
    assert sorted(p.name for p in figs) == sorted([f"{a}_seed0_accuracy.png", f"{b}_seed0_accuracy.png",
                                                   "Base_seed0_accuracy.png", "table_acc.png"])
