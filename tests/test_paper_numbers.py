"""The paper's numbers, transcribed once into the grid files (``paper_results``), checked against
the paper's own text: each row's numbers, in the table's column order (dataset, then metric),
must be the line of that table in ../shared/papers/ whose label is that row's (tab-separated after
the label; PAPER_LABELS below pairs each grid row with the paper's label, written by hand), so two
rows swapped in a transcription fail."""
import re
from pathlib import Path

import pytest

from raygap.grid import load_grid

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT.parent / "shared" / "papers" / "quantifying-multimodal-imbalance-gmm-adaptive-loss.txt"
TABLES = {"table2": "TABLE II:", "table3": "TABLE III:", "table4": "TABLE IV:", "table5": "TABLE V:",
          "table6": "TABLE VI:", "table7": "TABLE VII:"}
PAPER_LABELS = {      # grid row -> the paper's label of that line, read off the paper's tables by hand
    "table2": {"Baseline (Concat)": "Baseline (Concat)", "G-Blending": "G-Blending [7]", "OGM-GE": "OGM-GE [6]",
               "PMR": "PMR [8]", "MMCosine": "MMCosine [9]", "AGM": "AGM [10]", "MLA": "MLA [16]", "D&R": "D&R [11]",
               "OPM&OGM": "OPM&OGM [32]", "Ours (Prob Gap)": "Ours (Prob Gap)", "Ours (KL Gap)": "Ours (KL Gap)"},
    "table3": {"Ours (Full Model)": "Ours (Full Model)",
               "Ours w/o L_f (α=0)": "Ours w/o \\mathcal{L}_f ($\\alpha = 0$)",
               "Ours w/o |g_i|² (β=0)": "Ours w/o $ g_i ^2$ ($\\beta = 0$)",
               "Ours w/o |g_i - u_0|² (γ=0)": "Ours w/o $ g_i - u_0 ^2$ ($\\gamma = 0$)",
               "Ours w/o w_i0, w_i1": "Ours w/o $w_{i,0}, w_{i,1}$",
               "Ours w/o L_a, L_v": "Ours w/o $\\mathcal{L}_a, \\mathcal{L}_v$"},
    "table4": {k: k for k in ("SGD (Reset State)", "Adam (Reset State)", "SGD (Same State)", "Adam (Same State)")},
    "table5": {k: k for k in ("GMM(Prob)", "GMM(KL)", "SMM(Prob)", "SMM(KL)", "LMM(Prob)", "LMM(KL)")},
    "table6": {"rho=1.0": "1.00", "rho=0.95": "0.95", "rho=0.9": "0.90", "rho=0.85": "0.85", "rho=0.8": "0.80"},
    "table7": {"Baseline (warm-up objective)": "Baseline", "purify_tau=0.5": "$\\geq 50\\%$",
               "purify_tau=0.6": "$\\geq 60\\%$", "purify_tau=0.7": "$\\geq 70\\%$",
               "purify_tau=0.8": "$\\geq 80\\%$", "purify_tau=0.9": "$\\geq 90\\%$",
               "purify_tau=0.95": "$\\geq 95\\%$"},
}
NUMBER = re.compile(r"(?<![\w.])\d+\.\d{2}(?![\d])")


def table_lines(text: str, title: str) -> list[tuple[str, list[str]]]:
    """(label, number sequence) of the lines of one table (from its title to the next blank-line gap)."""
    start = text.index(title)
    block = text[start:].split("\n\n", 2)[1]                  # the title line, then the table
    return [(line.split("\t", 1)[0], NUMBER.findall(line.split("\t", 1)[1] if "\t" in line else ""))
            for line in block.splitlines()]


@pytest.mark.skipif(not PAPER.exists(), reason=f"the paper's text is not at {PAPER}")
@pytest.mark.parametrize("grid", sorted(TABLES))
def test_each_transcribed_row_is_a_line_of_the_papers_table(grid):
    g = load_grid(ROOT / "grids" / f"{grid}.yaml")
    cols = g.columns["data.name"]
    lines = table_lines(PAPER.read_text(encoding="utf-8"), TABLES[grid])
    assert g.paper, "no paper_results"
    by_label = {lab: nums for lab, nums in lines if nums}
    assert set(PAPER_LABELS[grid]) == set(g.paper), "a row of paper_results has no paper label here, or one is gone"
    for label, per_col in g.paper.items():
        seq = [f"{per_col[c][m]:.2f}" for c in cols for m in g.metrics if m in per_col.get(c, {})]
        paper_label = PAPER_LABELS[grid][label]
        assert seq == by_label.get(paper_label), (
            f"{grid} {label}: {seq} is not the paper's line {paper_label!r} of {TABLES[grid]}: {by_label.get(paper_label)}")
    # every numeric line of the paper's table is transcribed (Table VII's 'Baseline' included)
    assert sorted(PAPER_LABELS[grid].values()) == sorted(by_label)


def test_a_transcription_naming_no_row_is_one_line(tmp_path):
    import yaml

    from raygap.errors import ConfigError

    doc = {"name": "p", "rows": {"A": {}}, "columns": {"data.name": ["cremad"]},
           "paper_results": {"B": {"cremad": {"acc": 1.0}}}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="paper_results: 'B' is not a row"):
        load_grid(tmp_path / "p.yaml")
