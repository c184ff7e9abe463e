"""Tables from the store, in the paper's layout: rows x (column value x metric), each cell
``mean ± std (n)`` over the seeds that are done. Accuracy-like metrics (in [0, 1]) are
shown in percent with two decimals, as the paper does; ``data_pct`` is already a percent.
The std is the sample std (ddof = 1); with one seed the cell shows the value alone.
A cell with fewer done seeds than the grid asks for says so (``n=2/3``); a cell with none
shows ``–``. Every file is written atomically (temp file + rename).
"""
from __future__ import annotations

import csv
import io
import math
import os
import statistics
from pathlib import Path

from .config import flatten

PERCENT = {"acc", "macro_f1"}       # and their per-modality / last_ variants


def _is_percent(metric: str) -> bool:
    base = metric.removeprefix("last_").removeprefix("val_")
    return base in PERCENT or base.startswith(("acc_", "macro_f1_"))


def atomic_write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _header(grid, col: dict) -> str:
    return " / ".join(str(grid.column_labels.get(v, v)) for v in col.values()) or "result"


def cells(grid, store) -> tuple[list[dict], list[dict]]:
    """(column combos in order, one dict per row: label -> {(col_idx, metric): (values, n_total)})."""
    combos, seen = [], set()
    for t in grid.trials:
        k = tuple(t.column.items())
        if k not in seen:
            seen.add(k)
            combos.append(t.column)
    rows = []
    for label in grid.row_labels:
        row = {"label": label, "cells": {}}
        for ci, col in enumerate(combos):
            specs = [t for t in grid.trials if t.label == label and t.column == col]
            for m in grid.metrics:
                vals = []
                for t in specs:
                    rec = store.get(t.key)
                    if rec and rec["status"] == "done":
                        v = (rec["metrics"] or {}).get(m)
                        if isinstance(v, (int, float)) and math.isfinite(v):
                            vals.append(float(v) * (100.0 if _is_percent(m) else 1.0))
                row["cells"][(ci, m)] = (vals, len(specs))
        rows.append(row)
    return combos, rows


def fmt(vals: list[float], n_total: int, with_n: bool = True) -> str:
    if not vals:
        return "–" + (f" (0/{n_total})" if with_n and n_total else "")
    mean = statistics.fmean(vals)
    s = f"{mean:.2f}" if len(vals) == 1 else f"{mean:.2f} ± {statistics.stdev(vals):.2f}"
    if with_n:
        s += f" (n={len(vals)})" if len(vals) == n_total else f" (n={len(vals)}/{n_total})"
    return s


def table_rows(grid, store) -> tuple[list[str], list[list[str]]]:
    combos, rows = cells(grid, store)
    header = ["Method"] + [f"{_header(grid, c)} {m}" for c in combos for m in grid.metrics]
    body = []
    for r in rows:
        label = r["label"] + (" *" if r["label"] in grid.notes else "")
        body.append([label] + [fmt(*r["cells"][(ci, m)]) for ci in range(len(combos)) for m in grid.metrics])
    return header, body


def to_csv(header, body) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(body)
    return buf.getvalue()


def to_markdown(grid, header, body) -> str:
    lines = [f"# {grid.name}" + (f" — {grid.description}" if grid.description else ""), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    lines.append("")
    lines.append("mean ± sample std over seeds, in percent for accuracy and macro-F1; (n) = seeds done; "
                 "the epoch is chosen on validation.")
    for label, note in grid.notes.items():
        lines.append(f"\\* {label}: {note}")
    for label, reason in grid.skipped:
        lines.append(f"Not run: {label} — {reason}")
    return "\n".join(lines) + "\n"


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("–", "--"), ("α", r"$\alpha$"), ("β", r"$\beta$"), ("γ", r"$\gamma$"),
                 ("ρ", r"$\rho$"), ("τ", r"$\tau$")):
        s = s.replace(a, b)
    return s


def to_latex(grid, store) -> str:
    combos, rows = cells(grid, store)
    nm = len(grid.metrics)
    out = [r"\begin{tabular}{l" + "c" * (nm * len(combos)) + "}", r"\toprule"]
    out.append("Method & " + " & ".join(rf"\multicolumn{{{nm}}}{{c}}{{{_tex(_header(grid, c))}}}" for c in combos)
               + r" \\")
    if nm > 1:
        out.append(" ".join(rf"\cmidrule(lr){{{2 + i * nm}-{1 + (i + 1) * nm}}}" for i in range(len(combos))))
    out.append(" & " + " & ".join(_tex(m) for _ in combos for m in grid.metrics) + r" \\")
    out.append(r"\midrule")
    for r in rows:
        cellsx = [_tex(fmt(*r["cells"][(ci, m)], with_n=False)) for ci in range(len(combos)) for m in grid.metrics]
        out.append(_tex(r["label"]) + " & " + " & ".join(cellsx) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def trials_csv(grid, store) -> str:
    recs = []
    for t in grid.trials:
        rec = store.get(t.key) or {}
        row = {"label": t.label, **{f"col:{k}": v for k, v in t.column.items()}, "seed": t.seed, "hash": t.key,
               "status": rec.get("status", "new"), "error": rec.get("error") or ""}
        row.update({f"config.{k}": v for k, v in flatten(t.config.to_dict()).items()})
        row.update({f"metric.{k}": v for k, v in (rec.get("metrics") or {}).items()})
        recs.append(row)
    fields: list[str] = []
    for r in recs:
        fields += [k for k in r if k not in fields]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(recs)
    return buf.getvalue()


def export_grid(grid, store, out_dir: Path, formats=("csv", "md", "tex")) -> dict[str, Path]:
    out_dir = Path(out_dir)
    header, body = table_rows(grid, store)
    paths = {"trials.csv": atomic_write(out_dir / "trials.csv", trials_csv(grid, store))}
    if "csv" in formats:
        paths["table.csv"] = atomic_write(out_dir / "table.csv", to_csv(header, body))
    if "md" in formats:
        paths["table.md"] = atomic_write(out_dir / "table.md", to_markdown(grid, header, body))
    if "tex" in formats:
        paths["table.tex"] = atomic_write(out_dir / "table.tex", to_latex(grid, store))
    return paths


def status_text(grid, store) -> str:
    distinct = grid.distinct()
    st = store.status_of(list(distinct))
    lines = [f"grid {grid.name}: {len(grid.trials)} cells, {len(distinct)} distinct trials"]
    header = f"  {'row':40s} {'column':20s} done running failed missing"
    lines.append(header)
    combos = []
    for t in grid.trials:
        if t.column not in combos:
            combos.append(t.column)
    for label in grid.row_labels:
        for col in combos:
            keys = [t.key for t in grid.trials if t.label == label and t.column == col]
            c = {s: sum(1 for k in keys if st.get(k) == s) for s in ("done", "running", "failed")}
            miss = len(keys) - sum(c.values())
            colname = ", ".join(str(v) for v in col.values()) or "-"
            lines.append(f"  {label[:40]:40s} {colname[:20]:20s} {c['done']:4d} {c['running']:7d} {c['failed']:6d} {miss:7d}")
    tot = {s: sum(1 for k in distinct if st.get(k) == s) for s in ("done", "running", "failed")}
    lines.append(f"total: {tot['done']} done, {tot['running']} running, {tot['failed']} failed, "
                 f"{len(distinct) - sum(tot.values())} missing")
    for k in distinct:
        if st.get(k) == "failed":
            lines.append(f"  failed {k}: {(store.get(k) or {}).get('error')}")
    for label, reason in grid.skipped:
        lines.append(f"  skipped row {label!r}: {reason}")
    return "\n".join(lines)
