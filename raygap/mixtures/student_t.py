"""``smm``: two-component Student-t mixture by ECM (paper Table V, "SM").

Peel & McLachlan (2000)-style ECM with a per-component degrees of freedom nu_k, solved
from the standard digamma equation with scipy.optimize.brentq on [DOF_MIN, DOF_MAX].
"""
from __future__ import annotations

import numpy as np

from ..registry import MIXTURES
from .base import SCALE_FLOOR, Family, RawFit, e_step

DOF_MIN, DOF_MAX = 0.5, 200.0
DOF_INIT = 10.0


def solve_dof(c: float) -> float:
    """Root in nu of  -psi(nu/2) + log(nu/2) + 1 + c = 0, clipped to [DOF_MIN, DOF_MAX].

    c = (1/n_k) sum_i r_ik (log u_ik - u_ik) + psi((nu_old+1)/2) - log((nu_old+1)/2).
    The left side decreases in nu, so: > 0 at DOF_MAX -> DOF_MAX; < 0 at DOF_MIN -> DOF_MIN.
    """
    from scipy.optimize import brentq
    from scipy.special import digamma

    g = lambda nu: -digamma(nu / 2) + np.log(nu / 2) + 1.0 + c  # noqa: E731
    glo, ghi = g(DOF_MIN), g(DOF_MAX)
    if not np.isfinite(c) or ghi >= 0:
        return DOF_MAX
    if glo <= 0:
        return DOF_MIN
    return float(brentq(g, DOF_MIN, DOF_MAX, xtol=1e-8, rtol=1e-10))


@MIXTURES.register("smm")
class StudentT(Family):
    """Student-t mixture by ECM with latent gamma scales u = (nu+1)/(nu+delta^2); nu_k by brentq."""
    name = "smm"

    @staticmethod
    def logpdf(x, mu, scale, nu):
        from scipy.special import gammaln    # lazy: scipy costs about a second at import

        nu = DOF_MAX if nu is None else nu
        d = (x - mu) / scale
        return (gammaln((nu + 1) / 2) - gammaln(nu / 2) - 0.5 * np.log(nu * np.pi)
                - np.log(scale) - (nu + 1) / 2 * np.log1p(d * d / nu))

    @classmethod
    def init_params(cls, z, labels):
        w = np.array([np.mean(labels == k) for k in (0, 1)])
        mu = np.array([z[labels == k].mean() for k in (0, 1)])
        sd = np.array([max(z[labels == k].std(), SCALE_FLOOR) for k in (0, 1)])
        return dict(weights=w, means=mu, scales=sd, dof=np.array([DOF_INIT, DOF_INIT]))

    @classmethod
    def _log_joint(cls, z, w, mu, s, nu):
        return np.log(np.maximum(w, 1e-300))[:, None] + np.stack(
            [cls.logpdf(z, mu[k], s[k], nu[k]) for k in (0, 1)])

    @classmethod
    def _em(cls, z, p, max_iter, tol):
        from scipy.special import digamma

        w, mu, s, nu = (p["weights"].astype(float), p["means"].astype(float),
                        p["scales"].astype(float), p["dof"].astype(float))
        prev, converged, it = -np.inf, False, 0
        for it in range(1, max_iter + 1):
            r, ll = e_step(cls._log_joint(z, w, mu, s, nu))
            if not np.isfinite(ll):
                break
            d2 = ((z[None, :] - mu[:, None]) / s[:, None]) ** 2
            u = (nu[:, None] + 1.0) / (nu[:, None] + d2)          # E[u | x, k]
            nk = np.maximum(r.sum(axis=1), 1e-300)
            w = nk / z.size
            ru = r * u
            mu_new = (ru @ z) / np.maximum(ru.sum(axis=1), 1e-300)
            s = np.sqrt(np.maximum(np.sum(ru * (z[None, :] - mu_new[:, None]) ** 2, axis=1) / nk,
                                   SCALE_FLOOR ** 2))
            c = (np.sum(r * (np.log(u) - u), axis=1) / nk
                 + digamma((nu + 1) / 2) - np.log((nu + 1) / 2))
            nu = np.array([solve_dof(float(ck)) for ck in c])
            mu = mu_new
            if abs(ll - prev) < tol:
                converged = True
                break
            prev = ll
            if w.min() < 1e-8:
                break
        _, ll = e_step(cls._log_joint(z, w, mu, s, nu))
        return RawFit(weights=w, means=mu, scales=s, dof=nu, converged=converged, n_iter=it, mean_loglik=ll)

    @classmethod
    def single(cls, x):
        # fallback: median / std with a near-Gaussian dof
        return float(np.median(x)), float(np.std(x)), DOF_MAX
