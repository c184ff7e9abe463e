"""Which epoch of a trial's history a table reports: the best on validation (``train.select``),
never chosen on test, among the epochs ``train.select_from`` makes eligible.

The choice is made from the stored per-epoch history, so it is not part of what a trial
computes: ``train.select_from`` is outside the trial key, and a table that picks from the
adaptive stage only (Tables III, V, VI) reports the same trials as one that picks from every
epoch (Table II), without training them again. The trial stores the metrics of
``select_from: all``; :func:`as_selected` gives a stored record as a cell with another
``select_from`` reads it. Plain Python: no numpy, no torch (exports import it).
"""
from __future__ import annotations

import math

LOWER_IS_BETTER = {"loss", "mae"}


def select_metric(select: str, task: str) -> str:
    """The validation metric ``train.select`` names for this task (``auto``: acc / mae)."""
    if select == "auto":
        return "mae" if task == "regression" else "acc"
    return select


def select_epoch(history: list[dict], select: str, select_from: str = "all") -> int:
    """Index of the epoch with the best validation metric (earliest on ties). ``select_from:
    adaptive``: only among the epochs after a warm-up stage (records whose ``stage`` is not
    ``warmup``), where the method has any."""
    key = f"val_{select}"
    allowed = [i for i, h in enumerate(history) if select_from == "all" or h.get("stage") != "warmup"] \
        or list(range(len(history)))
    sign = -1.0 if select in LOWER_IS_BETTER else 1.0
    best, best_v = allowed[0], -math.inf
    for i in allowed:
        v = history[i].get(key)
        v = sign * v if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf
        if v > best_v:                       # strictly better: the earliest of ties is kept
            best, best_v = i, v
    return best


def final_metrics(history: list[dict], select: str, select_from: str = "all") -> dict[str, float]:
    """Test metrics at the epoch chosen on validation, plus the last epoch's. For a method with
    a warm-up stage, ``best_in_warmup`` (1 or 0) says whether the chosen epoch lies in it."""
    b = select_epoch(history, select, select_from)
    best, last = history[b], history[-1]
    out = {k[len("test_"):]: v for k, v in best.items() if k.startswith("test_")}
    out.update({f"val_{k[len('val_'):]}": v for k, v in best.items() if k.startswith("val_")})
    out.update({f"last_{k[len('test_'):]}": v for k, v in last.items() if k.startswith("test_")})
    out["best_epoch"] = best["epoch"]
    out["last_epoch"] = last["epoch"]
    if any("stage" in h for h in history):
        out["best_in_warmup"] = 1.0 if best.get("stage") == "warmup" else 0.0
    for k, v in best.items():   # method-reported figures that belong in tables (e.g. data_pct)
        if k.startswith("report_"):
            out[k[len("report_"):]] = v
    return out


def history_select(select: str, history: list[dict]) -> str:
    """``train.select`` resolved from what a stored history holds (``auto``: acc where the
    epochs have ``val_acc``, else mae): the task is not stored beside the record."""
    if select != "auto":
        return select
    return "acc" if history and "val_acc" in history[0] else "mae"


def as_selected(rec: dict, train) -> dict:
    """``rec`` (a stored record) as a cell whose config has ``train`` (its ``select``,
    ``select_from``) reads it: the record itself for ``select_from: all`` (what the trial
    stored), else a copy whose metrics are chosen again from its history. A record without a
    history (not done) is returned as it is."""
    if getattr(train, "select_from", "all") == "all" or not rec.get("history"):
        return rec
    hist = rec["history"]
    return {**rec, "metrics": final_metrics(hist, history_select(train.select, hist), train.select_from)}
