"""raygap.results: a grid's (or a store's) results as pandas DataFrames, checked against the
trials.csv that `raygap export` writes from the same store, against values written by hand,
read-only on the store, without Ray or torch; and the example in docs/results.md run as written."""
import contextlib
import csv
import hashlib
import io
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

import raygap
from raygap.errors import ConfigError, StoreError
from raygap.export import export_grid
from raygap.grid import load_grid
from raygap.store import Store
from test_import_cost import loaded_after
from _tiny import avdigits

ROOT = Path(__file__).resolve().parent.parent
ACC = {("A", 0.1, 0): 0.8, ("A", 0.1, 1): 0.9, ("B", 0.1, 0): 0.75}
HIST = [{"epoch": 0, "val_acc": 0.5, "test_acc": 0.4, "stage": "warmup", "gap": {"audio": 0.25}},
        {"epoch": 1, "val_acc": 0.6, "test_acc": 0.55, "stage": "adaptive", "gap": {"audio": 0.125}}]


@pytest.fixture
def filled(tmp_path):
    """A grid of 3 rows (A2 is A again: the same trials) x 2 columns x 2 seeds = 12 cells, 8
    distinct trials: 3 done, 1 failed, 1 running (one epoch so far), 3 pending."""
    doc = {"name": "dfx", "base": {"data": avdigits(), "model": {"backbone": "small", "width": 4},
                                   "train": {"epochs": 2, "device": "cpu"}},
           "rows": {"A": {}, "A2": {}, "B": {"optim": {"lr": 0.2}}},
           "columns": {"data.val_fraction": [0.1, 0.2]}, "seeds": [0, 1], "metrics": ["acc"],
           "resources": {"cpu": 1, "gpu": 0}}
    path = tmp_path / "dfx.yaml"
    path.write_text(yaml.safe_dump(doc))
    grid = load_grid(path)
    store = Store(tmp_path / "results" / "store.sqlite")
    store.register(grid)
    cell = {(t.label, t.column["data.val_fraction"], t.seed): t for t in grid.trials}
    for (label, col, seed), acc in ACC.items():
        t = cell[label, col, seed]
        store.mark_running(t.key, t.config.to_dict())
        store.save_done(t.key, {"acc": acc, "macro_f1": acc - 0.1}, HIST, 2.5, {"device": "cpu"})
    failed, running = cell["B", 0.1, 1], cell["B", 0.2, 0]
    store.mark_running(failed.key, failed.config.to_dict())
    store.save_failed(failed.key, "TrialDiverged: training loss is not finite at epoch 1")
    store.mark_running(running.key, running.config.to_dict())
    store.record_epoch(running.key, HIST[:1])
    store.close()                      # (its WAL into the file: the bytes below are the whole store)
    return path, grid, tmp_path / "results", cell


def _same(text: str, v) -> bool:
    """Whether a trials.csv cell (text) holds the DataFrame's value ``v``."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return text == ""
    if isinstance(v, (bool, np.bool_)):
        return text == str(bool(v))
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(text) == float(v)
    return text == str(v)


def _digest(folder: Path) -> dict:
    """The store file's bytes, and what else is in its folder: nothing but SQLite's own empty
    write-ahead log and its shared-memory index (a WAL reader, read-only included, opens them)."""
    others = {p.name: p.stat().st_size for p in folder.iterdir() if p.name != "store.sqlite"}
    assert set(others) <= {"store.sqlite-wal", "store.sqlite-shm"} and others.get("store.sqlite-wal", 0) == 0, others
    return {"store.sqlite": hashlib.sha256((folder / "store.sqlite").read_bytes()).hexdigest()}


def test_the_trials_frame_is_the_csv_export_of_the_same_store(filled, tmp_path):
    path, grid, results, _ = filled
    before = _digest(results)
    trials, history = raygap.results(path, results_dir=results)
    assert _digest(results) == before                       # read-only: not a byte written
    with Store(results / "store.sqlite", readonly=True) as store:
        csv_path = export_grid(grid, store, tmp_path / "out")["trials.csv"]
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert list(trials.columns) == reader.fieldnames       # the same columns, in the same order
    assert len(trials) == len(rows) == 12
    for i, row in enumerate(rows):
        bad = {c: (row[c], trials.iloc[i][c]) for c in reader.fieldnames if not _same(row[c], trials.iloc[i][c])}
        assert not bad, (i, bad)
    assert list(trials["hash"]) == [r["hash"] for r in rows]


def test_the_frames_hold_what_the_store_was_given(filled):
    path, _, results, cell = filled
    trials, history = raygap.results(path, results_dir=results)
    assert set(zip(trials.label, trials["data.val_fraction"], trials.seed, strict=True)) == set(cell)
    assert trials.status.value_counts().to_dict() == {"done": 5, "pending": 5, "failed": 1, "running": 1}
    a = trials[(trials.label == "A") & (trials["data.val_fraction"] == 0.1) & (trials.seed == 1)].iloc[0]
    assert a["metric.acc"] == 0.9 and a["metric.macro_f1"] == pytest.approx(0.8) and a.status == "done"
    assert a["wall_seconds"] == 2.5 and a.device == "cpu" and a.attempts == 1
    assert a["config.optim.lr"] == cell["A", 0.1, 1].config.flat()["optim.lr"] and a["config.seed"] == 1
    assert a["config.data.val_fraction"] == 0.1 and a["config.model.width"] == 4
    a2 = trials[(trials.label == "A2") & (trials["data.val_fraction"] == 0.1) & (trials.seed == 1)].iloc[0]
    assert a2.hash == a.hash and a2["metric.acc"] == 0.9           # one trial, two cells
    b = trials[(trials.label == "B") & (trials.seed == 1) & (trials["data.val_fraction"] == 0.1)].iloc[0]
    assert b.status == "failed" and b.error.startswith("TrialDiverged") and math.isnan(b["metric.acc"])
    assert b["config.optim.lr"] == 0.2
    # history: once per trial (A2 is A), 2 epochs for each done trial, 1 so far for the running one
    assert list(history.columns[:2]) == ["hash", "epoch"] and len(history) == 3 * 2 + 1
    assert history.groupby("hash").size().to_dict() == {
        **{cell[k].key: 2 for k in ACC}, cell["B", 0.2, 0].key: 1}
    h = history[history.hash == cell["A", 0.1, 0].key].set_index("epoch")
    assert h.loc[1, "val_acc"] == 0.6 and h.loc[0, "gap.audio"] == 0.25 and h.loc[1, "stage"] == "adaptive"


def test_a_whole_store_every_cell_of_every_grid_and_the_trials_no_cell_uses(filled):
    path, grid, results, cell = filled
    other = load_grid(path, sets=["train.epochs=3"])
    with Store(results / "store.sqlite") as store:
        store.register(other)                                  # a second variant: 12 more cells, pending
        store.mark_running("f" * 16, {"seed": 7, "optim": {"lr": 0.3}})
        store.save_done("f" * 16, {"acc": 0.5}, [{"epoch": 0, "val_acc": 0.45}], 1.0, {})
    trials, history = raygap.results(results)
    assert trials.columns[0] == "grid" and len(trials) == 12 + 12 + 1
    assert trials.grid.value_counts().to_dict() == {grid.store_name: 12, other.store_name: 12}
    assert trials.grid.isna().sum() == 1 and trials.grid.isna().iloc[-1]      # the trial no cell uses: last
    mine = trials[trials.grid == grid.store_name].reset_index(drop=True)
    by_grid, _ = raygap.results(path, profile="noprofile", results_dir=results)
    for c in ("label", "seed", "hash", "status", "metric.acc", "config.optim.lr", "config.train.epochs"):
        assert [None if isinstance(v, float) and math.isnan(v) else v for v in mine[c]] == \
            [None if isinstance(v, float) and math.isnan(v) else v for v in by_grid[c]], c
    assert set(trials[trials.grid == other.store_name].status) == {"pending"}
    assert set(trials[trials.grid == other.store_name]["config.train.epochs"]) == {3}
    orphan = trials[trials.hash == "f" * 16].iloc[0]
    assert orphan.seed == 7 and orphan["config.optim.lr"] == 0.3 and orphan["metric.acc"] == 0.5
    assert orphan.isna()["label"] and orphan.status == "done"
    assert len(history) == 3 * 2 + 1 + 1 and history[history.hash == "f" * 16].val_acc.tolist() == [0.45]
    # the store file itself, too
    assert len(raygap.results(results / "store.sqlite").trials) == 25


def test_the_default_settings_are_those_the_grid_last_ran_with(filled):
    path, grid, results, _ = filled
    other = load_grid(path, sets=["train.epochs=3"])
    with Store(results / "store.sqlite") as store:
        store.register(other)
    assert list(raygap.results(path, results_dir=results).trials.hash) == [t.key for t in other.trials]
    assert list(raygap.results(path, profile="noprofile", results_dir=results).trials.hash) == \
        [t.key for t in grid.trials]
    assert list(raygap.results(path, sets=["train.epochs=3"], results_dir=results).trials.hash) == \
        [t.key for t in other.trials]


def test_no_store_is_one_clear_error_and_nothing_is_created(filled, tmp_path):
    path, _, results, _ = filled
    for call in (lambda: raygap.results(path, results_dir=tmp_path / "empty"),
                 lambda: raygap.results(tmp_path / "empty"),
                 lambda: raygap.results(tmp_path / "empty" / "store.sqlite")):
        with pytest.raises(StoreError) as e:
            call()
        assert str(tmp_path / "empty" / "store.sqlite") in str(e.value) and "no trial store" in str(e.value)
        assert "\n" not in str(e.value)
        assert not (tmp_path / "empty").exists()
    with pytest.raises(ConfigError, match="a store holds every trial"):
        raygap.results(results, profile="demo")
    never = tmp_path / "never.yaml"
    never.write_text(path.read_text().replace("name: dfx", "name: never"))
    with pytest.raises(ConfigError, match="has never run with the results folder"):
        raygap.results(never, results_dir=results)
    with pytest.raises(ConfigError, match="train.epochz"):
        raygap.results(path, sets=["train.epochz=3"], results_dir=results)


def test_import_raygap_is_cheap_and_results_imports_neither_ray_nor_torch(filled):
    path, _, results, _ = filled
    code = (f"import sys, raygap\nassert 'pandas' not in sys.modules and 'raygap.grid' not in sys.modules\n"
            f"t, h = raygap.results({str(path)!r}, results_dir={str(results)!r})\n"
            f"s, _ = raygap.results({str(results)!r})\n"
            f"assert len(t) == 12 and len(h) == 7 and len(s) == 12 and 'pandas' in sys.modules")
    assert loaded_after(code) == []


def _docs_example() -> str:
    text = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    section = text.split("## Results in Python", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, blocks
    return blocks[0]


def test_the_example_in_the_docs_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grids").symlink_to(ROOT / "grids")
    grid = load_grid("grids/table2.yaml", profile="demo")
    accs = {0: 0.70, 1: 0.72, 2: 0.74}
    with Store(tmp_path / "results" / "store.sqlite") as store:
        store.register(grid)
        for t in grid.distinct().values():
            hist = [{"epoch": e, "val_acc": v} for e, v in enumerate((0.5, 0.7 + t.seed / 100, 0.6))]
            store.save_done(t.key, {"acc": accs[t.seed], "macro_f1": 0.5}, hist, 1.0, {})
    out = io.StringIO()
    scope: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(_docs_example(), "docs/results.md", "exec"), scope)
    stats = scope["done"].groupby(["label", "data.name"])["metric.acc"].agg(["mean", "std", "count"])
    assert stats.loc[("Baseline (Concat)", "avdigits")].tolist() == [pytest.approx(0.72), pytest.approx(0.02), 3]
    assert set(scope["best"].epoch) == {1} and sorted(set(scope["best"].val_acc)) == [0.7, 0.71, 0.72]
    printed = out.getvalue()
    assert re.search(r"Baseline \(Concat\)\s+avdigits\s+0\.72\s+0\.02\s+3", printed), printed
    assert len(scope["trials"]) == len(grid.trials) and len(scope["done"]) == len(grid.trials)
