"""Grid expansion: counts, merge order, profiles, --set, dedup, shared trials across the
paper's tables, unimplemented methods, the malformed-grid corpus (no Ray, no training)."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from raygap.cli import main as cli_main
from raygap.errors import ConfigError
from raygap.grid import count_cells_including_missing, count_trials, load_grid
from raygap.status import describe
from raygap.store import Store

ROOT = Path(__file__).resolve().parent.parent
GRIDS = ROOT / "grids"
BAD = Path(__file__).resolve().parent / "grids_bad"
TABLES = sorted(GRIDS.glob("table*.yaml"))


def write(tmp_path: Path, doc: dict, name: str = "g.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return p


@pytest.fixture
def profiles(tmp_path):
    d = tmp_path / "profiles"
    d.mkdir()
    (d / "p.yaml").write_text(yaml.safe_dump({
        "description": "test profile",
        "overlay": {"train": {"epochs": 7, "batch_size": 32}, "optim": {"lr": 0.05}},
        "overlay_by": {"method.name": {"gap_adaptive": {"method": {"warmup_epochs": 2, "rho": 0.5}}},
                       "optim.name": {"adam": {"optim": {"lr": 0.003}}}},
        "seeds": [0, 1], "resources": {"cpu": 2}}))
    (d / "cols.yaml").write_text(yaml.safe_dump({"columns": {"data.name": ["avdigits"]}, "seeds": [5]}))
    return d


# ----------------------------------------------------------------------------- expansion
def test_counts_rows_x_columns_x_seeds_with_sweep(tmp_path):
    g = write(tmp_path, {"name": "t", "base": {"method": {"name": "gap_adaptive"}},
                         "rows": {"A": {}, "B": {"method": {"alpha": 0.0}}},
                         "sweep": {"method.rho": [0.9, 0.8], "method.warmup_epochs": [1, 2, 3]},
                         "columns": {"data.val_fraction": [0.1, 0.2]}, "seeds": [0, 1, 2]})
    grid = load_grid(g)
    assert grid.row_labels[:3] == ["A", "B", "rho=0.9, warmup_epochs=1"]
    assert len(grid.row_labels) == 2 + 2 * 3
    assert len(grid.trials) == 8 * 2 * 3 == len(grid.distinct())
    t = next(t for t in grid.trials if t.label == "rho=0.8, warmup_epochs=3")
    assert (t.config.method.rho, t.config.method.warmup_epochs) == (0.8, 3)
    assert grid.columns == {"data.val_fraction": [0.1, 0.2]} and grid.seeds == [0, 1, 2]


def test_sweep_labels_use_the_full_key_when_leaves_collide(tmp_path):
    g = write(tmp_path, {"rows": {}, "sweep": {"data.val_fraction": [0.1], "data.test_fraction": [0.2]}})
    assert load_grid(g).row_labels == ["val_fraction=0.1, test_fraction=0.2"]
    g = write(tmp_path, {"base": {"optim": {"name": "sgd"}}, "rows": {},
                         "sweep": {"optim.gamma": [0.5], "method.gamma": [0.5]},
                         "columns": {"method.name": ["gap_adaptive"]}})
    assert load_grid(g).row_labels == ["optim.gamma=0.5, method.gamma=0.5"]


def test_merge_order_base_profile_overlay_by_row_column_set(tmp_path, profiles):
    g = write(tmp_path, {"name": "t", "base": {"train": {"epochs": 12, "eval_batch_size": 17},
                                               "method": {"name": "gap_adaptive"}},
                         "rows": {"A": {"train.batch_size": 16},          # dotted row keys work
                                  "C": {"method": {"name": "concat"}},
                                  "Adam": {"optim": {"name": "adam"}},
                                  "AdamLr": {"optim": {"name": "adam", "lr": 0.01}}},
                         "sweep": {"method.rho": [0.8]},
                         "columns": {"train.eval_batch_size": [100, 200]},
                         "resources": {"cpu": 4, "gpu": 0}})
    grid = load_grid(g, profile="p", profiles_dir=profiles, sets=["optim.weight_decay=0.001", "train.epochs=9"])
    a = next(t for t in grid.trials if t.label == "A")
    assert a.config.train.batch_size == 16           # row over profile overlay
    assert a.config.train.eval_batch_size == 100     # column over base
    assert a.config.optim.lr == 0.05                 # profile overlay over base default
    assert a.config.method.warmup_epochs == 2 and a.config.method.rho == 0.5   # overlay_by matched
    assert a.config.optim.weight_decay == 0.001 and a.config.train.epochs == 9          # --set over everything
    assert next(t for t in grid.trials if t.label == "rho=0.8").config.method.rho == 0.8  # row over overlay_by
    assert next(t for t in grid.trials if t.label == "Adam").config.optim.lr == 0.003     # overlay_by.optim.name
    assert next(t for t in grid.trials if t.label == "AdamLr").config.optim.lr == 0.01    # row over it
    assert a.resources == {"cpu": 2.0, "gpu": 0.0}   # profile resources over the grid's
    assert len(grid.trials) == 5 * 2 * 2             # the profile's seeds [0, 1]


def test_overlay_by_is_not_applied_to_other_methods(tmp_path, profiles):
    # warmup_epochs is a gap_adaptive key: applied to concat it would be rejected
    g = write(tmp_path, {"rows": {"C": {"method": {"name": "concat"}}, "D": {}},
                         "base": {"method": {"name": "gap_adaptive"}}})
    grid = load_grid(g, profile="p", profiles_dir=profiles, sets=["method.name=concat"])
    assert {t.config.method.name for t in grid.trials} == {"concat"}


def test_overlay_by_matches_default_values(tmp_path):
    d = tmp_path / "prof"
    d.mkdir()
    (d / "x.yaml").write_text(yaml.safe_dump({"overlay_by": {"data.name": {"avdigits": {"data": {"visual_corrupt": 0.4}}},
                                                             "method.name": {"concat": {"train": {"epochs": 5}}}}}))
    grid = load_grid(write(tmp_path, {"rows": {"A": {}}}), profile="x", profiles_dir=d)
    cfg = grid.trials[0].config                      # no data.name / method.name written anywhere
    assert cfg.data.visual_corrupt == 0.4 and cfg.train.epochs == 5


def test_a_by_key_of_a_method_or_dataset_matches_its_default_value(tmp_path):
    # a key of the method's (or dataset's) own params that no layer writes has its default:
    # gap_adaptive's `gap` is "prob", mosi's `target` is "regression"
    d = tmp_path / "prof"
    d.mkdir()
    (d / "x.yaml").write_text(yaml.safe_dump({"overlay_by": {"data.target": {"regression": {"train": {"epochs": 3}}}}}))
    g = write(tmp_path, {"base": {"method": {"name": "gap_adaptive", "warmup_epochs": 1}, "train": {"epochs": 4}},
                         "base_by": {"method.gap": {"prob": {"train": {"epochs": 2}}}},
                         "rows": {"default gap": {}, "kl gap": {"method": {"gap": "kl"}}}})
    assert {t.label: t.config.train.epochs for t in load_grid(g).trials} == {"default gap": 2, "kl gap": 4}
    m = write(tmp_path, {"base": {"data": {"name": "mosi"}, "method": {"name": "concat"}},
                         "rows": {"score": {}, "binary": {"data": {"target": "binary"}}}, "metrics": ["mae"]},
              name="m.yaml")
    grid = load_grid(m, profile="x", profiles_dir=d, skip_missing=True)
    assert {t.label: t.config.train.epochs for t in grid.trials} == {"score": 3, "binary": 100}


def test_base_by_sits_below_the_profile(tmp_path):
    d = tmp_path / "prof"
    d.mkdir()
    (d / "fast.yaml").write_text(yaml.safe_dump({"overlay_by": {"optim.name": {"adam": {"optim": {"lr": 0.003}}}}}))
    (d / "plain.yaml").write_text(yaml.safe_dump({"overlay": {"train": {"epochs": 3}}}))
    g = write(tmp_path, {"base_by": {"optim.name": {"adam": {"optim": {"lr": 1e-4}}}},
                         "rows": {"S": {}, "A": {"optim": {"name": "adam"}}}})
    lr = lambda grid: {t.label: t.config.optim.lr for t in grid.trials}
    assert lr(load_grid(g)) == {"S": 2e-3, "A": 1e-4}
    assert lr(load_grid(g, profile="plain", profiles_dir=d)) == {"S": 2e-3, "A": 1e-4}
    assert lr(load_grid(g, profile="fast", profiles_dir=d)) == {"S": 2e-3, "A": 0.003}


def test_a_rows_by_sets_a_baseline_per_dataset_and_a_bad_value_in_it_is_blamed(tmp_path):
    g = write(tmp_path, {"rows": {"OGM": {"method": {"name": "ogm_ge"},
                                          "by": {"data.name": {"ave": {"method": {"alpha": 0.1}}}}},
                                  "Concat": {"method": {"name": "concat"}}},
                         "columns": {"data.name": ["cremad", "ave"]}})
    alpha = {(t.label, t.column["data.name"]): t.config.to_dict()["method"].get("alpha") for t in load_grid(g).trials}
    assert alpha == {("OGM", "cremad"): 0.8, ("OGM", "ave"): 0.1, ("Concat", "cremad"): None, ("Concat", "ave"): None}
    bad = write(tmp_path, {"rows": {"OGM": {"method": {"name": "ogm_ge"},
                                            "by": {"data.name": {"ave": {"method": {"alpah": 0.1}}}}}},
                           "columns": {"data.name": ["cremad", "ave"]}})
    with pytest.raises(ConfigError) as e:
        load_grid(bad)
    msg = str(e.value)
    assert "rows.OGM.by.data.name.ave" in msg and "method.alpah" in msg and "alpha" in msg


def test_profile_columns_and_seeds_replace_the_grids(tmp_path, profiles):
    g = write(tmp_path, {"rows": {"A": {}}, "columns": {"data.name": ["cremad", "ave", "ks"]}, "seeds": [0, 1, 2]})
    grid = load_grid(g, profile="cols", profiles_dir=profiles)
    assert grid.columns == {"data.name": ["avdigits"]} and grid.seeds == [5]
    assert [(t.column, t.seed) for t in grid.trials] == [({"data.name": "avdigits"}, 5)]


def test_identical_cells_are_one_trial_with_both_memberships(tmp_path):
    g = write(tmp_path, {"rows": {"A": {}, "B": {"train": {"epochs": 100}}, "C": {"train": {"epochs": 5}}},
                         "seeds": [0, 1]})
    grid = load_grid(g)                              # epochs 100 is the default: A and B are one trial
    assert len(grid.trials) == 6 and len(grid.distinct()) == 4
    a = {t.seed: t.key for t in grid.trials if t.label == "A"}
    b = {t.seed: t.key for t in grid.trials if t.label == "B"}
    assert a == b and a[0] != a[1]


def test_resources_do_not_change_the_key(tmp_path):
    g = write(tmp_path, {"rows": {"A": {}, "B": {"resources": {"cpu": 3}}}})
    grid = load_grid(g)
    assert len(grid.distinct()) == 1 and [t.resources["cpu"] for t in grid.trials] == [1.0, 3.0]


def test_row_notes_and_column_labels(tmp_path):
    g = write(tmp_path, {"rows": {"A": {"note": "a footnote"}, "B": {"train": {"epochs": 5}}},
                         "notes": {"B": "another"}, "column_labels": {"avdigits": "AV-Digits"},
                         "columns": {"data.name": ["avdigits"]}})
    grid = load_grid(g)
    assert grid.notes == {"A": "a footnote", "B": "another"}
    assert grid.column_header({"data.name": "avdigits"}) == "AV-Digits"


# ----------------------------------------------------------------------------- the paper's tables
@pytest.mark.parametrize("profile", [None, *sorted(p.stem for p in (GRIDS / "profiles").glob("*.yaml"))])
@pytest.mark.parametrize("grid", sorted(p.name for p in GRIDS.glob("*.yaml")))
def test_every_shipped_grid_expands_under_every_profile(grid, profile):
    # (the paper profile once put every dataset on the tensor cache, which the in-memory MOSI of
    # the cpsl grid refuses: `raygap run grids/cpsl.yaml --profile paper` failed at load)
    g = load_grid(GRIDS / grid, profile=profile)
    assert g.trials and all(t.label in g.row_labels for t in g.trials)


@pytest.mark.parametrize("profile", ["demo", "paper", None])
def test_tables_share_the_full_model_trial(profile):
    cells = {}
    for g, lab in [("table2", "Ours (Prob Gap)"), ("table3", "Ours (Full Model)"), ("table4", "SGD (Reset State)"),
                   ("table5", "GMM(Prob)"), ("table6", "rho=0.95")]:
        grid = load_grid(GRIDS / f"{g}.yaml", profile=profile, skip_missing=True)
        cells[g] = {(tuple(t.column.items()), t.seed): t.key for t in grid.trials if t.label == lab}
        assert cells[g], (g, lab)
    full = cells["table3"]
    assert len(set(full.values())) == len(full)     # one trial per (dataset, seed)
    for g in ("table2", "table5", "table6"):
        assert cells[g] == full, g
    assert cells["table4"] and all(full[c] == k for c, k in cells["table4"].items())   # table4: CREMA-D, AVE


@pytest.mark.parametrize("profile", ["demo", "paper"])
def test_control_rows_are_shared_too(profile):
    key = lambda g, lab: {t.key for t in load_grid(GRIDS / g, profile=profile, skip_missing=True).trials
                          if t.label == lab}
    control = key("table3.yaml", "Warm-up objective (raygap control)")
    assert control == key("table2.yaml", "Warm-up objective (raygap control)") \
        == key("table7.yaml", "Baseline (warm-up objective)")
    assert key("table7.yaml", "Baseline (Concat)") == key("table2.yaml", "Baseline (Concat)")


def test_paper_tables_layout():
    expect = {"table2": (13, 3, ["acc", "macro_f1"]), "table3": (7, 3, ["acc"]), "table4": (4, 2, ["acc"]),
              "table5": (6, 3, ["acc"]), "table6": (5, 3, ["acc"]), "table7": (8, 3, ["data_pct", "acc"])}
    for name, (nrows, ncols, metrics) in expect.items():
        grid = load_grid(GRIDS / f"{name}.yaml", skip_missing=True)
        assert len(grid.row_labels) + len(grid.skipped) == nrows, name
        assert len(grid.columns["data.name"]) == ncols and grid.metrics == metrics and grid.seeds == [0, 1, 2]
        assert grid.description
        cfg = grid.trials[0].config
        assert (cfg.model.backbone, cfg.optim.momentum, cfg.train.batch_size, cfg.train.epochs) == \
            ("resnet18", 0.9, 64, 100)
    t6 = load_grid(GRIDS / "table6.yaml")
    assert t6.row_labels == ["rho=1.0", "rho=0.95", "rho=0.9", "rho=0.85", "rho=0.8"]
    t7 = load_grid(GRIDS / "table7.yaml")
    assert next(t.config.method.purify_tau for t in t7.trials if t.label == "purify_tau=0.95") == 0.95
    assert "raygap" in load_grid(GRIDS / "table3.yaml").notes["Warm-up objective (raygap control)"]


def test_table4_adam_learning_rate_per_profile():
    lr = lambda p: {t.label: t.config.optim.lr for t in load_grid(GRIDS / "table4.yaml", profile=p).trials}
    assert lr(None)["Adam (Reset State)"] == lr("paper")["Adam (Same State)"] == 1e-4
    assert lr("paper")["SGD (Same State)"] == 2e-3
    assert lr("demo")["Adam (Reset State)"] == 3e-3 and lr("demo")["SGD (Reset State)"] == 0.1
    assert "1e-4" in load_grid(GRIDS / "table4.yaml").description


def test_demo_and_paper_profiles():
    demo = load_grid(GRIDS / "table3.yaml", profile="demo")
    assert demo.columns == {"data.name": ["avdigits"]} and len(demo.trials) == 7 * 1 * 3
    full = next(t for t in demo.trials if t.label == "Ours (Full Model)").config
    assert (full.model.backbone, full.model.width, full.optim.lr, full.train.epochs, full.train.device,
            full.train.threads, full.method.warmup_epochs, full.data.visual_corrupt) == \
        ("small", 16, 0.1, 12, "cpu", 1, 4, 0.3)
    assert all(t.resources == {"cpu": 1.0, "gpu": 0.0} for t in demo.trials)
    paper = load_grid(GRIDS / "table3.yaml", profile="paper")
    full = next(t for t in paper.trials if t.label == "Ours (Full Model)").config
    assert (full.model.backbone, full.optim.lr, full.train.epochs, full.train.device, full.train.amp,
            full.method.warmup_epochs) == ("resnet18", 2e-3, 100, "auto", "none", 10)
    assert {t.column["data.name"] for t in paper.trials} == {"cremad", "ave", "ks"}
    assert all(t.resources == {"cpu": 4.0, "gpu": 0.5} for t in paper.trials)


def test_distinct_trials_fewer_than_naive():
    # Tables II-VII on 3 datasets x 3 seeds: cells shared between tables are one trial
    assert count_trials(TABLES, "paper") == (306, 375)
    assert count_cells_including_missing(TABLES, "paper") == (306, 375)   # every method is implemented
    assert count_trials(TABLES, "demo") == (105, 129)


def test_every_table2_method_is_implemented():
    grid = load_grid(GRIDS / "table2.yaml", profile="demo")
    assert grid.skipped == [] and len(grid.row_labels) == 13
    assert {t.config.method.name for t in grid.trials} == {
        "concat", "gblending", "ogm_ge", "greedy", "pmr", "mmcosine", "agm", "mla", "dnr", "opm_ogm",
        "gap_adaptive", "warmup_objective"}


# ----------------------------------------------------------------------------- unimplemented methods
def test_unimplemented_rows_fail_unless_skipped(tmp_path):
    doc = {"name": "future", "rows": {"Concat": {"method": {"name": "concat"}},
                                      "Next year": {"method": {"name": "future_method"}},
                                      "Typo": {"method": {"name": "gblendin"}}}}
    path = write(tmp_path, doc)
    with pytest.raises(ConfigError) as e:
        load_grid(path)
    line = e.value.line()
    assert "\n" not in line and path.name in line
    assert "future_method" in line and "'gblendin' -> 'gblending'?" in line and "--skip-missing" in line
    grid = load_grid(path, skip_missing=True)
    assert [lab for lab, _ in grid.skipped] == ["Next year", "Typo"]
    assert all("not implemented" in reason for _, reason in grid.skipped)
    assert grid.row_labels == ["Concat"] and {t.label for t in grid.trials} == {"Concat"}


def test_method_typo_gets_a_suggestion(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_grid(write(tmp_path, {"rows": {"X": {"method": {"name": "gap_adaptiv"}}}}))
    assert "did you mean 'gap_adaptiv' -> 'gap_adaptive'?" in e.value.line()


# ----------------------------------------------------------------------------- malformed grids
BAD_EXPECT = {
    "unknown_top_key.yaml": ("bse", "nearest valid key: base"),
    "unknown_trial_key.yaml": ("rows.Full: method.rhoo", "nearest valid key: method.rho"),
    "unknown_base_key.yaml": ("base", "optim.learning_rate"),
    "wrong_type.yaml": ("rows.Full: train.epochs", "expected an integer"),
    "empty_rows.yaml": ("rows", "no rows"),
    "bad_range.yaml": ("rows.Full: method.rho", "out of range"),
    "unknown_method.yaml": ("rows", "my_method"),
    "unknown_dataset.yaml": ("columns.data.name=avdigitz", "avdigitz"),
    "bad_yaml.yaml": ("", "invalid YAML"),
    "seeds_not_list.yaml": ("seeds", "expected a list"),
    "duplicate_seeds.yaml": ("seeds", "duplicate"),
    "columns_not_list.yaml": ("columns.data.name", "expected a list"),
    "sweep_not_list.yaml": ("sweep.method.rho", "expected a list"),
    "row_not_mapping.yaml": ("rows.A", "expected a mapping"),
    "note_for_missing_row.yaml": ("notes", "'Ful'"),
    "not_a_mapping.yaml": ("", "must be a mapping"),
    # the file itself (encoding, size, depth, duplicate keys)
    "binary.yaml": ("", "contains NUL bytes"),
    "utf16.yaml": ("", "is UTF-16 text; raygap reads UTF-8 (save the file as UTF-8)"),
    "latin1.yaml": ("", "not UTF-8 text: byte 0xe9 at line 2, column 17"),
    "deep_nesting.yaml": ("", "nested deeper than 32 levels"),
    "huge_integer.yaml": ("", "invalid YAML: an integer of more than 4300 digits"),
    "alias_bomb.yaml": ("", "more than 200000 values once YAML aliases are expanded"),
    "duplicate_key.yaml": ("line 5, column 3", "duplicate key 'A' (first on line 3)"),
    "huge_sweep.yaml": ("sweep", "100000 rows; a grid may expand to at most 10000 cells"),
    "too_many_cells.yaml": ("rows", "expands to 12000 cells"),
    "unknown_metric.yaml": ("metrics", "no trial of this grid reports 'acc_vis' (nearest: 'acc_visual')"),
    # the grid's own values, reported although the demo profile would override them
    "negative_cpu_under_profile.yaml": ("resources (rows.A): resources.cpu", "-2.0 is out of range (0.0, 1024.0]",
                                        "demo"),
    "inf_under_profile.yaml": ("base (rows.A): optim.lr", "expected a finite number, got inf", "demo"),
    "unknown_dataset_under_profile.yaml": ("base (rows.A): data.name", "'cremadd' is not one of", "demo"),
    # cross-field checks at load
    "cpu_zero.yaml": ("resources.cpu", "0.0 is out of range (0.0, 1024.0]"),
    "warmup_ge_epochs.yaml": ("rows.Ours: method.warmup_epochs", "5 >= train.epochs (5)"),
    "bad_pair.yaml": ("rows.Ours: method.pair", "'vision' is not a modality of this trial (audio, visual) "
                                                "(nearest: 'visual')"),
    "bad_modalities.yaml": ("rows.Audio only: data.modalities", "dataset avdigits has no modality 'txt'"),
    "too_few_modalities.yaml": ("rows.OGM: data.modalities", "method ogm_ge needs at least 2 modalities"),
    "cuda_without_gpu.yaml": ("rows.A: train.device", "cuda, but resources.gpu is 0"),
    # names that become folders
    "name_nul.yaml": ("name", "'tab\\x00le' cannot name a folder"),
    "name_long.yaml": ("name", "(300 characters) cannot name a folder"),
    "name_path.yaml": ("name", "'../outside' cannot name a folder"),
    "name_ray.yaml": ("name", "'ray' is reserved: results/ray is Tune's storage folder"),
}


def _bad(name: str) -> tuple[str, str, str | None]:
    where, problem, *profile = BAD_EXPECT[name]
    return where, problem, (profile[0] if profile else None)


def test_the_corpus_is_covered():
    assert sorted(p.name for p in BAD.glob("*.yaml")) == sorted(BAD_EXPECT)


@pytest.mark.parametrize("bad", sorted(BAD_EXPECT))
def test_malformed_grid_is_one_line_naming_file_and_key(bad):
    where, problem, profile = _bad(bad)
    with pytest.raises(ConfigError) as e:
        load_grid(BAD / bad, profile=profile)
    line = e.value.line()
    assert "\n" not in line and line.startswith(str(BAD / bad)), line
    assert where in line and problem in line, line


@pytest.mark.parametrize("bad", sorted(BAD_EXPECT))
def test_malformed_grid_through_the_cli_is_one_line_exit_2_within_seconds(bad, tmp_path, capsys):
    where, problem, profile = _bad(bad)
    t0 = time.perf_counter()
    code = cli_main(["run", str(BAD / bad), "--dry-run", "--results", str(tmp_path / "results")]
                    + (["--profile", profile] if profile else []))
    seconds = time.perf_counter() - t0
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1, (out, err)
    assert err.startswith(f"raygap: error: {BAD / bad}") and problem in err and "Traceback" not in err
    assert seconds < 10, f"{bad}: {seconds:.1f} s"                  # a bound against hangs, not a benchmark
    assert not (tmp_path / "results").exists()                       # a dry run creates nothing


def test_a_20_mb_grid_of_400000_rows_is_refused_at_once(tmp_path, capsys):
    p = tmp_path / "big.yaml"
    with open(p, "w") as f:
        f.write("name: big\nrows:\n")
        for i in range(400_000):
            f.write(f"  row number {i:06d} of a grid that is far too long: {{method: {{name: concat}}}}\n")
    assert p.stat().st_size > 20e6
    t0 = time.perf_counter()
    assert cli_main(["run", str(p), "--dry-run", "--results", str(tmp_path)]) == 2
    assert time.perf_counter() - t0 < 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MiB; raygap reads YAML files of at most 1 MiB" in err


def test_a_grid_is_validated_on_its_own_before_the_profile():
    # the same file loads with no profile, and the demo profile keeps reporting the grid's value
    with pytest.raises(ConfigError) as alone:
        load_grid(BAD / "negative_cpu_under_profile.yaml")
    with pytest.raises(ConfigError) as under:
        load_grid(BAD / "negative_cpu_under_profile.yaml", profile="demo")
    assert alone.value.line() == under.value.line()


def test_set_seed_runs_that_seed_only_in_its_own_results_folder(tmp_path):
    g = write(tmp_path, {"name": "s", "rows": {"A": {}}, "seeds": [0, 1, 2]})
    plain, one = load_grid(g), load_grid(g, sets=["seed=7"])
    assert plain.seeds == [0, 1, 2] and one.seeds == [7] and [t.seed for t in one.trials] == [7]
    assert one.trials[0].config.seed == 7 and plain.variant == "noprofile"
    assert one.variant.startswith("noprofile+set-") and one.variant != load_grid(g, sets=["seed=8"]).variant
    with pytest.raises(ConfigError) as e:
        load_grid(g, sets=["seed=-1"])
    assert e.value.line().startswith("--set: seed") and "integers in [0, 2**31)" in e.value.line()


def test_rerun_before_the_grid_keeps_the_grid(tmp_path, capsys):
    g = write(tmp_path, {"name": "r", "rows": {"A": {}}})
    key = load_grid(g).trials[0].key
    assert cli_main(["run", "--rerun", key[:6], str(g), "--dry-run", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{key}  rerun" in out and "would forget 1 stored trial(s)" in out
    assert cli_main(["run", "--rerun", "zz", str(g), "--dry-run", "--results", str(tmp_path)]) == 2
    assert "'zz' is not a trial hash" in capsys.readouterr().err


def test_a_grid_named_like_a_file_in_results_is_one_line(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    (results / "notes").write_text("mine")
    g = write(tmp_path, {"name": "notes", "rows": {"A": {}}})
    assert cli_main(["run", str(g), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{results / 'notes'}, which is a file" in err
    assert (results / "notes").read_text() == "mine"


def test_the_examples_error_format(tmp_path):
    p = write(tmp_path, {"rows": {"Full": {"method": {"name": "gap_adaptive", "rhoo": 0.9}}}}, "x.yaml")
    with pytest.raises(ConfigError) as e:
        load_grid(p)
    assert e.value.line() == f"{p}: rows.Full: method.rhoo: unknown key for method 'gap_adaptive' " \
                             "(nearest valid key: method.rho)"


def test_errors_from_profile_and_set_name_their_source(tmp_path):
    d = tmp_path / "prof"
    d.mkdir()
    (d / "broken.yaml").write_text(yaml.safe_dump({"overlay": {"train": {"epochs": 0}}}))
    (d / "typo.yaml").write_text(yaml.safe_dump({"overlay": {}, "sed": [1]}))
    g = write(tmp_path, {"rows": {"A": {}}})
    with pytest.raises(ConfigError) as e:
        load_grid(g, profile="broken", profiles_dir=d)
    assert e.value.line().startswith(str(d / "broken.yaml") + ": overlay") and "train.epochs" in e.value.line()
    with pytest.raises(ConfigError) as e:
        load_grid(g, profile="typo", profiles_dir=d)
    assert "typo.yaml: sed: unknown key (nearest valid key: seeds)" in e.value.line()
    with pytest.raises(ConfigError) as e:
        load_grid(g, profile="nope", profiles_dir=d)
    assert "no profile 'nope'" in e.value.line() and "broken" in e.value.line()
    with pytest.raises(ConfigError) as e:
        load_grid(g, sets=["train.epochs=-1"])
    assert e.value.line().startswith("--set") and "train.epochs" in e.value.line()
    with pytest.raises(ConfigError) as e:
        load_grid(g, sets=["train.epochs"])
    assert "KEY=VALUE" in e.value.line()


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_grid(tmp_path / "nope.yaml")
    assert "nope.yaml: no such file" in e.value.line()


def test_cli_exit_2_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "raygap", "run", str(BAD / "unknown_trial_key.yaml"), "--dry-run",
                        "--results", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown_trial_key.yaml" in lines[0] and "method.rhoo" in lines[0]


# ----------------------------------------------------------------------------- dry run
def test_describe_lists_every_cell_with_status_and_totals(tmp_path):
    g = write(tmp_path, {"name": "d", "rows": {"A": {}, "B": {"train": {"epochs": 100}}, "C": {"train": {"epochs": 5}}},
                         "seeds": [0, 1]})
    grid = load_grid(g)
    store = Store(tmp_path / "store.sqlite")
    a0 = next(t for t in grid.trials if t.label == "A" and t.seed == 0)
    c1 = next(t for t in grid.trials if t.label == "C" and t.seed == 1)
    store.save_done(a0.key, {"acc": 0.5}, [], 1.0, {})
    store.save_failed(c1.key, "boom")
    text = describe(grid, store)
    lines = text.splitlines()
    assert len(lines) == 1 + 6 + 1
    assert sum(1 for ln in lines if a0.key in ln and ln.rstrip().endswith("done")) == 2    # A and B share it
    assert any(c1.key in ln and ln.rstrip().endswith("failed") for ln in lines)
    assert lines[-1] == "6 cells, 4 distinct trials: 1 already done (reused), 3 to run"


def test_docs_grids_md_reproduces_the_grid_module_docstring():
    import raygap.grid

    text = (ROOT / "docs" / "grids.md").read_text()
    block = text.split("```\n", 1)[1].split("```", 1)[0]
    assert block.strip("\n") == raygap.grid.__doc__.strip("\n")
