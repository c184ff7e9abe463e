"""The table in each format, from one :class:`~raygap.table.Table`: ``table.csv`` (with
``significance.csv`` when the grid has a reference row), ``table.md``, ``table.tex``.

:data:`RENDERERS` maps each format to the function that renders its files; it is also the
list of ``raygap export --format`` choices. Rows are in grid order x (column value x
metric), each cell ``mean ± std (n=k)`` (``raygap.cells``). Row notes (a row's ``note``) are
footnotes: ``*``, ``**``... after the label, the texts below the table (CSV: a ``Note``
column). Rows skipped because their method is not implemented are listed below the table
(Markdown, LaTeX comment). The LaTeX table leaves ``(n=...)`` out of complete cells and keeps
it on partial ones.
"""
from __future__ import annotations

import csv
import io
import re
from typing import Any, Callable

from .cells import WARMUP_MARK, WARMUP_NOTE, metric_label, selection_note
from .significance import against_reference, against_versus, comparison_note, comparison_table, comparisons_csv


def _marks(grid) -> dict[str, str]:
    return {label: "*" * (i + 1) for i, label in enumerate(lab for lab in grid.row_labels if lab in grid.notes)}


def table_rows(table) -> tuple[list[str], list[list[str]]]:
    """Header and body of the flat table (CSV, Markdown)."""
    grid, combos, cells = table.grid, table.combos, table.cells
    marks = _marks(grid)
    header = ["Method"] + [f"{grid.column_header(c)} {metric_label(m)}" for c in combos for m in grid.metrics]
    body = []
    for label in grid.row_labels:
        body.append([label + (f" {marks[label]}" if label in marks else "")]
                    + [cells[(label, ci, m)].text() for ci in range(len(combos)) for m in grid.metrics])
    return header, body


def to_csv(table) -> str:
    grid = table.grid
    header, body = table_rows(table)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if _marks(grid):
        w.writerow(header + ["Note"])
        for label, row in zip(grid.row_labels, body, strict=True):
            w.writerow(row + [grid.notes.get(label, "")])
    else:
        w.writerow(header)
        w.writerows(body)
    return buf.getvalue()


_MD_SPECIAL = re.compile(r"[\\`*_\[\]|~]|<(?=[A-Za-z/!?])")   # < only where it could open an HTML tag


def md_escape(s: Any) -> str:
    """Plain text -> Markdown text: each character Markdown would read as markup (emphasis, code,
    links, an HTML tag's <, table cells, strike-through) escaped with a backslash (CommonMark reads a
    backslash before any ASCII punctuation as that character)."""
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), str(s))


def one_line(s: Any) -> str:
    """``s`` on one line (every run of whitespace, newlines included, one space): for a Markdown
    heading and a LaTeX comment, which a newline would end, leaving the rest read as markup."""
    return " ".join(str(s).split())


def tex_comment(s: Any) -> str:
    """A LaTeX comment line holding ``s`` (a newline in it would end the comment)."""
    return "% " + one_line(s)


def md_table(header: list[str], body: list[list[str]]) -> list[str]:
    """A Markdown table's lines: the first column left-aligned, the rest right-aligned."""
    return (["| " + " | ".join(md_escape(h) for h in header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
            + ["| " + " | ".join(md_escape(c) for c in r) + " |" for r in body])


def comparison_sections(grid, comps: list[dict]) -> list[tuple[list[dict], bool]]:
    """The comparisons' sections: (rows, is the ``versus`` section), those that have rows."""
    return [(rows, versus) for rows, versus in ((against_reference(grid, comps), False),
                                                (against_versus(grid, comps), True)) if rows]


def comparison_md(grid, comps: list[dict], title: str) -> list[str]:
    """The paired-comparison sections (table.md and report.md): against the reference row, then
    each row against the row its ``versus:`` names."""
    out = []
    for rows, versus in comparison_sections(grid, comps):
        h, b = comparison_table(grid, rows)
        head = f"{title} the row each is set against" if versus else f"{title} {md_escape(grid.reference)}"
        out += ["", f"## {head}", "", *md_table(h, b), "", md_escape(comparison_note(grid, rows, versus))]
    return out


def to_markdown(table) -> str:
    grid, comps = table.grid, table.comparisons
    header, body = table_rows(table)
    lines = [f"# {grid.name}" + (f": {md_escape(one_line(grid.description))}" if grid.description else ""),
             "", *md_table(header, body)]
    lines.append("")
    lines.append("Mean ± sample std over the seeds that are done, accuracies and F1 scores in percent; "
                 "(n=k) seeds done, (n=k/N) when only k of N are; – none done. The reported epoch is chosen on "
                 "validation." + (f" Profile: {grid.profile}." if grid.profile else "")
                 + (f" --set {' '.join(grid.sets)}." if grid.sets else ""))
    if selection_note(grid):
        lines += ["", md_escape(selection_note(grid))]
    if any(WARMUP_MARK in c for r in body for c in r[1:]):
        lines += ["", md_escape(WARMUP_NOTE)]
    marks = _marks(grid)
    if marks:
        lines.append("")
        lines += [f"{md_escape(marks[label])} {md_escape(label)}: "
                  f"{md_escape(grid.notes[label])}  " for label in marks]
    if grid.skipped:
        lines.append("")
        lines += [f"Not run: {md_escape(label)} ({md_escape(reason)})  " for label, reason in grid.skipped]
    if comps:
        lines += comparison_md(grid, comps, "Paired differences vs")
    return "\n".join(lines).rstrip() + "\n"


_TEX_TEXT = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
             "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
             "<": r"\textless{}", ">": r"\textgreater{}", "–": "--", "—": "---"}
# characters set in math mode (the inside of $...$; neighbours share one $...$)
_TEX_MATH = {"|": "|", "±": r"\pm", "†": r"^\dagger", "‡": r"^\ddagger", "²": "^2", "≥": r"\geq", "−": "-", "≤": r"\leq",
             "α": r"\alpha", "β": r"\beta", "γ": r"\gamma", "ρ": r"\rho", "τ": r"\tau",
             "λ": r"\lambda", "σ": r"\sigma", "μ": r"\mu"}


def tex_escape(s: Any) -> str:
    """Plain text -> LaTeX text (pdflatex-safe for the labels raygap's grids use): every LaTeX
    special character escaped, a literal ``$`` included; symbols in math mode, neighbours in one
    ``$...$`` (``αβ`` -> ``$\\alpha\\beta$``)."""
    out, math = [], []
    for ch in str(s):
        if ch in _TEX_MATH:
            if math and math[-1].endswith(("^\\dagger", "^\\ddagger", "^2")) and _TEX_MATH[ch].startswith("^"):
                math.append("{}")               # two superscripts in a row: a^\dagger{}^\dagger
            math.append(_TEX_MATH[ch])
            continue
        if math:
            out.append("$" + "".join(math) + "$")
            math = []
        out.append(_TEX_TEXT.get(ch, ch))
    if math:
        out.append("$" + "".join(math) + "$")
    return "".join(out)


def to_latex(table) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``), one multicolumn header per
    column value (dataset), one sub-column per metric."""
    grid, combos, cells, comps = table.grid, table.combos, table.cells, table.comparisons
    nm, marks = len(grid.metrics), _marks(grid)
    ncols = 1 + nm * len(combos)
    out = [tex_comment(f"{grid.name}: {grid.description}".rstrip(": ")), r"% requires \usepackage{booktabs}",
           r"\begin{tabular}{l" + "c" * (ncols - 1) + "}", r"\toprule"]
    out.append("Method & " + " & ".join(rf"\multicolumn{{{nm}}}{{c}}{{{tex_escape(grid.column_header(c))}}}"
                                        for c in combos) + r" \\")
    out.append(" ".join(rf"\cmidrule(lr){{{2 + i * nm}-{1 + (i + 1) * nm}}}" for i in range(len(combos))))
    out.append(" & " + " & ".join(tex_escape(metric_label(m)) for _ in combos for m in grid.metrics) + r" \\")
    out.append(r"\midrule")
    for label in grid.row_labels:
        name = tex_escape(label) + (rf"$^{{{marks[label]}}}$" if label in marks else "")
        vals = [tex_escape(cells[(label, ci, m)].text(complete_n=False))
                for ci in range(len(combos)) for m in grid.metrics]
        out.append(name + " & " + " & ".join(vals) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if selection_note(grid):
        out.append(r"\par\smallskip{\footnotesize " + tex_escape(selection_note(grid)) + "}")
    if any(c.in_warmup for c in cells.values()):
        out.append(r"\par\smallskip{\footnotesize " + tex_escape(WARMUP_NOTE) + "}")
    if marks:       # after the tabular, so long notes wrap to the float's width
        out.append(r"\par\smallskip{\footnotesize")
        out += [rf"$^{{{marks[label]}}}$ {tex_escape(label)}: {tex_escape(grid.notes[label])}\par"
                for label in marks]
        out.append("}")
    out += [tex_comment(f"not run: {label} ({reason})") for label, reason in grid.skipped]
    for rows, versus in comparison_sections(grid, comps):
        h, b = comparison_table(grid, rows)
        what = "paired differences vs the row each is set against (versus)" if versus else f"paired differences vs {grid.reference}"
        out += ["", tex_comment(what), r"\begin{tabular}{l" + "c" * (len(h) - 1) + "}",
                r"\toprule", " & ".join(tex_escape(x) for x in h) + r" \\", r"\midrule"]
        out += [" & ".join(tex_escape(c) for c in r) + r" \\" for r in b]
        out += [r"\bottomrule", r"\end{tabular}",
                r"\par\smallskip{\footnotesize " + tex_escape(comparison_note(grid, rows, versus)) + "}"]
    return "\n".join(out) + "\n"


def csv_files(table) -> dict[str, str]:
    """``table.csv``, and ``significance.csv`` when there are paired comparisons."""
    files = {"table.csv": to_csv(table)}
    if table.comparisons:
        files["significance.csv"] = comparisons_csv(table.comparisons)
    return files


def md_files(table) -> dict[str, str]:
    return {"table.md": to_markdown(table)}


def tex_files(table) -> dict[str, str]:
    return {"table.tex": to_latex(table)}


# format -> its files (name -> text); also the `raygap export --format` choices, in the order written
RENDERERS: dict[str, Callable[[Any], dict[str, str]]] = {"csv": csv_files, "md": md_files, "tex": tex_files}
FORMATS = tuple(RENDERERS)
