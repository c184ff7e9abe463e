"""``lmm``: two-component Laplace mixture by EM (paper Table V, "LM")."""
from __future__ import annotations

import numpy as np

from ..registry import MIXTURES
from .base import SCALE_FLOOR, Family, RawFit, e_step

_LOG_2 = float(np.log(2.0))


def weighted_median(xs: np.ndarray, w: np.ndarray) -> float:
    """Lower weighted median of sorted ``xs`` with non-negative weights ``w``:
    the smallest xs[j] with sum_{i<=j} w_i >= sum_i w_i / 2."""
    c = np.cumsum(w)
    j = int(np.searchsorted(c, 0.5 * c[-1], side="left"))
    return float(xs[min(j, xs.size - 1)])


@MIXTURES.register("lmm")
class Laplace(Family):
    """Laplace mixture by EM: mu_k = weighted median, b_k = weighted mean |x - mu_k|."""
    name = "lmm"

    @staticmethod
    def logpdf(x, mu, scale, nu=None):
        return -np.abs(x - mu) / scale - np.log(scale) - _LOG_2

    @classmethod
    def init_params(cls, z, labels):
        w = np.array([np.mean(labels == k) for k in (0, 1)])
        mu = np.array([np.median(z[labels == k]) for k in (0, 1)])
        b = np.array([max(np.mean(np.abs(z[labels == k] - mu[k])), SCALE_FLOOR) for k in (0, 1)])
        return dict(weights=w, means=mu, scales=b)

    @classmethod
    def _em(cls, zs, p, max_iter, tol):
        w, mu, b = p["weights"].astype(float), p["means"].astype(float), p["scales"].astype(float)
        prev, converged, it = -np.inf, False, 0
        for it in range(1, max_iter + 1):
            lj = np.log(np.maximum(w, 1e-300))[:, None] + np.stack(
                [cls.logpdf(zs, mu[k], b[k]) for k in (0, 1)])
            r, ll = e_step(lj)
            if not np.isfinite(ll):
                break
            nk = np.maximum(r.sum(axis=1), 1e-300)
            w = nk / zs.size
            mu = np.array([weighted_median(zs, r[k]) for k in (0, 1)])
            b = np.array([max(float(r[k] @ np.abs(zs - mu[k])) / nk[k], SCALE_FLOOR) for k in (0, 1)])
            if abs(ll - prev) < tol:
                converged = True
                break
            prev = ll
            if w.min() < 1e-8:          # a component emptied; fit_mixture falls back
                break
        lj = np.log(np.maximum(w, 1e-300))[:, None] + np.stack([cls.logpdf(zs, mu[k], b[k]) for k in (0, 1)])
        _, ll = e_step(lj)
        return RawFit(weights=w, means=mu, scales=b, dof=None, converged=converged, n_iter=it, mean_loglik=ll)

    @classmethod
    def prepare(cls, z):
        return np.sort(z, kind="stable")        # sorted once; weighted medians are O(N) per step

    @classmethod
    def single(cls, x):
        med = float(np.median(x))
        return med, float(np.mean(np.abs(x - med))), None
