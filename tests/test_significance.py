"""Paired comparisons against a grid's reference row: numbers by hand (t with 2 degrees of
freedom has a closed-form CDF, F(t) = 1/2 + t / (2 sqrt(2 + t^2)), and t_0.975 = 4.302653),
Benjamini-Hochberg by hand, and the tables that carry them."""
import math

import pytest
import yaml

from raygap.errors import ConfigError
from raygap.export import export_grid
from raygap.grid import load_grid
from raygap.store import Store
from raygap.table import read_table
from _tiny import avdigits

ACC = {"Ref": [0.80, 0.70, 0.90], "B": [0.82, 0.75, 0.91], "C": [0.80, 0.70, 0.90], "D": [0.81, 0.71, 0.91],
       "E": [0.90, 0.82, 1.01]}


def _grid(tmp_path, reference="Ref"):
    rows = {"Ref": {"method": {"name": "concat"}}, "B": {"optim": {"lr": 0.2}}, "C": {"optim": {"lr": 0.3}},
            "D": {"optim": {"lr": 0.4}}, "E": {"optim": {"lr": 0.5}}}
    doc = {"name": "sig", "base": {"data": avdigits(), "model": {"backbone": "small", "width": 4},
                                   "train": {"epochs": 2, "device": "cpu"}},
           "rows": rows, "seeds": [0, 1, 2], "metrics": ["acc"], "resources": {"cpu": 1, "gpu": 0},
           "reference": reference}
    (tmp_path / "sig.yaml").write_text(yaml.safe_dump(doc))
    return load_grid(tmp_path / "sig.yaml")


def _fill(tmp_path, grid) -> Store:
    store = Store(tmp_path / "store.sqlite")
    store.register(grid)
    for t in grid.trials:
        store.mark_running(t.key, {})
        store.save_done(t.key, {"acc": ACC[t.label][t.seed]}, [{"epoch": 0}], 1.0, {})
    return store


def t2_p(t: float) -> float:
    return 2 * (1 - (0.5 + abs(t) / (2 * math.sqrt(2 + t * t))))


def test_paired_differences_intervals_and_adjusted_p_by_hand(tmp_path):
    grid = _grid(tmp_path)
    with _fill(tmp_path, grid) as store:
        comps = {c["row"]: c for c in read_table(grid, store).comparisons}
    assert set(comps) == {"B", "C", "D", "E"}
    # B - Ref in percent: 2, 5, 1 -> mean 8/3, sd sqrt(13/3), t = mean / (sd / sqrt 3)
    b = comps["B"]
    sd = math.sqrt(13 / 3)
    t = (8 / 3) / (sd / math.sqrt(3))
    assert b["n"] == 3 and b["mean_diff"] == pytest.approx(8 / 3)
    assert b["p"] == pytest.approx(t2_p(t), rel=1e-6)
    half = 4.302653 * sd / math.sqrt(3)
    assert (b["ci_low"], b["ci_high"]) == (pytest.approx(8 / 3 - half, rel=1e-5), pytest.approx(8 / 3 + half, rel=1e-5))
    # E - Ref: 10, 12, 11 -> mean 11, sd 1
    e = comps["E"]
    assert e["p"] == pytest.approx(t2_p(11 / (1 / math.sqrt(3))), rel=1e-6)
    # Benjamini-Hochberg over the two tested comparisons: the smaller p times 2, the larger as is
    assert e["p_adj"] == pytest.approx(2 * e["p"]) and b["p_adj"] == pytest.approx(b["p"])
    # nothing to test: the same values, or the same difference in every seed
    assert comps["C"]["p"] is None and comps["C"]["note"] == "identical in every seed"
    assert comps["D"]["p"] is None and comps["D"]["note"] == "the same difference in every seed"
    assert comps["D"]["mean_diff"] == pytest.approx(1.0)


def test_the_tables_carry_the_comparison_and_say_how_it_was_made(tmp_path):
    grid = _grid(tmp_path)
    with _fill(tmp_path, grid) as store:
        paths = export_grid(grid, store, tmp_path / "out")
    md = paths["table.md"].read_text()
    assert "## Paired differences vs Ref" in md and "Benjamini-Hochberg" in md and "2 degree(s) of freedom" in md
    section = md.split("## Paired differences vs Ref")[1]
    assert "| E | 91.00 ± 9.54 (n=3) |" in md.split("## Paired")[0]        # the table itself is unchanged
    row_e = next(line for line in section.splitlines() if line.startswith("| E |"))
    assert "+11.00 \\[" in row_e and row_e.rstrip(" |").endswith("‡")            # adjusted p < 0.05
    assert "| C | +0.00 (identical in every seed) |" in section
    csv_lines = paths["significance.csv"].read_text().splitlines()
    assert csv_lines[0] == "row,versus,column,metric,n,mean_diff,ci_low,ci_high,p,p_adj,note" and len(csv_lines) == 5
    assert all(line.split(",")[1] == "Ref" for line in csv_lines[1:])
    tex = paths["table.tex"].read_text()
    assert "paired differences vs Ref" in tex and r"$^\ddagger$" in tex


def test_a_reference_that_is_not_a_row_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        _grid(tmp_path, reference="Reff")
    assert "reference" in str(e.value) and "nearest row: 'Ref'" in str(e.value)


def test_select_from_adaptive_and_the_warmup_mark(tmp_path):
    from raygap.config import resolve
    from raygap.selection import final_metrics, select_epoch

    hist = [{"epoch": 0, "stage": "warmup", "val_acc": 0.9, "test_acc": 0.5},
            {"epoch": 1, "stage": "warmup", "val_acc": 0.7, "test_acc": 0.6},
            {"epoch": 2, "stage": "adaptive", "val_acc": 0.8, "test_acc": 0.7},
            {"epoch": 3, "stage": "adaptive", "val_acc": 0.8, "test_acc": 0.75}]
    assert select_epoch(hist, "acc") == 0 and select_epoch(hist, "acc", "adaptive") == 2   # earliest of ties
    assert final_metrics(hist, "acc")["best_in_warmup"] == 1.0
    m = final_metrics(hist, "acc", "adaptive")
    assert m["acc"] == 0.7 and m["best_epoch"] == 2 and m["best_in_warmup"] == 0.0
    assert "best_in_warmup" not in final_metrics([{k: v for k, v in h.items() if k != "stage"} for h in hist], "acc")
    # select_from is chosen at export from the stored history: one trial serves both readings
    assert resolve({}).key() == resolve({"train": {"select_from": "all"}}).key() \
        == resolve({"train": {"select_from": "adaptive"}}).key()
    # ... and one shared warm-up (its key hashes everything else outside method:, epochs included)
    gap = {"method": {"name": "gap_adaptive"}}
    w = resolve(gap).warmup()
    assert w is not None and w == resolve({**gap, "train": {"select_from": "adaptive"}}).warmup()
    assert w != resolve({**gap, "train": {"epochs": 70}}).warmup()
    # the table marks a cell with how many seeds picked a warm-up epoch
    grid = _grid(tmp_path)
    with Store(tmp_path / "store.sqlite") as store:
        store.register(grid)
        for t in grid.trials:
            store.mark_running(t.key, {})
            store.save_done(t.key, {"acc": ACC[t.label][t.seed], "best_in_warmup": float(t.label == "B" and t.seed < 2)},
                            [{"epoch": 0}], 1.0, {})
        paths = export_grid(grid, store, tmp_path / "out")
    md = paths["table.md"].read_text()
    assert "| B | 82.67 ± 8.02 (n=3) †2 |" in md and "in k of the seeds the epoch picked on validation" in md
    assert r"$^\dagger$2" in paths["table.tex"].read_text()


def _paper_grid(tmp_path):
    doc = {"name": "rep", "base": {"model": {"backbone": "small", "width": 4}, "train": {"epochs": 2, "device": "cpu"}},
           "rows": {"Ref": {"method": {"name": "concat"}}, "B": {"optim": {"lr": 0.2}}},
           "columns": {"data.name": ["cremad"]}, "seeds": [0, 1, 2], "metrics": ["acc"], "reference": "Ref",
           "resources": {"cpu": 1, "gpu": 0},
           "paper_results": {"Ref": {"cremad": {"acc": 79.0}}, "B": {"cremad": {"acc": 85.5}}}}
    (tmp_path / "rep.yaml").write_text(yaml.safe_dump(doc))
    prof = tmp_path / "profiles"
    prof.mkdir()
    (prof / "demo.yaml").write_text(yaml.safe_dump({"columns": {"data.name": ["avdigits"]}}))
    (prof / "paper.yaml").write_text(yaml.safe_dump({"description": "this test's paper settings: the grid's own"}))
    return tmp_path / "rep.yaml", prof


def _report(tmp_path, grid) -> str:
    from raygap.reproduction import reproduction_report

    with Store(tmp_path / "store.sqlite") as store:
        store.register(grid)
        for t in grid.trials:
            store.mark_running(t.key, {})
            store.save_done(t.key, {"acc": ACC[t.label][t.seed]}, [{"epoch": 0}], 1.0,
                            {"warmup_from": "x"} if t.label == "B" and t.seed == 0 else {})
        return reproduction_report(read_table(grid, store, tmp_path / "out"), tmp_path / "out").read_text()


def test_report_sets_ours_beside_the_papers_numbers(tmp_path):
    path, prof = _paper_grid(tmp_path)
    md = _report(tmp_path, load_grid(path, profile="paper", profiles_dir=prof))
    # Ref: ours 80.00 ± 10.00 vs the paper's 79.00 -> +1.00; B: 82.67 vs 85.50 -> -2.83
    assert "| Ref | 79.00 | 80.00 ± 10.00 (n=3) | +1.00 |" in md
    assert "| B | 85.50 | 82.67 ± 8.02 (n=3) | -2.83 |" in md
    assert "Not comparable" not in md and "## Which differences are real: paired differences vs Ref" in md
    assert "optim.lr: 0.002" in md                             # the reference row's settings
    assert "Shared warm-ups: 1 of the 6 done trials started from the end of a warm-up" in md
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "Reproduction report: rep" in html and "85.50" in html


def test_report_with_set_items_lists_them_and_computes_no_difference(tmp_path):
    path, prof = _paper_grid(tmp_path)
    grid = load_grid(path, profile="paper", profiles_dir=prof, sets=["train.epochs=3", "model.width=8"])
    md = _report(tmp_path, grid)
    assert "--set in force: train.epochs=3, model.width=8." in md
    assert "**Not comparable with the paper**: no cell runs with the paper's settings" in md
    assert "**Settings that differ from the paper's** (2 of 2 cells;" in md
    assert "- model.width: ours 8; the paper's 4 (raygap's reading (docs/method.md); 2 cell(s))" in md
    assert "- train.epochs: ours 3; the paper's 2 (raygap's reading (docs/method.md); 2 cell(s))" in md
    # the paper's number beside ours, and no "ours − paper" number
    assert "| Ref | 79.00 | 80.00 ± 10.00 (n=3) | (settings differ) |" in md
    assert "| B | 85.50 | 82.67 ± 8.02 (n=3) | (settings differ) |" in md
    # the settings table marks what the paper states and what is read
    assert "| optim.lr | 0.002 | 0.002 | stated: initial learning rate 2e-3 (Section IV-B) |" in md
    assert "| train.epochs | 3 | 2 | raygap's reading (docs/method.md) |" in md and "method.alpha" not in md


def test_report_of_a_demo_run_says_it_is_not_comparable(tmp_path):
    path, prof = _paper_grid(tmp_path)
    md = _report(tmp_path, load_grid(path, profile="demo", profiles_dir=prof))
    assert "**Not comparable with the paper**" in md and "## The paper's numbers (for reference)" in md
    assert "| B | 85.50 |" in md and "| B | 82.67 ± 8.02 (n=3) |" in md


def test_an_export_with_the_same_inputs_reuses_the_comparisons_without_scipy_stats(tmp_path):
    """table.json keeps the comparisons with a digest of their inputs: a re-export of the same
    results (a fully cached re-run) writes the same tables without importing scipy.stats, and a
    changed value is tested again."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    grid = _grid(tmp_path)
    out = tmp_path / "out"
    with _fill(tmp_path, grid) as store:
        first = {k: Path(p).read_text() for k, p in export_grid(grid, store, out).items() if k != "table.json"}
    kept = json.loads((out / "table.json").read_text())["comparisons"]
    assert len(kept["rows"]) == 4 and len(kept["inputs"]) == 16
    again = f"""
import json, sys
from pathlib import Path
from raygap.export import export_grid
from raygap.grid import load_grid
from raygap.store import Store
with Store({str(tmp_path / 'store.sqlite')!r}) as store:
    paths = export_grid(load_grid({str(tmp_path / 'sig.yaml')!r}), store, {str(out)!r})
print(json.dumps({{"scipy.stats": "scipy.stats" in sys.modules,
                  "files": {{k: Path(p).read_text() for k, p in paths.items() if k != "table.json"}}}}))
"""
    r = subprocess.run([sys.executable, "-c", again], capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["scipy.stats"] is False and res["files"] == first
    assert json.loads((out / "table.json").read_text())["comparisons"] == kept
    # one value changes: B's comparison is tested again (B - Ref in percent: 2, 5, 3 -> mean 10/3, sd sqrt(7/3))
    with Store(tmp_path / "store.sqlite") as store:
        b2 = next(t for t in grid.trials if t.label == "B" and t.seed == 2)
        store.forget([b2.key])                  # as --rerun does: a done row changes only after that
        store.register(grid)
        store.mark_running(b2.key, {})
        store.save_done(b2.key, {"acc": 0.93}, [{"epoch": 0}], 1.0, {})
        comps = {c["row"]: c for c in read_table(grid, store, out).comparisons}
        export_grid(grid, store, out)
    assert comps["B"]["mean_diff"] == pytest.approx(10 / 3)
    assert comps["B"]["p"] == pytest.approx(t2_p((10 / 3) / (math.sqrt(7 / 3) / math.sqrt(3))), rel=1e-6)
    assert json.loads((out / "table.json").read_text())["comparisons"]["inputs"] != kept["inputs"]


def _grid_of(tmp_path, rows: dict, metrics: list[str], name="fam"):
    doc = {"name": name, "base": {"data": avdigits(), "model": {"backbone": "small", "width": 4},
                                  "train": {"epochs": 2, "device": "cpu"}},
           "rows": rows, "seeds": [0, 1, 2], "metrics": metrics, "resources": {"cpu": 1, "gpu": 0},
           "reference": next(iter(rows))}
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    return load_grid(tmp_path / f"{name}.yaml")


def _store_of(tmp_path, grid, metrics_of, n_test=None) -> Store:
    store = Store(tmp_path / "store.sqlite")
    store.register(grid)
    for t in grid.trials:
        store.mark_running(t.key, {})
        store.save_done(t.key, metrics_of(t.label, t.seed), [{"epoch": 0}], 1.0,
                        {} if n_test is None else {"n_test": n_test})
    return store


def test_benjamini_hochberg_is_one_family_per_metric(tmp_path):
    rows = {"Ref": {"method": {"name": "concat"}}, "B": {"optim": {"lr": 0.2}}, "E": {"optim": {"lr": 0.5}}}
    grid = _grid_of(tmp_path, rows, ["acc", "macro_f1"])
    f1 = {"Ref": [0.50, 0.60, 0.70], "B": [0.52, 0.61, 0.74], "E": [0.60, 0.72, 0.81]}
    with _store_of(tmp_path, grid, lambda lab, s: {"acc": ACC[lab][s], "macro_f1": f1[lab][s]}) as store:
        comps = {(c["row"], c["metric"]): c for c in read_table(grid, store).comparisons}
    # acc: B - Ref = 2, 5, 1 and E - Ref = 10, 12, 11, as in the first test: BH over these two only
    assert comps[("E", "acc")]["p_adj"] == pytest.approx(2 * t2_p(11 * math.sqrt(3)), rel=1e-6)
    assert comps[("B", "acc")]["p_adj"] == pytest.approx(t2_p((8 / 3) / (math.sqrt(13 / 3) / math.sqrt(3))), rel=1e-6)
    # macro-F1: B - Ref = 2, 1, 4 (mean 7/3, sd sqrt(7/3)); E - Ref = 10, 12, 11 (mean 11, sd 1)
    p_b = t2_p((7 / 3) / (math.sqrt(7 / 3) / math.sqrt(3)))
    p_e = t2_p(11 * math.sqrt(3))
    assert comps[("B", "macro_f1")]["p"] == pytest.approx(p_b, rel=1e-6)
    assert p_e < p_b           # BH within F1: the larger p as is, the smaller times 2 (not times 4 of all four)
    assert comps[("B", "macro_f1")]["p_adj"] == pytest.approx(p_b, rel=1e-6)
    assert comps[("E", "macro_f1")]["p_adj"] == pytest.approx(2 * p_e, rel=1e-6)


def test_the_share_of_data_kept_is_reported_but_not_tested(tmp_path):
    rows = {"Base": {"method": {"name": "warmup_objective"}},
            "tau=0.5": {"method": {"name": "gap_adaptive", "purify_tau": 0.5, "warmup_epochs": 1}}}
    grid = _grid_of(tmp_path, rows, ["data_pct", "acc"], name="t7")
    pct = {"Base": [100.0, 100.0, 100.0], "tau=0.5": [86.0, 84.0, 85.0]}
    acc = {"Base": [0.80, 0.70, 0.90], "tau=0.5": [0.82, 0.75, 0.91]}
    with _store_of(tmp_path, grid, lambda lab, s: {"data_pct": pct[lab][s], "acc": acc[lab][s]}) as store:
        comps = {c["metric"]: c for c in read_table(grid, store).comparisons}
        paths = export_grid(grid, store, tmp_path / "out")
    d = comps["data_pct"]
    assert d["mean_diff"] == pytest.approx(-15.0) and d["p"] is None and d["p_adj"] is None
    assert d["note"] == "the share of data kept: reported, not tested"
    # acc alone in its family: adjusted p is its p (2, 5, 1 percentage points)
    assert comps["acc"]["p_adj"] == pytest.approx(comps["acc"]["p"]) == pytest.approx(
        t2_p((8 / 3) / (math.sqrt(13 / 3) / math.sqrt(3))), rel=1e-6)
    md = paths["table.md"].read_text()
    assert "-15.00 (the share of data kept: reported, not tested)" in md
    assert "Data % is the share of data kept, set by the method's design: reported, not tested." in md


def test_the_same_count_difference_in_every_seed_is_not_t_tested_on_rounding(tmp_path):
    rows = {"Ref": {"method": {"name": "concat"}}, "Two more": {"optim": {"lr": 0.2}},
            "One two three": {"optim": {"lr": 0.3}}}
    grid = _grid_of(tmp_path, rows, ["acc"])
    counts = {"Ref": [57, 113, 140], "Two more": [59, 115, 142], "One two three": [58, 115, 143]}
    # x100, 59/200 - 57/200 is 1.0000000000000036, 115/200 - 113/200 is 1.0: unequal in the last bit only
    assert 59 / 200 * 100 - 57 / 200 * 100 != 115 / 200 * 100 - 113 / 200 * 100
    with _store_of(tmp_path, grid, lambda lab, s: {"acc": counts[lab][s] / 200}, n_test=200) as store:
        comps = {c["row"]: c for c in read_table(grid, store).comparisons}
    same = comps["Two more"]
    assert same["p"] is None and same["note"] == "the same difference in every seed"
    assert same["mean_diff"] == pytest.approx(1.0)
    # 1, 2, 3 more samples: 0.5, 1.0, 1.5 points, a real spread: mean 1, sd 0.5, t = 1 / (0.5 / sqrt 3)
    assert comps["One two three"]["p"] == pytest.approx(t2_p(2 * math.sqrt(3)), rel=1e-6)


def test_the_report_notes_where_the_paper_disagrees_with_itself():
    """Table III's Full Model on Kinetics-Sounds is the same trial as Table VI's rho = 0.95 (both
    are the paper's default config): the paper prints 72.61 in Table III and 72.42 in Table VI."""
    from pathlib import Path

    from raygap.comparability import paper_conflicts

    grids = Path(__file__).resolve().parent.parent / "grids"
    t3 = load_grid(grids / "table3.yaml", profile="paper")
    found = paper_conflicts(t3)
    assert ("Ours (Full Model)", "ks", "acc", 72.61, "table6", "rho=0.95", 72.42) in found
    assert all(here != there for _, _, _, here, _, _, there in found)
    # Table V's GMM(KL) is Table II's Ours (KL Gap): three datasets, three pairs of numbers
    t5 = load_grid(grids / "table5.yaml", profile="paper")
    kl = {(v, here, there) for label, v, _, here, other, olabel, there in paper_conflicts(t5)
          if label == "GMM(KL)" and other == "table2" and olabel == "Ours (KL Gap)"}
    assert kl == {("cremad", 78.63, 79.84), ("ave", 69.15, 69.65), ("ks", 71.83, 72.26)}


def test_the_tables_say_which_epochs_of_a_two_stage_row_were_eligible(tmp_path):
    from raygap.cells import selection_note

    one_stage = {"Ref": {"method": {"name": "concat"}}, "B": {"optim": {"lr": 0.2}}}
    assert selection_note(_grid_of(tmp_path, one_stage, ["acc"], name="plain")) == ""
    rows = {"Ref": {"method": {"name": "concat"}},
            "Ours": {"method": {"name": "gap_adaptive", "warmup_epochs": 1}},
            "Ours (adaptive)": {"method": {"name": "gap_adaptive", "warmup_epochs": 1, "alpha": 0.5},
                                "train": {"select_from": "adaptive"}}}
    grid = _grid_of(tmp_path, rows, ["acc"], name="mixed")
    assert selection_note(grid) == (
        "Epochs eligible for the reported number: Ours (adaptive): the adaptive stage's epochs only "
        "(train.select_from: adaptive); Ours: every epoch, the warm-up stage's included (train.select_from: all).")
    with _store_of(tmp_path, grid, lambda lab, s: {"acc": ACC["Ref"][s]}) as store:
        paths = export_grid(grid, store, tmp_path / "out")
    assert "Ours (adaptive): the adaptive stage's epochs only (train.select\\_from: adaptive)" in paths["table.md"].read_text()
    assert r"the adaptive stage's epochs only (train.select\_from: adaptive)" in paths["table.tex"].read_text()


HIST = [{"epoch": 0, "stage": "warmup", "val_acc": 0.9, "test_acc": 0.5},       # best on validation overall
        {"epoch": 1, "stage": "adaptive", "val_acc": 0.6, "test_acc": 0.9},
        {"epoch": 2, "stage": "adaptive", "val_acc": 0.8, "test_acc": 0.7}]     # best of the adaptive stage


def test_the_epoch_is_chosen_when_the_table_is_made_so_two_tables_share_one_trial(tmp_path):
    """Table II picks from every epoch, Table III from the adaptive stage only: the same stored
    trials (one key), two readings of their history. Stored metrics: what the trial reports
    (select_from: all); the adaptive reading comes from the history, not from them."""
    rows = {"Ours": {"method": {"name": "gap_adaptive", "warmup_epochs": 1}}}
    every = _grid_of(tmp_path, rows, ["acc"], name="every")
    staged_rows = {"Ours": {"method": {"name": "gap_adaptive", "warmup_epochs": 1},
                            "train": {"select_from": "adaptive"}}}
    staged = _grid_of(tmp_path, staged_rows, ["acc", "best_epoch"], name="staged")
    assert [t.key for t in every.trials] == [t.key for t in staged.trials]
    with Store(tmp_path / "store.sqlite") as store:
        store.register(every)
        store.register(staged)
        for t in every.trials:
            store.mark_running(t.key, {})
            # the metrics a trial stores for HIST: epoch 0 (val 0.9), test 0.5, in the warm-up
            store.save_done(t.key, {"acc": 0.5, "best_epoch": 0, "best_in_warmup": 1.0}, HIST, 1.0, {})
        a = export_grid(every, store, tmp_path / "a")["table.md"].read_text()
        b = export_grid(staged, store, tmp_path / "b")["table.md"].read_text()
        from raygap.dataframes import results
    assert "| Ours | 50.00 ± 0.00 (n=3) †3 |" in a          # epoch 0's test accuracy, a warm-up epoch in 3 seeds
    # adaptive: epochs 1 and 2 eligible; epoch 2 has the better validation (0.8 > 0.6): its test 0.7
    assert "| Ours | 70.00 ± 0.00 (n=3) | 2.00 ± 0.00 (n=3) |" in b and "†" not in b.split("\n\n")[0]
    df = results(tmp_path / "staged.yaml", results_dir=tmp_path).trials
    assert sorted(df["metric.acc"]) == [0.7, 0.7, 0.7] and sorted(df["metric.best_epoch"]) == [2, 2, 2]


def test_two_rows_that_are_one_trial_with_two_selections_are_one_line(tmp_path):
    rows = {"Ours": {"method": {"name": "gap_adaptive", "warmup_epochs": 1}},
            "Ours (adaptive)": {"method": {"name": "gap_adaptive", "warmup_epochs": 1},
                                "train": {"select_from": "adaptive"}}}
    with pytest.raises(ConfigError) as e:
        _grid_of(tmp_path, rows, ["acc"], name="both")
    msg = str(e.value)
    assert "rows 'Ours' and 'Ours (adaptive)' are the same trial" in msg and "train.select_from" in msg
    assert "both.yaml" in msg and "\n" not in msg


def test_a_row_set_versus_another_is_compared_with_it_too_by_hand(tmp_path):
    # E (say, a tuned row) also against B (its fixed row), beside both against Ref
    rows = {"Ref": {"method": {"name": "concat"}}, "B": {"optim": {"lr": 0.2}},
            "E": {"optim": {"lr": 0.5}, "versus": "B"}}
    grid = _grid_of(tmp_path, rows, ["acc"], name="vs")
    with _store_of(tmp_path, grid, lambda lab, s: {"acc": ACC[lab][s]}) as store:
        comps = {(c["row"], c["versus"]): c for c in read_table(grid, store).comparisons}
        paths = export_grid(grid, store, tmp_path / "out")
    assert set(comps) == {("B", "Ref"), ("E", "Ref"), ("E", "B")}
    # E - B in percent: 8, 7, 10 -> mean 25/3, sd sqrt(7/3), t = 25 / sqrt(7)
    eb = comps[("E", "B")]
    assert eb["n"] == 3 and eb["mean_diff"] == pytest.approx(25 / 3)
    p_eb, p_e, p_b = t2_p(25 / math.sqrt(7)), t2_p(11 * math.sqrt(3)), t2_p(8 / math.sqrt(13))
    assert eb["p"] == pytest.approx(p_eb, rel=1e-6)
    half = 4.302653 * math.sqrt(7 / 3) / math.sqrt(3)
    assert eb["ci_low"] == pytest.approx(25 / 3 - half, rel=1e-5)
    # Benjamini-Hochberg over all three acc comparisons: p_e < p_eb < p_b (0.0027, 0.011, 0.157),
    # so x3, x3/2 and x1, none capped by the next one up
    assert p_e < p_eb < p_b and 3 * p_e < 1.5 * p_eb < p_b
    assert comps[("E", "Ref")]["p_adj"] == pytest.approx(3 * p_e, rel=1e-6)
    assert eb["p_adj"] == pytest.approx(1.5 * p_eb, rel=1e-6)
    assert comps[("B", "Ref")]["p_adj"] == pytest.approx(p_b, rel=1e-6)
    md = paths["table.md"].read_text()
    first, second = md.split("## Paired differences vs Ref")[1].split("## Paired differences vs the row each is set against")
    assert "| B |" in first and "| E |" in first and "−" not in first
    row = next(line for line in second.splitlines() if line.startswith("| E − B |"))
    assert "+8.33 \\[" in row and row.rstrip(" |").endswith("‡")          # adjusted p 0.017 < 0.05
    assert "of both sections (1 tested in this one)" in second and "versus:" in second
    csv_rows = paths["significance.csv"].read_text().splitlines()[1:]
    assert [r.split(",")[:2] for r in csv_rows] == [["B", "Ref"], ["E", "Ref"], ["E", "B"]]
    tex = paths["table.tex"].read_text()
    assert "% paired differences vs the row each is set against (versus)" in tex and "E $-$ B & +8.33" in tex


@pytest.mark.parametrize("versus, problem, nearest_row", [("Bee", "'Bee' is not a row", "B"),
                                                          ("E", "'E' is the row itself", "Ref")])
def test_a_versus_that_is_no_other_row_is_one_line(tmp_path, versus, problem, nearest_row):
    rows = {"Ref": {"method": {"name": "concat"}}, "B": {"optim": {"lr": 0.2}},
            "E": {"optim": {"lr": 0.5}, "versus": versus}}
    with pytest.raises(ConfigError) as e:
        _grid_of(tmp_path, rows, ["acc"], name="vs")
    assert str(e.value) == (f"{tmp_path / 'vs.yaml'}: rows.E.versus: {problem} "
                            f"(nearest other row: {nearest_row!r})")
