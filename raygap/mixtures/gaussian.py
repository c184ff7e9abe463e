"""``gmm``: two-component Gaussian mixture (the paper's Eq. 8) via scikit-learn."""
from __future__ import annotations

import numpy as np

from ..registry import MIXTURES
from .base import SCALE_FLOOR, Family, RawFit

_LOG_2PI = float(np.log(2.0 * np.pi))


@MIXTURES.register("gmm")
class Gaussian(Family):
    """Gaussian mixture: sklearn GaussianMixture(n_components=2), reg_covar = SCALE_FLOOR**2."""
    name = "gmm"

    @staticmethod
    def logpdf(x, mu, scale, nu=None):
        d = (x - mu) / scale
        return -0.5 * d * d - np.log(scale) - 0.5 * _LOG_2PI

    @classmethod
    def init_params(cls, z, labels):
        w = np.array([np.mean(labels == k) for k in (0, 1)])
        mu = np.array([z[labels == k].mean() for k in (0, 1)])
        sd = np.array([max(z[labels == k].std(), SCALE_FLOOR) for k in (0, 1)])
        return dict(weights=w, means=mu, scales=sd)

    @classmethod
    def fit(cls, z, inits, *, seed, max_iter, tol):
        from sklearn.mixture import GaussianMixture  # lazy: sklearn costs seconds at import

        best = None
        X = z.reshape(-1, 1)
        for p in inits:
            gm = GaussianMixture(
                n_components=2, covariance_type="full", reg_covar=SCALE_FLOOR ** 2,
                max_iter=max_iter, tol=tol, random_state=seed, n_init=1,
                weights_init=p["weights"] / p["weights"].sum(),
                means_init=p["means"].reshape(2, 1),
                precisions_init=(1.0 / p["scales"] ** 2).reshape(2, 1, 1),
            ).fit(X)
            ll = float(gm.score(X))
            if best is None or ll > best.mean_loglik:
                best = RawFit(weights=gm.weights_.copy(), means=gm.means_[:, 0].copy(),
                              scales=np.sqrt(gm.covariances_[:, 0, 0]), dof=None,
                              converged=bool(gm.converged_), n_iter=int(gm.n_iter_), mean_loglik=ll)
        return best

    @classmethod
    def single(cls, x):
        return float(np.mean(x)), float(np.std(x)), None
