"""report.html as a page (issue 27, "a report people look at"): a report of a grid shaped like
Table II under the paper profile (three datasets x two metrics, ours beside the paper's: 19
columns, the widest table raygap writes), with every kind of figure, opened in real headless
Chromium 1280 px wide: every image loaded, nothing wider than the window (the settings unfolded
too), the tables HTML tables with the grid's rows, the settings folded, and no request that
leaves the report's folder."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import yaml

from _chromium import Page, chromium
from raygap.figures import grid_figures
from raygap.grid import load_grid
from raygap.reproduction import OTHER, paper_report, report_names, reproduction_report, row_galleries
from raygap.store import Store
from raygap.table import read_table

needs_chromium = pytest.mark.skipif(chromium() is None, reason="no chromium on PATH (Debian: apt-get install chromium)")

COLS = ["cremad", "ave", "ks"]
REF, OURS = "Baseline (Concat)", "Ours (gap-adaptive)"
# the reference's accuracy per seed; ours is 5 points above it in every seed (+0.05, +0.052, +0.049)
BASE = [0.60, 0.66, 0.63]
LIFT = [0.050, 0.052, 0.049]


def _grid(tmp_path):
    paper = {row: {c: {"acc": 70.0 + i, "macro_f1": 68.0 + i} for c in COLS} for i, row in enumerate((REF, OURS))}
    doc = {"name": "page", "description": "Table II's shape: three datasets, accuracy and macro F1",
           "base": {"model": {"backbone": "small", "width": 4}, "train": {"epochs": 2, "device": "cpu"}},
           "rows": {REF: {"method": {"name": "concat"}}, OURS: {"method": {"name": "gap_adaptive", "warmup_epochs": 1}}},
           "columns": {"data.name": COLS}, "column_labels": {"cremad": "CREMA-D", "ave": "AVE", "ks": "KS"},
           "seeds": [0, 1, 2], "metrics": ["acc", "macro_f1"], "reference": REF,
           "resources": {"cpu": 1, "gpu": 0}, "paper_results": paper}
    (tmp_path / "page.yaml").write_text(yaml.safe_dump(doc))
    prof = tmp_path / "profiles"
    prof.mkdir()
    (prof / "paper.yaml").write_text(yaml.safe_dump({"description": "this test's paper settings: the grid's own"}))
    return load_grid(tmp_path / "page.yaml", profile="paper", profiles_dir=prof)


def _history(adaptive: bool) -> list[dict]:
    """Two epochs; the adaptive row's second one has a refit (what fig_fit and fig_evolution draw)."""
    hist = [{"epoch": e, "val_acc": 0.5 + 0.1 * e, "val_acc_audio": 0.45, "val_acc_visual": 0.3 + 0.05 * e}
            for e in range(2)]
    if adaptive:
        hist[1].update(gap_hist=[2, 5, 9, 5, 2], gap_hist_edges=[-2.5, -1.5, -0.5, 0.5, 1.5, 2.5],
                       gap_mean=0.4, gap_std=0.2, frac_w1_gt_half=0.3, fit_epoch=1, fit_family="gmm",
                       fit_pi=[0.7, 0.3], fit_mu=[-0.3, 0.8], fit_sigma=[0.6, 0.5])
    return hist


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("page")
    grid = _grid(tmp)
    results = tmp / "results"
    out = results / grid.name / grid.variant       # where `raygap report` puts one grid's report
    with Store(tmp / "store.sqlite") as store:
        store.register(grid)
        for t in grid.trials:
            acc = BASE[t.seed] + (LIFT[t.seed] if t.label == OURS else 0.0)
            store.mark_running(t.key, {})
            store.save_done(t.key, {"acc": acc, "macro_f1": acc - 0.02}, _history(t.label == OURS), 1.0, {})
        table = read_table(grid, store, out)
        figures = grid_figures(table, out / "figures")
        reproduction_report(table, out, figures)
        paper_report([(table, out, figures)], results)     # the several-grid report, its figures under page/<variant>/
    return out


PROBE = """(() => {
  const tables = [...document.querySelectorAll("table")].map(t => {
    let h = t.closest("details") ? t.closest("details").querySelector("summary") : t.previousElementSibling;
    while (h && !/^(H[1-6]|SUMMARY)$/.test(h.tagName)) h = h.previousElementSibling;
    return {after: h ? h.textContent : null, folded: !!t.closest("details"),
            rows: [...t.tBodies[0].rows].map(r => r.cells[0].textContent),
            right: t.getBoundingClientRect().right};
  });
  const widths = () => ({scroll: document.documentElement.scrollWidth, viewport: window.innerWidth});
  const folded = widths();
  const details = [...document.querySelectorAll("details")];
  const summaries = details.map(d => [d.querySelector("summary").textContent, d.open]);
  details.forEach(d => d.open = true);
  return {tables, folded, unfolded: widths(), summaries,
          images: [...document.images].map(i => [i.getAttribute("src"), i.complete, i.naturalWidth]),
          significant: [...document.querySelectorAll("td")].filter(td => td.textContent.includes("\u2021"))
                         .map(td => td.className),
          text: document.body.innerText};
})()"""


@needs_chromium
@pytest.mark.parametrize("several", [False, True], ids=["report.html", "report-paper.html"])
def test_the_report_page_in_chromium_at_1280_px(report, several):
    folder = report.parent.parent if several else report               # results/, or results/page/paper/
    page_file = folder / (report_names({report.name})[1] if several else "report.html")
    fig_dir = "page/paper/figures/" if several else "figures/"
    with Page(page_file.as_uri(), width=1280) as page:
        got = page.eval(PROBE)
        requests = page.requests
    # every figure drawn is on the page and loaded: the 2 table figures (acc, macro F1), 3 per cell of
    # the adaptive row (fit, gap evolution, accuracy; 3 datasets: 9), 1 per cell of the reference (3)
    pngs = sorted(p.name for p in (report / "figures").glob("*.png"))
    assert len(pngs) == 2 + 9 + 3
    srcs = [src for src, _, _ in got["images"]]
    assert all(s.startswith(fig_dir) for s in srcs) and sorted(s.removeprefix(fig_dir) for s in srcs) == pngs
    assert all(complete and width > 0 for _, complete, width in got["images"]), got["images"]
    # nothing wider than the window, folded or not
    for state in ("folded", "unfolded"):
        assert got[state]["viewport"] == 1280 and got[state]["scroll"] <= 1280, (state, got[state])
    # the tables are tables, with the grid's rows, none past the right edge
    by_heading = {t["after"]: t for t in got["tables"]}
    assert by_heading["Ours beside the paper"]["rows"] == [REF, OURS]
    assert by_heading[f"Which differences are real: paired differences vs {REF}"]["rows"] == [OURS]
    settings = by_heading["The main settings, ours and the paper's (stated or read)"]
    assert settings["folded"] and "optim.lr" in settings["rows"] and "data.name" in settings["rows"]
    assert all(t["right"] <= 1280 for t in got["tables"]), got["tables"]
    # the settings are folded away; the flat settings of the reference row are in the folded section
    assert got["summaries"] == [["The main settings, ours and the paper's (stated or read)", False],
                                ["Settings in force", False]]
    assert "optim.lr: 0.002" in got["text"]
    # ours is 5 points above the reference in every seed: every paired difference is marked (p_adj < 0.05),
    # the mark is highlighted and explained under the table
    assert len(got["significant"]) == 6 and set(got["significant"]) == {"significant"}
    assert "‡ adjusted p < 0.05" in got["text"]
    # the page asked for itself and its figures only, all in its folder
    assert requests and all(u.startswith(folder.as_uri() + "/") for u in requests), requests
    assert sorted(u.rsplit("/", 1)[1] for u in requests) == sorted([page_file.name, *pngs])


def test_report_md_shows_each_rows_figures_in_a_line(report):
    md = (report / "report.md").read_text()
    # the adaptive row: per dataset (in the grid's order) its fit, gap evolution and accuracy figures
    stems = [f"Ours_gap_adaptive_{c}_seed0_{k}" for c in COLS for k in ("fit", "gap_evolution", "accuracy")]
    line = " ".join(f"[![{s}](figures/{s}.png)](figures/{s}.png)" for s in stems)
    assert f"**{OURS}**\n\n{line}\n" in md
    assert "![table_acc](figures/table_acc.png)" in md
    html = (report / "report.html").read_text()
    # no script, every link and image in the report's folder
    assert "<script" not in html and re.findall(r'(?:src|href)="([^"]*)"', html)
    assert all(u.startswith("figures/") for u in re.findall(r'(?:src|href)="([^"]*)"', html))


def test_each_rows_figures_go_to_its_line_colliding_names_included(tmp_path):
    """"Ours α" and "Ours β" are both ``Ours`` in ASCII, so their figures carry a short hash of the
    label (raygap.figures); each still lands in its own row's line, columns in the grid's order and
    each cell's figures fit, gap evolution, accuracy; a figure of no row of the grid is kept apart."""
    doc = {"name": "greek", "base": {"model": {"backbone": "small", "width": 4}, "train": {"epochs": 2, "device": "cpu"}},
           "rows": {"Ours α": {"method": {"name": "concat"}}, "Ours β": {"method": {"name": "warmup_objective"}}},
           "columns": {"data.name": ["cremad", "ave"]}, "seeds": [0, 1], "metrics": ["acc"],
           "resources": {"cpu": 1, "gpu": 0}}
    (tmp_path / "greek.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True))
    grid = load_grid(tmp_path / "greek.yaml")
    a, b = (f"Ours_{hashlib.sha256(s.encode()).hexdigest()[:6]}" for s in ("Ours α", "Ours β"))
    names = [f"{b}_ave_seed1_accuracy", f"{a}_ave_seed0_accuracy", f"{a}_cremad_seed0_accuracy",
             f"{a}_cremad_seed0_fit", "Gone_cremad_seed0_fit", f"{b}_cremad_seed0_accuracy", "table_acc"]
    got = row_galleries(grid, [Path("figures") / f"{n}.png" for n in names])
    assert [(label, [f.stem for f in figs]) for label, figs in got] == [
        ("Ours α", [f"{a}_cremad_seed0_fit", f"{a}_cremad_seed0_accuracy", f"{a}_ave_seed0_accuracy"]),
        ("Ours β", [f"{b}_cremad_seed0_accuracy", f"{b}_ave_seed1_accuracy"]),
        (OTHER, ["Gone_cremad_seed0_fit"])]
