"""The paper's formulas as plain functions (Section III): modality gaps (Eqs. 5-7) and the
per-sample adaptive loss (Eq. 11). Torch in, torch out; gradients flow through the
probabilities. Kept separate from the method's bookkeeping so each formula is tested
with hand-computed numbers (tests/test_gaps.py).
"""
from __future__ import annotations

import math

import numpy as np

from ..lazy import lazy

torch = lazy("torch")
Fn = lazy("torch.nn.functional")


def prob_gap(logits_dom: torch.Tensor, logits_weak: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Eq. 5: g_i = s^dom_{y_i} - s^weak_{y_i} (probabilities of the true class)."""
    s_d = Fn.softmax(logits_dom.float(), dim=1).gather(1, y[:, None]).squeeze(1)
    s_w = Fn.softmax(logits_weak.float(), dim=1).gather(1, y[:, None]).squeeze(1)
    return s_d - s_w


def kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """D_KL(s || U) = sum_j s_j log(s_j * M) = log M - H(s)."""
    logp = Fn.log_softmax(logits.float(), dim=1)
    return (logp.exp() * logp).sum(1) + math.log(logits.shape[1])


def kl_gap(logits_dom: torch.Tensor, logits_weak: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 6: g_i = D_KL(s^dom_i || U) - D_KL(s^weak_i || U) (label-free)."""
    return kl_to_uniform(logits_dom) - kl_to_uniform(logits_weak)


GAPS = {"prob": prob_gap, "kl": kl_gap}


def zscore_stats(g: np.ndarray, sigma_floor: float) -> tuple[float, float]:
    """Eq. 7's mu_G and sigma_G over the finite gaps, sigma floored so 1/sigma stays bounded."""
    g = g[np.isfinite(g)]
    if len(g) == 0:
        return 0.0, 1.0
    return float(g.mean()), max(float(g.std()), sigma_floor)


def adaptive_loss(ce_f: torch.Tensor, ce_uni: torch.Tensor, g: torch.Tensor, w0: torch.Tensor,
                  w1: torch.Tensor, u0: float, *, alpha: float, beta: float, gamma: float,
                  lam: float) -> dict[str, torch.Tensor]:
    """Eq. 11 per sample, averaged over the batch:

        L_i = alpha * w0_i * L_f,i + lam * (beta * g_i^2 + gamma * w1_i * (g_i - u0)^2 + sum_m L_m,i)

    ``ce_f`` (B,), ``ce_uni`` (B,) the sum of the unimodal CEs (zeros when they are off),
    ``g`` (B,) the live gap in the space the loss uses, ``w0``/``w1`` (B,) constants from
    the last mixture fit (ones when posterior weighting is off), ``u0`` a constant.
    Returns the total and each term (batch means) for logging.
    """
    fuse = alpha * w0 * ce_f
    reg = beta * g.pow(2)
    pull = gamma * w1 * (g - u0).pow(2)
    total = fuse + lam * (reg + pull + ce_uni)
    return {"loss": total.mean(), "term_fuse": fuse.mean().detach(), "term_gap2": reg.mean().detach(),
            "term_pull": pull.mean().detach(), "term_uni": ce_uni.mean().detach()}


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for the boolean ``positive`` (ties averaged)."""
    score, positive = np.asarray(score, float), np.asarray(positive, bool)
    ok = np.isfinite(score)
    score, positive = score[ok], positive[ok]
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    s = score[order]
    i = 0
    while i < len(s):                       # average ranks over ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
