"""A table's cells: one (row, column, metric) over the seeds that are done, in the table's units.

* accuracy-like metrics (``acc``, ``macro_f1``, their ``acc_<modality>``, ``val_`` and ``last_``
  variants), stored as fractions in [0, 1], are shown in percent; every other metric as stored
  (``data_pct`` is already a percent); two decimals, as the paper (three for MAE, correlation);
* a cell's text is ``mean ± std (n=k)`` (see :func:`fmt`): std is the sample std (ddof = 1);
  with one done seed the value alone (a std of one sample is undefined).

Everything here works on the records an export read once (key -> stored record); nothing
here reads the store.
"""
from __future__ import annotations

import math
import statistics

PERCENT = {"acc", "macro_f1", "acc2", "f1_2", "acc2_nz", "f1_2_nz", "acc7"}    # fractions shown in percent
METRIC_LABELS = {"acc": "Acc", "macro_f1": "Macro-F1", "data_pct": "Data %", "best_epoch": "Epoch",
                 "mae": "MAE", "corr": "Corr", "acc2": "Acc-2", "f1_2": "F1", "acc2_nz": "Acc-2 (non-0)",
                 "f1_2_nz": "F1 (non-0)", "acc7": "Acc-7"}
DASH = "–"
WARMUP_MARK = "†"          # "† k": in k seeds the epoch picked on validation lies in the warm-up stage
WARMUP_NOTE = (f"{WARMUP_MARK} k: in k of the seeds the epoch picked on validation lies in the method's warm-up stage "
               "(the reported number is then the warm-up objective's, not the adaptive stage's); "
               "train.select_from: adaptive picks from the adaptive stage only.")


def selection_note(grid) -> str:
    """Which epochs the reported number may come from, for the rows whose method has a warm-up
    stage (``gap_adaptive``'s): "" when no row has one."""
    staged: dict[str, set] = {}
    for t in grid.trials:
        if t.config.warmup() is not None:
            staged.setdefault(t.config.train.select_from, set()).add(t.label)
    if not staged:
        return ""
    words = {"all": "every epoch, the warm-up stage's included (train.select_from: all)",
             "adaptive": "the adaptive stage's epochs only (train.select_from: adaptive)"}
    if len(staged) == 1:
        return f"Epochs eligible for the reported number of a two-stage row: {words[next(iter(staged))]}."
    return "Epochs eligible for the reported number: " + "; ".join(
        f"{', '.join(sorted(rows))}: {words[k]}" for k, rows in sorted(staged.items())) + "."


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


def shown_value(rec: dict, metric: str) -> float | None:
    """A done record's ``metric`` in the table's unit (percent for fractions), or None when
    the record lacks it or it is not a finite number."""
    v = (rec["metrics"] or {}).get(metric)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v) * (100.0 if is_percent(metric) else 1.0)
    return None


def is_done(rec: dict | None) -> bool:
    return bool(rec) and rec["status"] == "done"


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
    """``82.00 ± 2.00 (n=3)``, ``70.00 (n=1/3)``, ``– (0/3)`` when none is done, ``n/a (n=3)``
    when trials are done but none reports the metric (e.g. Concat has no Data %); ``(n=3)``
    when every seed of the cell is done, ``(n=2/3)`` when only some are (``complete_n=False``
    leaves it out of complete cells, as the LaTeX table does)."""
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


def table_cells(grid, records: dict) -> tuple[list[dict], dict[tuple[str, int, str], Cell]]:
    """(column combos in table order, (row label, column index, metric) -> Cell), from
    ``records`` (key -> stored record of the grid's trials)."""
    combos = grid.column_combos()
    out: dict[tuple[str, int, str], Cell] = {}
    for label in grid.row_labels:
        for ci, col in enumerate(combos):
            specs = grid.cell(label, col)
            done = [records[t.key] for t in specs if is_done(records.get(t.key))]
            warm = sum(1 for rec in done if (rec["metrics"] or {}).get("best_in_warmup") == 1)
            for m in grid.metrics:
                vals = [v for rec in done if (v := shown_value(rec, m)) is not None]
                out[(label, ci, m)] = Cell(vals, len(done), len(specs), digits=metric_digits(m), in_warmup=warm)
    return combos, out


def seed_values(grid, records: dict, label: str, col: dict, metric: str) -> dict[int, float]:
    """seed -> value (in the table's unit) of one cell's done trials."""
    out = {}
    for t in grid.cell(label, col):
        rec = records.get(t.key)
        if is_done(rec) and (v := shown_value(rec, metric)) is not None:
            out[t.seed] = v
    return out
