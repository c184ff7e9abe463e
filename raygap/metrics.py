"""Classification metrics of the fused prediction and of each modality."""
from __future__ import annotations

import numpy as np


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
