"""Tables from the store, in the paper's layout, and the ``raygap status`` report.

``results/<grid>/<variant>/`` gets (every file written atomically: temp file + fsync +
rename, with the user's umask; ``<variant>`` is the profile's name, ``noprofile``
without one, plus ``+set-<hash>`` with ``--set`` items, so tables of different settings
never share files):

* ``trials.csv`` -- one line per cell membership (a trial shared by two cells appears
  twice): ``label``, the column values (one column per column key, e.g. ``data.name``),
  ``seed``, ``hash``, ``status`` (done / failed / running / interrupted / pending / new),
  ``error``, ``attempts``, ``wall_seconds``, ``device`` (``cpu``, ``cuda:0 (<GPU name>)``),
  every config key flattened (``config.method.rho``) and
  every final metric (``metric.acc``), raw (fractions, not percent).
* ``table.csv``, ``table.md``, ``table.tex`` -- rows in grid order x (column value x
  metric). A cell is ``mean ± std (n=k)`` over the seeds whose trial is done:

  - accuracy-like metrics (``acc``, ``macro_f1``, their ``acc_<modality>``, ``val_`` and
    ``last_`` variants), stored as fractions in [0, 1], are shown in percent; every
    other metric as stored (``data_pct`` is already a percent); two decimals, as the paper;
  - std is the sample std (ddof = 1); with one done seed the cell is the value alone
    (no ``±``: a std of one sample is undefined);
  - ``(n=3)`` when every seed of the cell is done, ``(n=2/3)`` when only some are;
  - ``– (0/3)`` when none is done; ``n/a (n=3)`` when trials are done but none reports
    the metric (e.g. Concat has no Data %);
  - the LaTeX table leaves ``(n=...)`` out of complete cells and keeps it on partial ones.

  Row notes (a row's ``note``) are footnotes: ``*``, ``**``... after the label, the texts
  below the table (CSV: a ``Note`` column). Rows skipped because their method is not
  implemented are listed below the table (Markdown, LaTeX comment).
* with a grid ``reference`` row: ``significance.csv`` and a section under the Markdown and
  LaTeX tables -- each other row minus the reference, seed by seed (the same seed is the same
  split, initialisation and data order: the comparison is paired), per column and metric: the
  mean difference, its 95 % interval and a paired t-test's p-value (scipy's ``ttest_rel``),
  the p-values adjusted over the table's comparisons by Benjamini-Hochberg (scipy's
  ``false_discovery_control``). See :func:`paired_comparisons` for why these.
* ``table.json`` -- the same cells as numbers (values per seed, mean, std, n), how many
  cell memberships were done when it was written, and the paired comparisons with a digest of
  their inputs (an export whose inputs are the same reuses them: scipy.stats is not imported).
  An export never replaces these files with a table holding fewer done cells
  (:class:`ExportRefused`) unless forced.

No write follows a symlink out of the results folder: a folder under it that is a link
leading elsewhere is refused, and a file that is a link is replaced, never written through.
"""
from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import math
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .config import flatten
from .errors import StoreError

PERCENT = {"acc", "macro_f1", "acc2", "f1_2", "acc2_nz", "f1_2_nz", "acc7"}    # fractions shown in percent
METRIC_LABELS = {"acc": "Acc", "macro_f1": "Macro-F1", "data_pct": "Data %", "best_epoch": "Epoch",
                 "mae": "MAE", "corr": "Corr", "acc2": "Acc-2", "f1_2": "F1", "acc2_nz": "Acc-2 (non-0)",
                 "f1_2_nz": "F1 (non-0)", "acc7": "Acc-7"}
DASH = "–"
SIGNIFICANT = "‡"          # adjusted p < 0.05 (not "*": the row footnotes use it)
WARMUP_MARK = "†"          # "† k": in k seeds the epoch picked on validation lies in the warm-up stage
WARMUP_NOTE = (f"{WARMUP_MARK} k: in k of the seeds the epoch picked on validation lies in the method's warm-up stage "
               "(the reported number is then the warm-up objective's, not the adaptive stage's); "
               "train.select_from: adaptive picks from the adaptive stage only.")


def _split_modality(metric: str) -> tuple[str, str | None]:
    """``acc_audio`` -> (``acc``, ``audio``); ``acc2_nz`` -> (``acc2_nz``, None)."""
    if metric in METRIC_LABELS or metric in PERCENT:
        return metric, None
    for base in sorted(PERCENT | set(METRIC_LABELS), key=len, reverse=True):
        if metric.startswith(base + "_"):
            return base, metric[len(base) + 1:]
    return metric, None


def metric_digits(metric: str) -> int:
    """Decimals shown: 2 for percentages and epochs, 3 for MAE and correlation (as MOSI tables)."""
    base, _ = _split_modality(metric.removeprefix("last_").removeprefix("val_"))
    return 3 if base in ("mae", "corr") else 2


def is_percent(metric: str) -> bool:
    """Whether ``metric`` is a fraction in [0, 1] shown in percent."""
    base, _ = _split_modality(metric.removeprefix("last_").removeprefix("val_"))
    return base in PERCENT


def metric_label(metric: str) -> str:
    base, modality = _split_modality(metric)
    if base in METRIC_LABELS:
        return METRIC_LABELS[base] + (f" ({modality})" if modality else "")
    return metric


class ExportRefused(Exception):
    """The table on disk holds more done cells than the one an export would write."""


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """This process's umask (Linux reports it in /proc; elsewhere set-and-restore)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        m = os.umask(0o022)
        os.umask(m)
    return m


def atomic_write_with(path: str | Path, write: Callable[[Any], None], binary: bool = False) -> Path:
    """Write ``path`` through ``write(file)`` so that a reader sees the old file or the new
    one, whole: a temp file beside it (mode 0666 less the umask, like any new file),
    fsync, rename over ``path`` (a symlink at ``path`` is replaced, not followed).
    OSErrors become one StoreError line naming the file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="")) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise _write_error(path, e) from None
        raise
    return path


def _write_error(path: Path, e: OSError) -> StoreError:
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
            errno.EPERM: "permission denied"}.get(e.errno, e.strerror or str(e))
    return StoreError(path, f"cannot write: {what}",
                      "the trials are safe in the store; fix this, then run `raygap export` for the tables")


def atomic_write(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_with`)."""
    return atomic_write_with(path, lambda f: f.write(text))


def results_dir(root: str | Path, *parts: str, create: bool = True) -> Path:
    """``root/parts...``, refusing a folder on the way that is not a folder, or that is a
    symlink leading out of ``root`` (``root`` itself may be a link, e.g. to a larger disk)."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise StoreError(root, "is not a folder", "pass --results DIR with a folder")
    base = root.resolve()
    d = root
    for part in parts:
        d = d / part
        if d.is_symlink() and not d.resolve().is_relative_to(base):
            raise StoreError(d, f"is a symlink to {d.resolve()}, outside {root}: raygap does not write through it",
                             "remove the link, or point --results at the folder you want written")
        if d.exists() and not d.is_dir():
            raise StoreError(d, "is a file where raygap keeps a folder of tables", "move it, or rename the grid")
    if create:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _write_error(d, e) from None
    return d


# ----------------------------------------------------------------------------- cells
class Cell:
    """The values of one (row, column, metric) cell over the seeds that are done."""

    def __init__(self, values: list[float], done: int, total: int, digits: int = 2, in_warmup: int = 0):
        self.values, self.done, self.total, self.digits = values, done, total, digits
        self.in_warmup = in_warmup          # seeds whose epoch, picked on validation, lies in a warm-up stage

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def text(self, with_n: bool = True, complete_n: bool = True) -> str:
        return fmt(self.values, self.total, with_n=with_n, done=self.done, complete_n=complete_n,
                   digits=self.digits) + (f" {WARMUP_MARK}{self.in_warmup}" if self.in_warmup else "")


def fmt(vals: list[float], n_total: int, with_n: bool = True, done: int | None = None,
        complete_n: bool = True, digits: int = 2) -> str:
    """``82.00 ± 2.00 (n=3)``, ``70.00 (n=1/3)``, ``– (0/3)``, ``n/a (n=3)`` (see the module doc)."""
    done = len(vals) if done is None else done
    if not vals:
        if done:
            return "n/a" + (f" (n={done})" if with_n else "")
        return DASH + (f" (0/{n_total})" if with_n and n_total else "")
    mean = statistics.fmean(vals)
    s = f"{mean:.{digits}f}" if len(vals) == 1 else f"{mean:.{digits}f} ± {statistics.stdev(vals):.{digits}f}"
    if with_n:
        if len(vals) < n_total:
            s += f" (n={len(vals)}/{n_total})"
        elif complete_n:
            s += f" (n={len(vals)})"
    return s


def table_cells(grid, store) -> tuple[list[dict], dict[tuple[str, int, str], Cell]]:
    """(column combos in table order, (row label, column index, metric) -> Cell)."""
    combos = grid.column_combos()
    recs = store.records(t.key for t in grid.trials)
    out: dict[tuple[str, int, str], Cell] = {}
    for label in grid.row_labels:
        for ci, col in enumerate(combos):
            specs = grid.cell(label, col)
            done = [recs[t.key] for t in specs if t.key in recs and recs[t.key]["status"] == "done"]
            warm = sum(1 for rec in done if (rec["metrics"] or {}).get("best_in_warmup") == 1)
            for m in grid.metrics:
                vals = []
                for rec in done:
                    v = (rec["metrics"] or {}).get(m)
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                        vals.append(float(v) * (100.0 if is_percent(m) else 1.0))
                out[(label, ci, m)] = Cell(vals, len(done), len(specs), digits=metric_digits(m), in_warmup=warm)
    return combos, out


def _seed_values(grid, recs: dict, label: str, col: dict, metric: str) -> dict[int, float]:
    """seed -> value (in the table's unit) of one cell's done trials."""
    out = {}
    for t in grid.cell(label, col):
        rec = recs.get(t.key)
        if rec and rec["status"] == "done":
            v = (rec["metrics"] or {}).get(metric)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out[t.seed] = float(v) * (100.0 if is_percent(metric) else 1.0)
    return out


class Comparisons(list):
    """The rows of :func:`paired_comparisons`; ``inputs``: the digest of what they were computed from."""
    inputs = ""


COMPARISON_TEST = "paired t (scipy ttest_rel), 95 % interval, Benjamini-Hochberg"   # part of the inputs' digest


def paired_comparisons(grid, store, known: dict | None = None) -> Comparisons:
    """Every row other than ``grid.reference`` against it, per column and metric, over the
    seeds both have done: n, the mean of the per-seed differences (row - reference), its 95 %
    interval and the p-value of a paired t-test, and p adjusted over all of the table's
    comparisons (Benjamini-Hochberg).

    Why these: a seed fixes the split, the initialisation and the data order of both rows, so
    the differences are paired, and pairing removes the seed-to-seed spread that dominates the
    tables' std. With the grids' 3 seeds a rank test cannot reject at all (the smallest
    two-sided p of Wilcoxon's signed-rank test at n = 3 is 0.25); the t-test can, assuming the
    differences are roughly normal, which 3 values cannot check. BH controls the share of false
    discoveries among a table's many comparisons (Holm's family-wise control would be
    stricter still). ``note`` says when nothing can be concluded: fewer than 2 pairs, or the
    same difference in every seed (no spread: the t statistic is undefined).

    ``known``: the comparisons an earlier export stored in ``table.json`` (``{"inputs", "rows"}``).
    When the inputs -- every pair of per-seed values, and how they are tested -- are the same,
    its rows are the result and scipy.stats, which costs most of a cached re-run's second to
    import, is not imported. The result's ``inputs`` is the digest to store with the rows."""
    out = Comparisons()
    if not grid.reference or grid.reference not in grid.row_labels:
        return out
    combos = grid.column_combos()
    recs = store.records(t.key for t in grid.trials)
    pairs = []                          # (row, column, metric, row values, reference values) per seed
    for label in grid.row_labels:
        if label == grid.reference:
            continue
        for col in combos:
            for m in grid.metrics:
                a = _seed_values(grid, recs, label, col, m)
                r = _seed_values(grid, recs, grid.reference, col, m)
                seeds = sorted(set(a) & set(r))
                pairs.append((label, grid.column_header(col), m, [a[s] for s in seeds], [r[s] for s in seeds]))
    out.inputs = hashlib.sha256(json.dumps([COMPARISON_TEST, pairs]).encode()).hexdigest()[:16]
    if known and known.get("inputs") == out.inputs and isinstance(known.get("rows"), list):
        out += [dict(row) for row in known["rows"]]
        return out
    from scipy import stats

    for label, column, m, a, r in pairs:
        d = [x - y for x, y in zip(a, r)]
        row = {"row": label, "column": column, "metric": m, "n": len(d),
               "mean_diff": statistics.fmean(d) if d else None, "ci_low": None, "ci_high": None,
               "p": None, "p_adj": None, "note": ""}
        if len(d) < 2:
            row["note"] = f"n={len(d)}: too few paired seeds"
        elif max(d) - min(d) == 0:
            row["note"] = "the same difference in every seed" if d[0] else "identical in every seed"
        else:
            res = stats.ttest_rel(a, r)
            ci = res.confidence_interval(0.95)
            row.update(p=float(res.pvalue), ci_low=float(ci.low), ci_high=float(ci.high))
        out.append(row)
    tested = [row for row in out if row["p"] is not None]
    if tested:
        for row, q in zip(tested, stats.false_discovery_control([row["p"] for row in tested])):
            row["p_adj"] = float(q)
    return out


def stored_comparisons(out_dir: str | Path) -> dict | None:
    """The comparisons (and their inputs' digest) the ``table.json`` in ``out_dir`` holds, if any."""
    try:
        old = json.loads((Path(out_dir) / MANIFEST).read_text(encoding="utf-8"))
        return old.get("comparisons") if isinstance(old, dict) else None
    except (OSError, ValueError):
        return None


def comparison_text(c: dict, digits: int = 2) -> str:
    """``+1.23 [-0.50, 2.96] p=0.21 (adj 0.40)``; ``+1.00 (every seed)``; ``n=1: too few``."""
    if c["mean_diff"] is None:
        return DASH
    d = f"{c['mean_diff']:+.{digits}f}"
    if c["p"] is None:
        return f"{d} ({c['note']})" if c["n"] >= 2 else f"{d} (n={c['n']})"
    return (f"{d} [{c['ci_low']:+.{digits}f}, {c['ci_high']:+.{digits}f}] p={c['p']:.2g}"
            f" (adj {c['p_adj']:.2g}){' ' + SIGNIFICANT if c['p_adj'] < 0.05 else ''}")


def comparison_table(grid, comps: list[dict]) -> tuple[list[str], list[list[str]]]:
    combos = grid.column_combos()
    header = ["Method"] + [f"{grid.column_header(c)} {metric_label(m)}" for c in combos for m in grid.metrics]
    by = {(c["row"], c["column"], c["metric"]): c for c in comps}
    body = [[label] + [comparison_text(by[(label, grid.column_header(col), m)], metric_digits(m))
                       for col in combos for m in grid.metrics]
            for label in grid.row_labels if label != grid.reference]
    return header, body


def comparison_note(grid, comps: list[dict]) -> str:
    n_tested = sum(c["p"] is not None for c in comps)
    ns = sorted({c["n"] for c in comps})
    few = (f" With n = {max(ns)} seeds the test has {max(ns) - 1} degree(s) of freedom: only a large, consistent "
           "difference reaches p < 0.05, and a difference that does not is not shown to be absent."
           if ns and max(ns) <= 5 else "")
    return (f"Each row minus {grid.reference}, seed by seed (same seed: same split, initialisation and data order), "
            f"mean difference [95 % interval], paired t-test p (scipy ttest_rel), adjusted over the table's "
            f"{n_tested} tested comparisons by Benjamini-Hochberg; {SIGNIFICANT} adjusted p < 0.05.{few}")


def comparisons_csv(comps: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["row", "column", "metric", "n", "mean_diff", "ci_low", "ci_high", "p",
                                        "p_adj", "note"], lineterminator="\n")
    w.writeheader()
    w.writerows(comps)
    return buf.getvalue()


def _marks(grid) -> dict[str, str]:
    return {label: "*" * (i + 1) for i, label in enumerate(lab for lab in grid.row_labels if lab in grid.notes)}


def table_rows(grid, store) -> tuple[list[str], list[list[str]]]:
    """Header and body of the flat table (CSV, Markdown)."""
    combos, cells = table_cells(grid, store)
    marks = _marks(grid)
    header = ["Method"] + [f"{grid.column_header(c)} {metric_label(m)}" for c in combos for m in grid.metrics]
    body = []
    for label in grid.row_labels:
        body.append([label + (f" {marks[label]}" if label in marks else "")]
                    + [cells[(label, ci, m)].text() for ci in range(len(combos)) for m in grid.metrics])
    return header, body


def to_csv(grid, header: list[str], body: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    marks = _marks(grid)
    if marks:
        w.writerow(header + ["Note"])
        for label, row in zip(grid.row_labels, body, strict=True):
            w.writerow(row + [grid.notes.get(label, "")])
    else:
        w.writerow(header)
        w.writerows(body)
    return buf.getvalue()


def _md(s: str) -> str:
    return str(s).replace("|", "\\|")


def md_table(header: list[str], body: list[list[str]]) -> list[str]:
    """A Markdown table's lines: the first column left-aligned, the rest right-aligned."""
    return (["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
            + ["| " + " | ".join(_md(c) for c in r) + " |" for r in body])


def comparison_md(grid, comps: list[dict], title: str) -> list[str]:
    """The paired-comparison section (table.md and report.md)."""
    h, b = comparison_table(grid, comps)
    return ["", f"## {title} {_md(grid.reference)}", "", *md_table(h, b), "", _md(comparison_note(grid, comps))]


def to_markdown(grid, header: list[str], body: list[list[str]], comps: list[dict] | None = None) -> str:
    lines = [f"# {grid.name}" + (f": {grid.description}" if grid.description else ""), "", *md_table(header, body)]
    lines.append("")
    lines.append("Mean ± sample std over the seeds that are done, accuracies and F1 scores in percent; "
                 "(n=k) seeds done, (n=k/N) when only k of N are; – none done. The reported epoch is chosen on "
                 "validation." + (f" Profile: {grid.profile}." if grid.profile else "")
                 + (f" --set {' '.join(grid.sets)}." if grid.sets else ""))
    if any(WARMUP_MARK in c for r in body for c in r[1:]):
        lines += ["", _md(WARMUP_NOTE)]
    marks = _marks(grid)
    if marks:
        lines.append("")
        lines += [f"{_md(marks[label]).replace('*', chr(92) + '*')} {_md(label)}: {_md(grid.notes[label])}  "
                  for label in marks]
    if grid.skipped:
        lines.append("")
        lines += [f"Not run: {_md(label)} ({_md(reason)})  " for label, reason in grid.skipped]
    if comps:
        lines += comparison_md(grid, comps, "Paired differences vs")
    return "\n".join(lines).rstrip() + "\n"


_TEX_CHARS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
              "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
              "<": r"\textless{}", ">": r"\textgreater{}", "|": r"$|$",
              "±": r"$\pm$", "†": r"$^\dagger$", "‡": r"$^\ddagger$", "–": "--", "—": "---", "²": r"$^2$", "≥": r"$\geq$", "≤": r"$\leq$",
              "α": r"$\alpha$", "β": r"$\beta$", "γ": r"$\gamma$", "ρ": r"$\rho$", "τ": r"$\tau$",
              "λ": r"$\lambda$", "σ": r"$\sigma$", "μ": r"$\mu$"}


def tex_escape(s: Any) -> str:
    """Plain text -> LaTeX text (pdflatex-safe for the labels raygap's grids use)."""
    return "".join(_TEX_CHARS.get(ch, ch) for ch in str(s)).replace("$$", "")


def to_latex(grid, store, comps: list[dict] | None = None) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``), one multicolumn header per
    column value (dataset), one sub-column per metric."""
    combos, cells = table_cells(grid, store)
    nm, marks = len(grid.metrics), _marks(grid)
    ncols = 1 + nm * len(combos)
    out = [f"% {grid.name}: {grid.description}".rstrip(": "), r"% requires \usepackage{booktabs}",
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
    if any(c.in_warmup for c in cells.values()):
        out.append(r"\par\smallskip{\footnotesize " + tex_escape(WARMUP_NOTE) + "}")
    if marks:       # after the tabular, so long notes wrap to the float's width
        out.append(r"\par\smallskip{\footnotesize")
        out += [rf"$^{{{marks[label]}}}$ {tex_escape(label)}: {tex_escape(grid.notes[label])}\par"
                for label in marks]
        out.append("}")
    out += [f"% not run: {label} ({reason})" for label, reason in grid.skipped]
    if comps:
        h, b = comparison_table(grid, comps)
        out += ["", f"% paired differences vs {grid.reference}", r"\begin{tabular}{l" + "c" * (len(h) - 1) + "}",
                r"\toprule", " & ".join(tex_escape(x) for x in h) + r" \\", r"\midrule"]
        out += [" & ".join(tex_escape(c) for c in r) + r" \\" for r in b]
        out += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip{\footnotesize " + tex_escape(comparison_note(grid, comps)) + "}"]
    return "\n".join(out) + "\n"


def trials_csv(grid, store) -> str:
    recs = store.records(t.key for t in grid.trials)
    rows = []
    for t in grid.trials:
        rec = recs.get(t.key) or {}
        row: dict[str, Any] = {"label": t.label, **{k: v for k, v in t.column.items()}, "seed": t.seed,
                               "hash": t.key, "status": rec.get("status", "new"), "error": rec.get("error") or "",
                               "attempts": rec.get("attempts", 0), "wall_seconds": rec.get("wall_seconds"),
                               "device": (rec.get("info") or {}).get("device", "")}
        row.update({f"config.{k}": v for k, v in flatten(t.config.to_dict()).items()})
        row.update({f"metric.{k}": v for k, v in sorted((rec.get("metrics") or {}).items())})
        rows.append(row)
    fields: list[str] = []
    seen: set[str] = set()
    for r in rows:
        for k in r:
            if k not in seen:
                seen.add(k)
                fields.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


MANIFEST = "table.json"
GUARDED = ("trials.csv", "table.csv", "table.md", "table.tex", MANIFEST)


def done_cells(grid, store) -> int:
    """How many cell memberships (row x column x seed) of the grid are done."""
    st = store.status_of(t.key for t in grid.trials)
    return sum(1 for t in grid.trials if st.get(t.key) == "done")


def table_json(grid, store) -> dict:
    combos, cells = table_cells(grid, store)
    return {
        "grid": grid.name, "variant": grid.variant, "profile": grid.profile, "sets": list(grid.sets),
        "grid_file": str(grid.path), "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "done": done_cells(grid, store), "cells": len(grid.trials), "metrics": list(grid.metrics),
        "rows": list(grid.row_labels), "columns": combos,
        "table": [{"row": label, "column": combos[ci], "metric": m, "values": c.values, "mean": c.mean,
                   "std": c.std, "done": c.done, "of": c.total}
                  for (label, ci, m), c in cells.items()],
    }


def export_grid(grid, store, out_dir: str | Path | None = None,
                formats: tuple[str, ...] | list[str] = ("csv", "md", "tex"), force: bool = False) -> dict[str, Path]:
    """Write ``trials.csv``, ``table.json`` and ``table.<fmt>`` for each of ``formats`` (csv,
    md, tex) into ``out_dir`` (default ``results/<grid name>/<variant>``). Returns file name
    -> path.

    Raises :class:`ExportRefused` (writing nothing) when the ``table.json`` already there
    counts more done cells than this export would hold, or when table files are there
    without a ``table.json`` to compare with -- unless ``force``."""
    bad = [f for f in formats if f not in ("csv", "md", "tex")]
    if bad:
        raise ValueError(f"unknown table format(s) {bad}: choose from csv, md, tex")
    out_dir = Path(out_dir) if out_dir is not None else Path("results") / grid.name / grid.variant
    manifest = table_json(grid, store)
    if not force:
        _check_not_emptier(out_dir, manifest)
    paths = {"trials.csv": atomic_write(out_dir / "trials.csv", trials_csv(grid, store))}
    header, body = table_rows(grid, store)
    comps = paired_comparisons(grid, store, known=stored_comparisons(out_dir))
    if comps.inputs:                    # kept with the numbers: a later export with the same inputs reuses them
        manifest["comparisons"] = {"inputs": comps.inputs, "rows": list(comps)}
    if "csv" in formats:
        paths["table.csv"] = atomic_write(out_dir / "table.csv", to_csv(grid, header, body))
        if comps:
            paths["significance.csv"] = atomic_write(out_dir / "significance.csv", comparisons_csv(comps))
    if "md" in formats:
        paths["table.md"] = atomic_write(out_dir / "table.md", to_markdown(grid, header, body, comps))
    if "tex" in formats:
        paths["table.tex"] = atomic_write(out_dir / "table.tex", to_latex(grid, store, comps))
    paths[MANIFEST] = atomic_write(out_dir / MANIFEST, json.dumps(manifest, indent=1, default=str) + "\n")
    return paths


def _check_not_emptier(out_dir: Path, manifest: dict) -> None:
    old_path = out_dir / MANIFEST
    if old_path.exists():
        try:
            old = json.loads(old_path.read_text(encoding="utf-8"))
            old_done = int(old["done"])
        except (OSError, ValueError, KeyError, TypeError):
            raise ExportRefused(f"{old_path} is unreadable, so raygap cannot tell whether this export would hold "
                                "fewer results than the tables there; pass --force to replace them") from None
        if manifest["done"] < old_done:
            raise ExportRefused(f"kept the tables in {out_dir}: they hold {old_done} done cell(s), this export "
                                f"{manifest['done']} of {manifest['cells']}; pass --force to replace them")
        return
    there = [n for n in GUARDED if (out_dir / n).exists()]
    if there:
        raise ExportRefused(f"{out_dir / there[0]} exists without the {MANIFEST} raygap writes beside its tables, "
                            "so raygap cannot tell whether this export would hold fewer results; "
                            "pass --force to replace it")


# ----------------------------------------------------------------------------- status
def status_text(grid, store) -> str:
    """``raygap status``: per row and column the trials done / running / failed /
    interrupted / missing (missing = pending or never started), the totals over distinct
    trials, each failed trial's error on one line, and the skipped rows. A trial whose
    driver on this machine is gone counts as interrupted, never as running."""
    distinct = grid.distinct()
    st = store.status_of(list(distinct))
    combos = grid.column_combos()
    lines = [f"grid {grid.name} ({grid.path})" + (f", profile {grid.profile}" if grid.profile else "")
             + (f", --set {' '.join(grid.sets)}" if grid.sets else "")
             + f": {len(grid.trials)} cells, {len(distinct)} distinct trials"]
    lw = max([len(r) for r in grid.row_labels] + [3])
    cols = [", ".join(str(v) for v in c.values()) or "-" for c in combos]
    cw = max([len(c) for c in cols] + [6])
    kinds = ("done", "running", "failed", "interrupted")
    lines.append(f"  {'row':{lw}s}  {'column':{cw}s}  done running failed interrupted missing")
    for label in grid.row_labels:
        for col, colname in zip(combos, cols, strict=True):
            keys = [t.key for t in grid.cell(label, col)]
            c = {s: sum(1 for k in keys if st.get(k) == s) for s in kinds}
            miss = len(keys) - sum(c.values())
            lines.append(f"  {label:{lw}s}  {colname:{cw}s}  {c['done']:4d} {c['running']:7d} {c['failed']:6d} "
                         f"{c['interrupted']:11d} {miss:7d}")
    tot = {s: sum(1 for k in distinct if st.get(k) == s) for s in kinds}
    lines.append(f"total: {tot['done']} done, {tot['running']} running, {tot['failed']} failed, "
                 f"{tot['interrupted']} interrupted, {len(distinct) - sum(tot.values())} missing "
                 f"(of {len(distinct)} distinct trials)")
    failed = [k for k in distinct if st.get(k) == "failed"]
    if failed:
        recs = store.records(failed)
        for k in failed:
            t = distinct[k]
            col = ", ".join(str(v) for v in t.column.values())
            err = ((recs.get(k) or {}).get("error") or "").splitlines()
            lines.append(f"  failed {k} ({t.label} | {col} | seed {t.seed}): {err[0] if err else '?'}")
    for label, reason in grid.skipped:
        lines.append(f"  skipped row {label!r}: {reason}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- reproduction report
def reproduction_report(grid, store, out_dir: Path, figures: list | None = None) -> Path:
    """``report.md`` (and ``report.html``) in ``out_dir``: for each cell the paper's number (the grid's
    ``paper_results``) beside ours (mean ± std over seeds), the difference, the paired
    comparison with the reference row, the figures, and the settings in force. Cells of a
    profile whose columns are not the paper's (the demo's avdigits) are not set beside the
    paper's: both tables are shown, marked as not comparable."""
    combos, cells = table_cells(grid, store)
    comps = paired_comparisons(grid, store, known=stored_comparisons(out_dir))
    paper = grid.paper
    col_values = [str(next(iter(c.values()))) if len(c) == 1 else None for c in combos]
    matched = bool(paper) and grid.profile != "demo" and all(
        v is not None and any(v in per for per in paper.values()) for v in col_values)
    lines = [f"# Reproduction report: {grid.name}" + (f" ({grid.profile} profile)" if grid.profile else ""), "",
             grid.description, ""]
    n_done = done_cells(grid, store)
    lines.append(f"{n_done} of {len(grid.trials)} cells done; generated {time.strftime('%Y-%m-%d %H:%M:%S')}.")
    if not matched:
        lines += ["", "**Not comparable with the paper**: this profile's data, model or schedule are not the paper's"
                  + (f" (columns: {', '.join(grid.column_header(c) for c in combos)})" if combos else "")
                  + ". The paper's numbers are listed for reference only."]
    lines += ["", "## Ours" + (" beside the paper" if matched else ""), ""]
    header = ["Method"]
    for c in combos:
        for m in grid.metrics:
            name = f"{grid.column_header(c)} {metric_label(m)}"
            header += [f"{name} paper", f"{name} ours", f"{name} ours − paper"] if matched else [f"{name} ours"]
    rows = []
    for label in grid.row_labels:
        r = [label]
        for ci, c in enumerate(combos):
            for m in grid.metrics:
                cell = cells[(label, ci, m)]
                if matched:
                    p = paper.get(label, {}).get(col_values[ci], {}).get(m)
                    diff = f"{cell.mean - p:+.2f}" if p is not None and cell.mean is not None else DASH
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
        lines += ["", "## The paper's numbers (for reference)", "", *md_table(ph, pb)]
    if comps:
        lines += comparison_md(grid, comps, "Which differences are real: paired differences vs")
    if any(c.in_warmup for c in cells.values()):
        lines += ["", _md(WARMUP_NOTE)]
    figs = sorted(Path(f) for f in (figures or []))
    if figs:
        lines += ["", "## Figures", ""]
        lines += [f"![{f.stem}](figures/{f.name})" for f in figs if f.name.startswith("table_")]
        per_cell = [f for f in figs if f.stem.endswith(("_fit", "_gap_evolution", "_accuracy"))]
        if per_cell:
            lines += ["", "Per cell (first finished seed): mixture fit, gap evolution, accuracy per modality:", ""]
            lines += [f"- [{f.stem}](figures/{f.name})" for f in per_cell]
    lines += ["", "## Settings in force", ""]
    ref = next((t for t in grid.trials if t.label == (grid.reference or grid.row_labels[0])), None)
    if ref is not None:
        flat = flatten(ref.config.to_dict())
        lines.append(f"The reference row's first trial ({ref.label}, {grid.column_header(ref.column)}, seed {ref.seed}, "
                     f"key {ref.key[:12]}):")
        lines += ["", "```"] + [f"{k}: {v}" for k, v in sorted(flat.items())] + ["```"]
    lines.append("")
    lines.append("The other rows differ from it by their row's keys (grids/" + grid.path.name + "). The readings of the "
                 "paper in force are docs/method.md's (gap_adaptive's params above are its defaults where not set).")
    infos = store.done_infos({t.key for t in grid.trials})
    forked = sum(1 for i in infos.values() if i.get("warmup_from"))
    if forked:
        lines += ["", f"Shared warm-ups: {forked} of the {len(infos)} done trials started from the end of a warm-up "
                  "another trial trained (the same config outside the adaptive stage's keys, the same seed): they "
                  "differ from it only after the switch (docs/method.md, \"Shared warm-ups\")."]
    text = "\n".join(lines).rstrip() + "\n"
    atomic_write(Path(out_dir) / "report.html", report_html(text))
    return atomic_write(Path(out_dir) / "report.md", text)


def report_html(markdown: str, width: int = 240) -> str:
    """The report as one self-contained HTML page: rich (a dependency already) renders the
    Markdown and exports it with inline styles; no Markdown library is added for one page."""
    import io

    from rich.console import Console
    from rich.markdown import Markdown

    console = Console(record=True, width=width, file=io.StringIO(), color_system="truecolor")
    console.print(Markdown(markdown))
    return console.export_html(inline_styles=True)
