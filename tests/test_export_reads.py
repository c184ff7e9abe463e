"""An export reads the store's records once: the table files, the figures drawn after them and
the report all come from that one read (``raygap.table.read_table``), so the files of one export
agree with each other even while another driver writes to the store."""
from __future__ import annotations

import csv
import io
import json
from collections import Counter

import pytest
import yaml

from raygap.cli import main as cli_main
from raygap.export import export_grid
from raygap.grid import load_grid
from raygap.store import Store
from _tiny import avdigits

READS = ("records", "get", "status_of", "finished_times", "done_infos")     # every read of trials by key
ACC = {("Ref", 0): 0.80, ("Ref", 1): 0.70, ("Ref", 2): 0.90, ("B", 0): 0.82, ("B", 1): 0.75, ("B", 2): 0.91}


def _grid(tmp_path):
    doc = {"name": "reads", "base": {"data": avdigits(), "model": {"backbone": "small", "width": 4},
                                     "train": {"epochs": 2, "device": "cpu"}},
           "rows": {"Ref": {"method": {"name": "concat"}}, "B": {"optim": {"lr": 0.2}}},
           "seeds": [0, 1, 2], "metrics": ["acc"], "resources": {"cpu": 1, "gpu": 0}, "reference": "Ref"}
    (tmp_path / "reads.yaml").write_text(yaml.safe_dump(doc))
    return load_grid(tmp_path / "reads.yaml")


def _fill(tmp_path, grid, leave=()):
    """Every trial done (with a history, so figures are drawn) except the cells in ``leave``."""
    with Store(tmp_path / "store.sqlite") as store:
        store.register(grid)
        for t in grid.trials:
            store.mark_running(t.key, {})
            if (t.label, t.seed) not in leave:
                hist = [{"epoch": e, "val_acc": 0.5 + 0.1 * e, "val_acc_audio": 0.4, "val_acc_visual": 0.3}
                        for e in range(2)]
                store.save_done(t.key, {"acc": ACC[(t.label, t.seed)]}, hist, 1.0, {})


@pytest.fixture
def reads(monkeypatch):
    """Counts the store's reads of trials by key, whatever Store instance makes them."""
    seen: Counter = Counter()
    for name in READS:
        def counted(self, *a, _name=name, _orig=getattr(Store, name), **k):
            seen[_name] += 1
            return _orig(self, *a, **k)
        monkeypatch.setattr(Store, name, counted)
    return seen


def test_export_grid_reads_the_records_once(tmp_path, reads):
    grid = _grid(tmp_path)
    _fill(tmp_path, grid)
    with Store(tmp_path / "store.sqlite") as store:
        reads.clear()
        paths = export_grid(grid, store, tmp_path / "out")
    assert "significance.csv" in paths and "table.tex" in paths
    assert dict(reads) == {"records": 1}


@pytest.mark.parametrize("verb", ["export", "report"])
def test_the_export_and_report_verbs_read_the_records_once_figures_included(tmp_path, reads, verb):
    grid = _grid(tmp_path)
    _fill(tmp_path, grid)
    reads.clear()
    assert cli_main([verb, str(tmp_path / "reads.yaml"), "--results", str(tmp_path)]) == 0
    figures = tmp_path / "reads" / "noprofile" / "figures"
    assert (figures / "Ref_seed0_accuracy.png").stat().st_size > 1000 and (figures / "table_acc.png").exists()
    assert dict(reads) == {"records": 1}


def test_a_trial_finishing_during_an_export_leaves_its_files_agreeing(tmp_path, monkeypatch):
    """Another driver finishes B's seed 2 right after the export's first read: every file of
    this export shows the state of that one read (5 of 6 done); the next export shows 6."""
    grid = _grid(tmp_path)
    _fill(tmp_path, grid, leave={("B", 2)})
    late = next(t for t in grid.trials if (t.label, t.seed) == ("B", 2))
    records, finished = Store.records, []

    def records_then_a_driver_finishes_a_trial(self, keys):
        out = records(self, keys)
        if not finished:
            finished.append(late.key)
            with Store(tmp_path / "store.sqlite") as other:
                other.save_done(late.key, {"acc": ACC[("B", 2)]}, [{"epoch": 0}], 1.0, {})
        return out

    monkeypatch.setattr(Store, "records", records_then_a_driver_finishes_a_trial)
    with Store(tmp_path / "store.sqlite", readonly=True) as store:
        paths = export_grid(grid, store, tmp_path / "out")
    trials = list(csv.DictReader(io.StringIO(paths["trials.csv"].read_text())))
    manifest = json.loads(paths["table.json"].read_text())
    table = list(csv.reader(io.StringIO(paths["table.csv"].read_text())))
    comps = {r["row"]: r for r in csv.DictReader(io.StringIO(paths["significance.csv"].read_text()))}
    assert finished == [late.key]
    assert sum(r["status"] == "done" for r in trials) == 5 and manifest["done"] == 5
    b = next(c for c in manifest["table"] if c["row"] == "B")
    assert b["done"] == 2 and b["values"] == pytest.approx([82.0, 75.0])
    assert next(r for r in table if r[0] == "B") == ["B", "78.50 ± 4.95 (n=2/3)"]    # (82 + 75) / 2; sd 7 / sqrt 2
    assert comps["B"]["n"] == "2"
    monkeypatch.undo()
    with Store(tmp_path / "store.sqlite", readonly=True) as store:
        again = export_grid(grid, store, tmp_path / "out")
    assert json.loads(again["table.json"].read_text())["done"] == 6
