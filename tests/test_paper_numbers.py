"""The paper's numbers, transcribed once into the grid files (``paper_results``), checked against
the paper's own text: each row's numbers, in the table's column order (dataset, then metric),
must be one line of that table in ../shared/papers/ (tab-separated after the row's label)."""
import re
from pathlib import Path

import pytest

from raygap.grid import load_grid

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT.parent / "shared" / "papers" / "quantifying-multimodal-imbalance-gmm-adaptive-loss.txt"
TABLES = {"table2": "TABLE II:", "table3": "TABLE III:", "table4": "TABLE IV:", "table5": "TABLE V:",
          "table6": "TABLE VI:", "table7": "TABLE VII:"}
NUMBER = re.compile(r"(?<![\w.])\d+\.\d{2}(?![\d])")


def table_lines(text: str, title: str) -> list[list[str]]:
    """The number sequences of the lines of one table (from its title to the next blank-line gap)."""
    start = text.index(title)
    block = text[start:].split("\n\n", 2)[1]                  # the title line, then the table
    return [NUMBER.findall(line.split("\t", 1)[1] if "\t" in line else "") for line in block.splitlines()]


@pytest.mark.skipif(not PAPER.exists(), reason=f"the paper's text is not at {PAPER}")
@pytest.mark.parametrize("grid", sorted(TABLES))
def test_each_transcribed_row_is_a_line_of_the_papers_table(grid):
    g = load_grid(ROOT / "grids" / f"{grid}.yaml")
    cols = g.columns["data.name"]
    lines = table_lines(PAPER.read_text(encoding="utf-8"), TABLES[grid])
    assert g.paper, "no paper_results"
    used = []
    for label, per_col in g.paper.items():
        seq = [f"{per_col[c][m]:.2f}" for c in cols for m in g.metrics if m in per_col.get(c, {})]
        assert seq in lines, f"{grid} {label}: {seq} is no line of the paper's {TABLES[grid]}"
        used.append(lines.index(seq))
    # every numeric line of the paper's table is transcribed (Table VII's 'Baseline' included)
    numeric = [i for i, ln in enumerate(lines) if ln]
    assert sorted(set(used)) == numeric


def test_a_transcription_naming_no_row_is_one_line(tmp_path):
    import yaml

    from raygap.errors import ConfigError

    doc = {"name": "p", "rows": {"A": {}}, "columns": {"data.name": ["cremad"]},
           "paper_results": {"B": {"cremad": {"acc": 1.0}}}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="paper_results: 'B' is not a row"):
        load_grid(tmp_path / "p.yaml")
