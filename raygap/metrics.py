"""Classification metrics of the fused prediction and of each modality."""
from __future__ import annotations

import numpy as np


# The metric names each evaluation returns (per modality with a ``_<m>`` suffix); a grid's
# ``metrics:`` are checked against them at load (tests check these lists against the functions).
CLASSIFICATION_METRICS = ("acc", "macro_f1", "loss")
REGRESSION_METRICS = ("mae", "corr", "acc2", "f1_2", "acc2_nz", "f1_2_nz", "acc7", "loss")
TRIAL_METRICS = ("best_epoch", "last_epoch")


def metric_names(task: str, modalities: list[str], reports: tuple[str, ...] = ()) -> set[str]:
    """Every name a finished trial's metrics can hold: each evaluation metric of ``task``, fused
    and per modality, as chosen on validation (``acc``), its validation value (``val_acc``)
    and the last epoch's (``last_acc``); ``best_epoch``/``last_epoch``; a method's reported
    figures (``data_pct``)."""
    base = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    names = {f"{b}{sfx}" for b in base for sfx in ["", *(f"_{m}" for m in modalities)]}
    return ({f"{pre}{n}" for n in names for pre in ("", "val_", "last_")} | set(TRIAL_METRICS) | set(reports))


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float((pred == y).mean()) if len(y) else float("nan")


def macro_f1(pred: np.ndarray, y: np.ndarray, num_classes: int) -> float:
    """Macro-F1 over the classes present in y or pred (as sklearn's f1_score(average='macro'))."""
    classes = np.union1d(np.unique(y), np.unique(pred))
    f1s = []
    for c in classes:
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        denom = 2 * tp + fp + fn
        f1s.append(0.0 if denom == 0 else 2 * tp / denom)
    return float(np.mean(f1s)) if f1s else float("nan")


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
    """F1 per class weighted by the class's support in y (sklearn's average='weighted'),
    the F1 this field reports on MOSI's binary splits."""
    if not len(y):
        return float("nan")
    total = 0.0
    for c in np.unique(y):
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        denom = 2 * tp + fp + fn
        total += (0.0 if denom == 0 else 2 * tp / denom) * np.sum(y == c)
    return float(total / len(y))


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
