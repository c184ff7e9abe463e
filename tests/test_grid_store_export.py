"""Grid expansion, the SQLite trial store and the exported tables (no Ray)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from raygap.errors import ConfigError
from raygap.export import export_grid, fmt, status_text
from raygap.grid import count_trials, describe, load_grid
from raygap.store import Store

GRIDS = Path(__file__).resolve().parent.parent / "grids"
BAD = Path(__file__).resolve().parent / "grids_bad"


def write(tmp_path, doc, name="g.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def test_expansion_rows_sweep_columns_seeds_and_merge_order(tmp_path):
    prof = tmp_path / "profiles"
    prof.mkdir()
    (prof / "p.yaml").write_text(yaml.safe_dump({
        "overlay": {"train": {"epochs": 7, "batch_size": 32}},
        "overlay_by": {"method.name": {"gap_adaptive": {"method": {"warmup_epochs": 2, "rho": 0.5}}}},
        "seeds": [0, 1], "resources": {"cpu": 2}}))
    g = write(tmp_path, {"name": "t", "base": {"train": {"epochs": 3}, "method": {"name": "gap_adaptive"}},
                         "rows": {"A": {"train": {"batch_size": 16}}, "C": {"method": {"name": "concat"}}},
                         "sweep": {"method.rho": [0.9, 0.8]},
                         "columns": {"data.val_fraction": [0.1, 0.2]}})
    grid = load_grid(g, profile="p", sets=["train.eval_batch_size=99"], profiles_dir=prof)
    assert grid.row_labels == ["A", "C", "rho=0.9", "rho=0.8"]
    assert len(grid.trials) == 4 * 2 * 2
    a = next(t for t in grid.trials if t.label == "A")
    assert a.config.train.epochs == 7            # profile over base
    assert a.config.train.batch_size == 16       # row over profile
    assert a.config.train.eval_batch_size == 99  # --set over all
    assert a.config.method.warmup_epochs == 2 and a.config.method.rho == 0.5   # overlay_by matched
    swept = next(t for t in grid.trials if t.label == "rho=0.8")
    assert swept.config.method.rho == 0.8        # the row (sweep) wins over overlay_by
    c = next(t for t in grid.trials if t.label == "C")
    assert c.config.method.name == "concat"      # overlay_by not applied to another method
    assert a.resources == {"cpu": 2.0, "gpu": 0.0}
    assert {t.column["data.val_fraction"] for t in grid.trials} == {0.1, 0.2}


def test_identical_cells_are_one_trial(tmp_path):
    g = write(tmp_path, {"name": "d", "rows": {"A": {}, "B": {"train": {"epochs": 100}}}, "seeds": [0]})
    grid = load_grid(g)
    assert len(grid.trials) == 2 and len(grid.distinct()) == 1     # epochs 100 is the default


@pytest.mark.parametrize("profile", ["demo", "paper"])
def test_tables_share_the_full_model_trial(profile):
    keys = {}
    for g, lab in [("table2", "Ours (Prob Gap)"), ("table3", "Ours (Full Model)"), ("table4", "SGD (Reset State)"),
                   ("table5", "GMM(Prob)"), ("table6", "rho=0.95")]:
        grid = load_grid(GRIDS / f"{g}.yaml", profile=profile, skip_missing=True)
        keys[g] = {t.key for t in grid.trials if t.label == lab}
        assert keys[g], (g, lab)
    for g in ("table2", "table4", "table5", "table6"):
        assert keys[g] <= keys["table3"] and keys[g]
    assert keys["table2"] == keys["table3"] == keys["table5"] == keys["table6"]


def test_distinct_trials_fewer_than_naive():
    paths = sorted(GRIDS.glob("table*.yaml"))
    distinct, naive = count_trials(paths, "paper")
    assert distinct < naive


def test_unimplemented_rows_fail_unless_skipped():
    with pytest.raises(ConfigError) as e:
        load_grid(GRIDS / "table2.yaml", profile="demo")
    assert "ogm_ge" in e.value.line() and "--skip-missing" in e.value.line()
    grid = load_grid(GRIDS / "table2.yaml", profile="demo", skip_missing=True)
    assert "OGM-GE" in dict(grid.skipped) and "OGM-GE" not in grid.row_labels
    assert {"Baseline (Concat)", "Ours (Prob Gap)", "Ours (KL Gap)", "Warm-up objective"} <= set(grid.row_labels)


@pytest.mark.parametrize("bad", sorted(p.name for p in BAD.glob("*.yaml")))
def test_malformed_grids_give_one_line_and_exit_2(bad, tmp_path):
    r = subprocess.run([sys.executable, "-m", "raygap", "run", str(BAD / bad), "--dry-run", "--results", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert bad in lines[0]
    expected = {"unknown_top_key.yaml": "nearest valid key: base", "unknown_trial_key.yaml": "method.rho",
                "wrong_type.yaml": "train.epochs", "empty_rows.yaml": "no rows", "bad_range.yaml": "out of range",
                "unknown_method.yaml": "my_method", "unknown_dataset.yaml": "avdigitz",
                "bad_yaml.yaml": "invalid YAML", "seeds_not_list.yaml": "seeds", "row_not_mapping.yaml": "rows.A"}
    assert expected[bad] in lines[0]


def test_store_round_trip_and_done_is_never_overwritten(tmp_path):
    db = tmp_path / "store.sqlite"
    s = Store(db)
    s.mark_running("k1", {"seed": 0})
    s.record_epoch("k1", [{"epoch": 0}])
    assert s.get("k1")["status"] == "running" and s.get("k1")["history"] == [{"epoch": 0}]
    s.save_done("k1", {"acc": 0.5}, [{"epoch": 0}, {"epoch": 1}], 3.0, {"node": "n"})
    s.save_failed("k1", "late failure")
    s.mark_running("k1", {"seed": 0})
    rec = Store(db).get("k1")                       # a second connection sees it
    assert rec["status"] == "done" and rec["metrics"] == {"acc": 0.5} and rec["error"] is None
    s.save_failed("k2", "boom")
    assert s.status_of(["k1", "k2", "k3"]) == {"k1": "done", "k2": "failed"}
    assert s.done_keys() == {"k1"}
    assert s.forget(["k1"]) == 1 and s.get("k1") is None


def test_cell_format():
    assert fmt([80.0, 82.0, 84.0], 3) == "82.00 ± 2.00 (n=3)"
    assert fmt([70.0], 3) == "70.00 (n=1/3)"
    assert fmt([], 3) == "– (0/3)"


def test_exports_layout_partial_cells_and_atomic_writes(tmp_path):
    g = write(tmp_path, {"name": "ex", "rows": {"A": {}, "B": {"method": {"name": "warmup_objective"}}},
                         "columns": {"data.val_fraction": [0.1, 0.2]}, "seeds": [0, 1, 2],
                         "metrics": ["acc", "macro_f1"], "column_labels": {0.1: "V10", 0.2: "V20"},
                         "notes": {"B": "raygap's control"}})
    grid = load_grid(g)
    store = Store(tmp_path / "store.sqlite")
    store.register(grid)
    for t, acc in zip([t for t in grid.trials if t.label == "A" and t.column["data.val_fraction"] == 0.1],
                      (0.80, 0.82, 0.84), strict=True):
        store.save_done(t.key, {"acc": acc, "macro_f1": acc - 0.1}, [], 1.0, {})
    tb = [t for t in grid.trials if t.label == "B" and t.column["data.val_fraction"] == 0.2]
    store.save_done(tb[0].key, {"acc": 0.7, "macro_f1": 0.6}, [], 1.0, {})
    store.save_failed(tb[1].key, "TrialDiverged: nan")
    paths = export_grid(grid, store, tmp_path / "out")
    md = paths["table.md"].read_text()
    assert "| A | 82.00 ± 2.00 (n=3) | 72.00 ± 2.00 (n=3) | – (0/3) | – (0/3) |" in md
    assert "| B * | – (0/3) | – (0/3) | 70.00 (n=1/3) | 60.00 (n=1/3) |" in md
    assert "V10 acc" in md and "raygap's control" in md
    tex = paths["table.tex"].read_text()
    assert r"\toprule" in tex and r"\multicolumn{2}{c}{V10}" in tex and r"82.00 $\pm$ 2.00" in tex
    csv = paths["trials.csv"].read_text()
    assert csv.count("\n") == 1 + len(grid.trials) and "TrialDiverged" in csv and "config.optim.lr" in csv
    assert not list((tmp_path / "out").glob(".*tmp*"))
    st = status_text(grid, store)
    assert "4 done" in st and "1 failed" in st and "TrialDiverged" in st
    assert "already done (reused)" in describe(grid, store)
