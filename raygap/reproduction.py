"""``raygap report``: ``report.md`` and ``report.html``, ours beside the paper's numbers.

For each cell the paper's number (the grid's ``paper_results``) beside ours (mean ± std over
seeds), the difference, the paired comparison with the reference row, the figures
(``raygap.figures`` draws them; each row's in one line), and the settings in force -- all
from one :class:`~raygap.table.Table`, the records read once. ``report.html`` is the same
Markdown as a page (:mod:`raygap.report_page`).
"""
from __future__ import annotations

import time
from pathlib import Path

from .atomic import atomic_write, refuse_link
from .cells import DASH, WARMUP_NOTE, metric_label, selection_note
from .comparability import against_paper, header_lines, paper_conflicts
from .dotted import flatten
from .render import comparison_md, md_escape, md_table, one_line
from .report_page import BESIDE, report_html


def reproduction_report(table, out_dir: Path, figures: list | None = None) -> Path:
    """``report.md`` (and ``report.html``) in ``out_dir``: for each cell the paper's number (the grid's
    ``paper_results``) beside ours (mean ± std over seeds), the difference, the paired
    comparison with the reference row, the figures, and the settings in force. Cells of a
    profile whose columns are not the paper's (the demo's avdigits) are not set beside the
    paper's: both tables are shown, marked as not comparable."""
    return _write(Path(out_dir) / "report.md", "\n".join(report_lines(table, figures)))


def paper_report(tables: list[tuple], results: Path) -> Path:
    """One report over several grids (``raygap report grids/table*.yaml``): ``tables`` is
    ``(table, its folder, its figures)`` per grid, each set beside its published numbers as in
    :func:`reproduction_report`, one section a grid, in the order given. Written to
    ``results/report-<variant>.md`` (and ``.html``) -- ``report-mixed`` where the grids ran with
    different profiles or ``--set`` items -- its figure links relative to ``results``."""
    results = Path(results)
    md, _ = report_names({t.grid.variant for t, _, _ in tables})
    done = sum(t.done for t, _, _ in tables)
    cells = sum(len(t.grid.trials) for t, _, _ in tables)
    lines = [f"# Reproduction report: {len(tables)} tables ({md[len('report-'):-len('.md')]})", "",
             f"{done} of {cells} cells done over {', '.join(t.grid.name for t, _, _ in tables)}; generated "
             f"{time.strftime('%Y-%m-%d %H:%M:%S')}. One section a table; each table's own files are in its folder "
             "(results/<grid>/<variant>/).", ""]
    for table, table_dir, figures in tables:       # (table_dir: results/<grid>/<variant>)
        lines += report_lines(table, figures, fig_dir=f"{table.grid.name}/{table.grid.variant}/figures", level=2)
        lines.append("")
    return _write(results / md, "\n".join(lines))


def report_names(variants: set[str]) -> tuple[str, str]:
    """The file names of a several-grid report over grids of these variants (.md, .html)."""
    variant = next(iter(variants)) if len(variants) == 1 else "mixed"
    return f"report-{variant}.md", f"report-{variant}.html"


def _write(md_path: Path, text: str) -> Path:
    text = text.rstrip() + "\n"
    refuse_link(md_path.with_suffix(".html"), md_path.parent)
    refuse_link(md_path, md_path.parent)                  # (both checked before either is written)
    atomic_write(md_path.with_suffix(".html"), report_html(text), root=md_path.parent)
    return atomic_write(md_path, text, root=md_path.parent)


def report_lines(table, figures: list | None = None, fig_dir: str = "figures", level: int = 1) -> list[str]:
    """The report of one table as Markdown lines, its title a heading of ``level`` (its sections
    one level below) and its figures linked under ``fig_dir``."""
    h = "#" * level
    grid, combos, cells, comps = table.grid, table.combos, table.cells, table.comparisons
    paper = grid.paper
    col_values = [str(next(iter(c.values()))) if len(c) == 1 else None for c in combos]
    # ours beside the paper's where the columns are the paper's; "ours − paper" only where a cell's settings are
    matched = bool(paper) and all(v is not None and any(v in per for per in paper.values()) for v in col_values)
    comp = against_paper(grid) if paper else None
    lines = [f"{h} Reproduction report: {grid.name}" + (f" ({grid.profile} profile)" if grid.profile else ""), "",
             md_escape(one_line(grid.description)), ""]
    lines.append(f"{table.done} of {len(grid.trials)} cells done; generated {time.strftime('%Y-%m-%d %H:%M:%S')}.")
    if paper and not matched:
        lines += ["", "**Not comparable with the paper**: this profile's data are not the paper's"
                  + (f" (columns: {', '.join(md_escape(grid.column_header(c)) for c in combos)})" if combos else "")
                  + ". The paper's numbers are listed for reference only."]
    elif comp is not None and not any(comp.matches(label, ci) for label in grid.row_labels for ci in range(len(combos))):
        lines += ["", "**Not comparable with the paper**: no cell runs with the paper's settings (below). The paper's "
                  "numbers stand beside ours for reference; no difference is computed."]
    if comp is not None:
        lines += header_lines(comp)
    lines += ["", f"{h}# Ours" + (" beside the paper" if matched else ""), ""]
    header = ["Method"]
    for c in combos:
        for m in grid.metrics:
            name = f"{grid.column_header(c)} {metric_label(m)}"
            header += [f"{name} {kind}" for kind in BESIDE] if matched else [f"{name} ours"]
    rows = []
    for label in grid.row_labels:
        r = [label]
        for ci, c in enumerate(combos):
            for m in grid.metrics:
                cell = cells[(label, ci, m)]
                if matched:
                    p = paper.get(label, {}).get(col_values[ci], {}).get(m)
                    same = comp is not None and comp.matches(label, ci)
                    diff = (f"{cell.mean - p:+.2f}" if p is not None and cell.mean is not None and same
                            else DASH if same or p is None else "(settings differ)")
                    r += [f"{p:.2f}" if p is not None else DASH, cell.text(), diff]
                else:
                    r.append(cell.text())
        rows.append(r)
    lines += md_table(header, rows)
    if paper and not matched:
        pcols = sorted({c for per in paper.values() for c in per}, key=lambda v: list(grid.column_labels).index(v)
                       if v in grid.column_labels else 99)
        ph = ["Method"] + [f"{grid.column_labels.get(c, c)} {metric_label(m)}" for c in pcols for m in grid.metrics]
        pb = [[label] + [f"{per[c][m]:.2f}" if m in per.get(c, {}) else DASH for c in pcols for m in grid.metrics]
              for label, per in paper.items()]
        lines += ["", f"{h}# The paper's numbers (for reference)", "", *md_table(ph, pb)]
    conflicts = paper_conflicts(grid) if paper and matched else []
    if conflicts:
        lines += ["", f"{h}# Where the paper disagrees with itself", "",
                  "raygap runs a config once, so these cells' trials are also cells of another table, for which the "
                  "paper reports another number; ours is the same in both:", ""]
        lines += [md_escape(f"- {label}, {grid.column_labels.get(v, v)} {metric_label(m)}: the paper reports {here:.2f} "
                            f"here and {there:.2f} for {other}'s {other_label!r}")
                  for label, v, m, here, other, other_label, there in conflicts]
    if comps:
        lines += [("#" * (level - 1) + ln) if ln.startswith("## ") else ln      # one level below the title
                  for ln in comparison_md(grid, comps, "Which differences are real: paired differences vs")]
    if selection_note(grid):
        lines += ["", md_escape(selection_note(grid))]
    if any(c.in_warmup for c in cells.values()):
        lines += ["", md_escape(WARMUP_NOTE)]
    figs = sorted(Path(f) for f in (figures or []))
    if figs:
        lines += ["", f"{h}# Figures"]
        lines += [ln for f in figs if f.name.startswith("table_") for ln in ("", f"![{f.stem}]({fig_dir}/{f.name})")]
        galleries = row_galleries(grid, figs)
        if galleries:
            lines += ["", "Per cell (first finished seed): mixture fit, gap evolution, accuracy per modality; one "
                      "row of the table a line:"]
            for label, row_figs in galleries:
                lines += ["", f"**{md_escape(label)}**", "",
                          " ".join(f"[![{f.stem}]({fig_dir}/{f.name})]({fig_dir}/{f.name})" for f in row_figs)]
    lines += ["", f"{h}# Settings in force", ""]
    ref = next((t for t in grid.trials if t.label == (grid.reference or grid.row_labels[0])), None)
    if ref is not None:
        flat = flatten(ref.config.to_dict())
        lines.append(f"The reference row's first trial ({ref.label}, {grid.column_header(ref.column)}, seed {ref.seed}, "
                     f"key {ref.key[:12]}):")
        lines += ["", "```"] + [f"{k}: {v}" for k, v in sorted(flat.items())] + ["```"]
    lines.append("")
    lines.append("The other rows differ from it by their row's keys (grids/" + grid.path.name + "). The readings of the "
                 "paper in force are docs/method.md's (gap_adaptive's params above are its defaults where not set).")
    infos = {k: rec.get("info") or {} for k, rec in table.done_records().items()}
    forked = sum(1 for i in infos.values() if i.get("warmup_from"))
    if forked:
        lines += ["", f"Shared warm-ups: {forked} of the {len(infos)} done trials started from the end of a warm-up "
                  "another trial trained (the same config outside the adaptive stage's keys, the same seed): they "
                  "differ from it only after the switch (docs/method.md, \"Shared warm-ups\")."]
    return lines


OTHER = "Figures of no row of this grid"


def row_galleries(grid, figs: list[Path]) -> list[tuple[str, list[Path]]]:
    """The per-cell figures among ``figs`` by row of the table: (row label, its cells' figures,
    columns in the grid's order, each cell's as :data:`~raygap.figures.CELL_KINDS`); rows with
    none left out, a figure of no row of the grid's (a renamed row's) under :data:`OTHER`."""
    import re

    from .figures import CELL_KINDS, cell_prefixes

    pattern = re.compile(rf"(.+)_seed\d+_({'|'.join(CELL_KINDS)})")
    cell_of = {prefix: (label, n) for n, ((label, _), prefix) in enumerate(cell_prefixes(grid).items())}
    by_row: dict[str, list] = {}
    for f in figs:
        m = pattern.fullmatch(f.stem)
        if m:
            label, n = cell_of.get(m.group(1), (OTHER, len(cell_of)))
            by_row.setdefault(label, []).append((n, CELL_KINDS.index(m.group(2)), f))
    order = [*grid.row_labels, OTHER]
    return [(label, [f for *_, f in sorted(by_row[label])]) for label in order if label in by_row]
