"""Metrics of the fused prediction and of each modality.

Accuracy and F1 are scikit-learn's (``accuracy_score``, ``f1_score`` with ``average="macro"``
/ ``"weighted"`` and ``zero_division=0``: a class never predicted and never present scores 0),
imported on first use (scikit-learn takes a second to import). The cross-entropy is computed
here from the logits (a log-softmax): ``sklearn.metrics.log_loss`` takes probabilities and
clips them, which loses precision for confident predictions.
"""
from __future__ import annotations

import numpy as np


# The metric names each evaluation returns (per modality with a ``_<m>`` suffix); a grid's
# ``metrics:`` are checked against them at load (tests check these lists against the functions).
CLASSIFICATION_METRICS = ("acc", "macro_f1", "loss")
REGRESSION_METRICS = ("mae", "corr", "acc2", "f1_2", "acc2_nz", "f1_2_nz", "acc7", "loss")
TRIAL_METRICS = ("best_epoch", "last_epoch")


def shown_metric(names, prefix: str = "") -> str:
    """The metric a progress line or a figure shows for records holding ``names`` (a record's
    keys, or all the keys of a history): accuracy, or MAE for a regression target (``prefix``:
    ``val_`` for validation values)."""
    return "acc" if f"{prefix}acc" in names or f"{prefix}mae" not in names else "mae"


def metric_names(task: str, modalities: list[str], reports: tuple[str, ...] = ()) -> set[str]:
    """Every name a finished trial's metrics can hold: each evaluation metric of ``task``, fused
    and per modality, as chosen on validation (``acc``), its validation value (``val_acc``)
    and the last epoch's (``last_acc``); ``best_epoch``/``last_epoch``; a method's reported
    figures (``data_pct``)."""
    base = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    names = {f"{b}{sfx}" for b in base for sfx in ["", *(f"_{m}" for m in modalities)]}
    return ({f"{pre}{n}" for n in names for pre in ("", "val_", "last_")} | set(TRIAL_METRICS) | set(reports))


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(y, pred)) if len(y) else float("nan")


def macro_f1(pred: np.ndarray, y: np.ndarray, num_classes: int | None = None) -> float:
    """Macro-F1 over the classes present in y or pred (sklearn's ``f1_score(average="macro")``)."""
    from sklearn.metrics import f1_score

    return float(f1_score(y, pred, average="macro", zero_division=0)) if len(y) else float("nan")


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(-log_softmax(logits.astype(np.float64))[np.arange(len(y)), y].mean()) if len(y) else float("nan")


def classification_metrics(pred: dict[str, np.ndarray], y: np.ndarray, num_classes: int) -> dict[str, float]:
    """``pred`` holds logits: ``fused`` and one entry per modality.

    Returns acc, macro_f1, loss (fused) and acc_<m>, macro_f1_<m>, loss_<m> per modality.
    """
    out = {}
    for name, logits in pred.items():
        suffix = "" if name == "fused" else f"_{name}"
        p = logits.argmax(axis=1)
        out[f"acc{suffix}"] = accuracy(p, y)
        out[f"macro_f1{suffix}"] = macro_f1(p, y, num_classes)
        out[f"loss{suffix}"] = cross_entropy(logits, y)
    return out


# ----------------------------------------------------------------------------- regression (CMU-MOSI)
def weighted_f1(pred: np.ndarray, y: np.ndarray) -> float:
    """F1 per class weighted by the class's support in y (sklearn's ``average="weighted"``),
    the F1 this field reports on MOSI's binary splits."""
    from sklearn.metrics import f1_score

    return float(f1_score(y, pred, average="weighted", zero_division=0)) if len(y) else float("nan")


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")     # undefined for a constant prediction: never reported as 0
    return float(np.corrcoef(a, b)[0, 1])


def sentiment_metrics(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The CMU-MOSI metrics of one prediction vector ``p`` against labels ``y`` in [-3, 3].

    mae, corr (Pearson); acc2/f1_2: negative (< 0) vs non-negative (>= 0);
    acc2_nz/f1_2_nz: negative vs positive with the zero-labelled samples left out;
    acc7: round(clip(., -3, 3)) of both, 7 classes. F1 is support-weighted.
    """
    p, y = p.astype(np.float64).reshape(-1), y.astype(np.float64).reshape(-1)
    out = {"mae": float(np.abs(p - y).mean()) if len(y) else float("nan"), "corr": pearson(p, y)}
    out["acc2"] = accuracy(p >= 0, y >= 0)
    out["f1_2"] = weighted_f1(p >= 0, y >= 0)
    nz = y != 0
    out["acc2_nz"] = accuracy(p[nz] > 0, y[nz] > 0)
    out["f1_2_nz"] = weighted_f1(p[nz] > 0, y[nz] > 0)
    out["acc7"] = accuracy(np.round(np.clip(p, -3, 3)), np.round(np.clip(y, -3, 3)))
    return out


def regression_metrics(pred: dict[str, np.ndarray], y: np.ndarray) -> dict[str, float]:
    """``pred`` holds (N, 1) outputs: ``fused`` and one per modality (the auxiliary heads).

    Returns the sentiment metrics and ``loss`` (= MSE) for each, suffixed ``_<m>`` per modality.
    """
    out = {}
    for name, o in pred.items():
        suffix = "" if name == "fused" else f"_{name}"
        p = o.reshape(len(o), -1)[:, 0]
        for k, v in sentiment_metrics(p, y).items():
            out[f"{k}{suffix}"] = v
        out[f"loss{suffix}"] = float(np.mean((p.astype(np.float64) - y) ** 2)) if len(y) else float("nan")
    return out
