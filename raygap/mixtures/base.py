"""Two-component 1-D mixtures of per-sample modality gaps (paper Sec. III-B, Eqs. 8-9).

``fit_mixture(family, x)`` fits a registered family (``MIXTURES``: gmm, smm, lmm) to the
finite values of ``x`` and returns a :class:`MixtureFit` whose component 0 is the
*balanced* component and component 1 the *imbalanced* one.  ``MixtureFit.posterior``
gives the per-sample (w0, w1) of Eq. 9.  See docs/mixtures.md for the equations, the
initialisation, the fallbacks and the identity matching across refits.

A family is a :class:`Family` subclass registered with ``MIXTURES.register(name)``.  It
only ever sees *standardised* data (mean 0, std 1); ``fit_mixture`` standardises, calls
``Family.fit`` and maps the parameters back, so every floor and threshold below is in
units of the data's standard deviation.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..registry import MIXTURES


def logsumexp(a, axis=None):
    """scipy.special.logsumexp, imported on first use (scipy costs about a second at import,
    paid by every raygap process and every trial worker otherwise)."""
    from scipy.special import logsumexp as lse

    return lse(a, axis=axis)


# ---- thresholds (standardised units: the finite data have mean 0, std 1) -------------
MIN_POINTS = 8            # fewer finite points -> fallback
SCALE_FLOOR = 1e-3        # no scale (std, Laplace b, Student-t sigma) goes below this in EM
COLLAPSE_SCALE = 2e-3     # a fitted scale below this on few points means the component collapsed -> fallback
COLLAPSE_SHARE = 0.01     # ... "few": fewer than max(MIN_POINTS, this share of n) effective points; a
                          # tight cluster holding more is real (memorised, saturated gaps) and is kept
MIN_WEIGHT = 1e-3         # a fitted weight below this means the component emptied -> fallback
MIN_EFFECTIVE = 2.0       # ... as does pi_k * n below two points
ZERO_SPREAD = 1e-8        # std <= ZERO_SPREAD * max(1, |mean|): all values (nearly) equal
MATCH_MIN = 1e-3          # |agreement score| below this: previous fit can't decide identity
ABS_SCALE_FLOOR = 1e-12   # density guard in original units (user-built fits)
FALLBACK_SCALE_FLOOR = 1e-6  # x max(1, |location|): the fallback component's smallest scale
RULES = ("nearest_zero", "largest_weight", "right_tail")


@dataclass
class MixtureFit:
    """A fitted two-component mixture; component 0 = balanced, 1 = imbalanced.

    ``scales`` are the std for ``gmm``, the Laplace scale b for ``lmm`` and the
    Student-t scale sigma for ``smm``; ``dof`` holds (nu0, nu1) for ``smm`` else None.
    ``log_likelihood`` is the total log-likelihood of the finite data in the units of x.
    ``fallback`` is None for a proper two-component fit, else why the degenerate
    single-component fit (pi = (1, 0), w0 = 1 for every sample) was returned.
    ``swapped``: identity was taken from ``previous`` and differs from what ``rule``
    alone would have named; ``matched_previous``: identity was decided by ``previous``.
    """
    family: str
    weights: tuple[float, float]
    means: tuple[float, float]
    scales: tuple[float, float]
    dof: tuple[float, float] | None = None
    n: int = 0
    n_dropped: int = 0
    converged: bool = True
    n_iter: int = 0
    log_likelihood: float = float("nan")
    fallback: str | None = None
    swapped: bool = False
    rule: str = "nearest_zero"
    matched_previous: bool = False

    def __post_init__(self):
        self.weights = tuple(float(v) for v in self.weights)
        self.means = tuple(float(v) for v in self.means)
        self.scales = tuple(float(v) for v in self.scales)
        if self.dof is not None:
            self.dof = tuple(float(v) for v in self.dof)

    # ---- densities -------------------------------------------------------------
    def _family(self) -> "type[Family]":
        return MIXTURES.get(self.family).obj

    def component_logpdf(self, x) -> np.ndarray:
        """(N, 2) log density of each component at x (without the weights)."""
        x = _as_1d(x)
        fam = self._family()
        out = np.empty((x.size, 2))
        with np.errstate(all="ignore"):
            for k in range(2):
                scale = max(self.scales[k], ABS_SCALE_FLOOR) if math.isfinite(self.scales[k]) else 1.0
                nu = None if self.dof is None else self.dof[k]
                out[:, k] = fam.logpdf(x, self.means[k], scale, nu)
        return out

    def log_joint(self, x) -> np.ndarray:
        """(N, 2) log(pi_k) + log f_k(x)."""
        with np.errstate(divide="ignore"):
            logw = np.log(np.asarray(self.weights, dtype=float))
        return self.component_logpdf(x) + logw[None, :]

    def posterior(self, x) -> np.ndarray:
        """(N, 2) posteriors (w0, w1) of Eq. 9, computed with logsumexp.

        Rows sum to 1.  Non-finite x (and the rare finite x at which both weighted
        densities underflow to zero) get w0 = 1, w1 = 0.
        """
        x = _as_1d(x)
        lj = self.log_joint(x)
        w = np.zeros((x.size, 2))
        w[:, 0] = 1.0
        with np.errstate(all="ignore"):
            lse = logsumexp(lj, axis=1)
            ok = np.isfinite(x) & np.isfinite(lse)
            if ok.any():
                p = np.exp(lj[ok] - lse[ok, None])
                p = np.nan_to_num(p, nan=0.0)
                p /= p.sum(axis=1, keepdims=True)
                w[ok] = p
        return w

    def pdf(self, x) -> np.ndarray:
        """Mixture density at x (for plots); NaN where x is NaN."""
        x = _as_1d(x)
        with np.errstate(all="ignore"):
            return np.exp(logsumexp(self.log_joint(x), axis=1))

    def log_likelihood_of(self, x) -> float:
        """Total log-likelihood of the finite values of x."""
        x = _as_1d(x)
        x = x[np.isfinite(x)]
        with np.errstate(all="ignore"):
            return float(np.sum(logsumexp(self.log_joint(x), axis=1)))

    # ---- logging -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def f(v):
            v = float(v)
            return v if math.isfinite(v) else None
        return {
            "family": self.family,
            "pi": [f(v) for v in self.weights],
            "mu": [f(v) for v in self.means],
            "sigma": [f(v) for v in self.scales],
            "nu": None if self.dof is None else [f(v) for v in self.dof],
            "n": int(self.n), "n_dropped": int(self.n_dropped),
            "converged": bool(self.converged), "n_iter": int(self.n_iter),
            "log_likelihood": f(self.log_likelihood),
            "fallback": self.fallback, "swapped": bool(self.swapped),
            "rule": self.rule, "matched_previous": bool(self.matched_previous),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MixtureFit":
        nan = float("nan")
        g = lambda vs: tuple(nan if v is None else float(v) for v in vs)  # noqa: E731
        return cls(family=d["family"], weights=g(d["pi"]), means=g(d["mu"]), scales=g(d["sigma"]),
                   dof=None if d.get("nu") is None else g(d["nu"]), n=int(d.get("n", 0)),
                   n_dropped=int(d.get("n_dropped", 0)), converged=bool(d.get("converged", True)),
                   n_iter=int(d.get("n_iter", 0)),
                   log_likelihood=nan if d.get("log_likelihood") is None else float(d["log_likelihood"]),
                   fallback=d.get("fallback"), swapped=bool(d.get("swapped", False)),
                   rule=d.get("rule", "nearest_zero"), matched_previous=bool(d.get("matched_previous", False)))

    def summary(self) -> str:
        nu = "" if self.dof is None else f" nu=({self.dof[0]:.3g},{self.dof[1]:.3g})"
        s = (f"{self.family}: pi=({self.weights[0]:.3f},{self.weights[1]:.3f}) "
             f"mu=({self.means[0]:.3f},{self.means[1]:.3f}) "
             f"scale=({self.scales[0]:.3f},{self.scales[1]:.3f}){nu} n={self.n}")
        if self.n_dropped:
            s += f" dropped={self.n_dropped}"
        if self.fallback:
            s += f" FALLBACK[{self.fallback}]"
        if self.swapped:
            s += " SWAPPED(kept identity of previous fit)"
        return s


# ---- families ----------------------------------------------------------------------
@dataclass
class RawFit:
    """A family's fit on standardised data, components in arbitrary order."""
    weights: np.ndarray
    means: np.ndarray
    scales: np.ndarray
    dof: np.ndarray | None
    converged: bool
    n_iter: int
    mean_loglik: float


class Family:
    """Interface of a registered mixture family (all methods are class-level)."""
    name = "?"

    @staticmethod
    def logpdf(x: np.ndarray, mu: float, scale: float, nu: float | None) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def init_params(cls, z: np.ndarray, labels: np.ndarray) -> dict:
        """Starting parameters from a hard 2-way partition of standardised data."""
        raise NotImplementedError

    @classmethod
    def fit(cls, z: np.ndarray, inits: list[dict], *, seed: int, max_iter: int, tol: float) -> RawFit:
        """EM from each start in ``inits``; return the best by log-likelihood (the first on ties)."""
        data = cls.prepare(z)
        best = None
        for p in inits:
            f = cls._em(data, p, max_iter, tol)
            if best is None or f.mean_loglik > best.mean_loglik:
                best = f
        return best

    @classmethod
    def prepare(cls, z: np.ndarray) -> np.ndarray:
        """The data as the family's EM wants it (e.g. sorted once)."""
        return z

    @classmethod
    def _em(cls, z: np.ndarray, p: dict, max_iter: int, tol: float) -> RawFit:
        raise NotImplementedError

    @classmethod
    def single(cls, x: np.ndarray) -> tuple[float, float, float | None]:
        """(location, scale, dof) of a single component for the fallback fit."""
        raise NotImplementedError


def _as_1d(x) -> np.ndarray:
    if hasattr(x, "detach"):                      # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=float).reshape(-1)


def e_step(log_joint: np.ndarray) -> tuple[np.ndarray, float]:
    """Responsibilities (K, N) from log pi_k + log f_k(x_i) (K, N) and the mean log-likelihood."""
    lse = logsumexp(log_joint, axis=0)
    return np.exp(log_joint - lse[None, :]), float(np.mean(lse))


# ---- initialisation -----------------------------------------------------------------
def _lloyd(z: np.ndarray, c: np.ndarray, iters: int = 50) -> np.ndarray:
    """1-D two-means from centres c; returns boolean labels (True = cluster 1)."""
    lab = None
    for _ in range(iters):
        new = np.abs(z - c[1]) < np.abs(z - c[0])
        if lab is not None and np.array_equal(new, lab):
            break
        lab = new
        if lab.all() or (~lab).all():
            break
        c = np.array([z[~lab].mean(), z[lab].mean()])
    return lab


def initial_partitions(z: np.ndarray, seed: int) -> list[np.ndarray]:
    """Deterministic candidate partitions (labels in {0,1}) of standardised data.

    1. two-means started from the 25 % / 75 % quantiles;
    2. two-means started k-means++-style with ``np.random.default_rng(seed)``: the first
       centre uniformly at random, the second with probability proportional to the
       squared distance from the first.
    Duplicates and partitions with fewer than 2 points on a side are dropped; if none is
    left, the rank split at the median is used.
    """
    cands = [_lloyd(z, np.quantile(z, [0.25, 0.75]))]
    rng = np.random.default_rng(seed)
    i0 = int(rng.integers(z.size))
    d2 = (z - z[i0]) ** 2
    if d2.sum() > 0:
        i1 = int(rng.choice(z.size, p=d2 / d2.sum()))
        cands.append(_lloyd(z, np.array([z[i0], z[i1]])))
    out: list[np.ndarray] = []
    for lab in cands:
        if lab is None or lab.sum() < 2 or (~lab).sum() < 2:
            continue
        if any(np.array_equal(lab, o) or np.array_equal(lab, ~o) for o in out):
            continue
        out.append(lab)
    if not out:
        lab = np.zeros(z.size, dtype=bool)
        lab[np.argsort(z, kind="stable")[z.size // 2:]] = True
        out.append(lab)
    return [lab.astype(np.int64) for lab in out]


# ---- naming and identity -----------------------------------------------------------
def balanced_index(weights: Sequence[float], means: Sequence[float], rule: str, origin: float = 0.0) -> int:
    """Index (0 or 1) of the balanced component under ``rule``.

    nearest_zero: smallest |mu - origin| (ties: larger weight); largest_weight: larger pi
    (ties: smaller |mu - origin|); right_tail: the imbalanced component is the one further
    to the right (larger mu), so the balanced one has the smaller mu (ties: larger weight);
    a complete tie gives 0. ``origin`` is where "zero" lies
    in the units of the data (for z-scored gaps: the z-value of a raw gap of 0).
    """
    a0, a1 = abs(means[0] - origin), abs(means[1] - origin)
    w0, w1 = weights[0], weights[1]
    if rule == "nearest_zero":
        key0, key1 = (a0, -w0), (a1, -w1)
    elif rule == "largest_weight":
        key0, key1 = (-w0, a0), (-w1, a1)
    elif rule == "right_tail":
        key0, key1 = (means[0], -w0), (means[1], -w1)
    else:
        raise ValueError(f"unknown balanced rule {rule!r} (choices: {', '.join(RULES)})")
    return 1 if key1 < key0 else 0


def agreement_score(previous: MixtureFit, candidate: MixtureFit, x: np.ndarray,
                    previous_x: np.ndarray | None = None) -> float:
    """mean_i (p0 - p1)(q0 - q1): > 0 when candidate's component 0 agrees with previous's 0.

    p are the previous fit's posteriors and q the candidate's, both on the same samples
    (``previous_x``: those samples in the previous fit's units, when the units changed,
    e.g. z-scores with new statistics; default ``x``).  It equals (agreement of the kept
    labelling) - (agreement of the swapped labelling), where the agreement of a labelling
    is mean_i sum_k p_ik q_ik; it lies in [-1, 1].
    """
    p = previous.posterior(x if previous_x is None else previous_x)
    q = candidate.posterior(x)
    return float(np.mean((p[:, 0] - p[:, 1]) * (q[:, 0] - q[:, 1])))


# ---- the entry point ---------------------------------------------------------------
def fit_mixture(family: str, x, *, seed: int = 0, balanced: str = "nearest_zero",
                previous: MixtureFit | None = None, max_iter: int = 200, tol: float = 1e-6,
                origin: float = 0.0, previous_x=None) -> MixtureFit:
    """Fit a two-component ``family`` mixture to the finite values of ``x``.

    Never raises on data: NaN/inf are dropped (``n_dropped``); too few points, (nearly)
    zero spread, a failed or collapsed fit give the single-component fallback (``fallback``
    says why).  Unknown ``family`` (KeyError) or ``balanced`` rule (ValueError) raise.
    Component 0 is named by ``balanced``, or, when ``previous`` is a proper fit, by
    agreement with ``previous`` (see :func:`agreement_score`).
    """
    fam: type[Family] = MIXTURES.get(family).obj
    if balanced not in RULES:
        raise ValueError(f"unknown balanced rule {balanced!r} (choices: {', '.join(RULES)})")
    x = _as_1d(x)
    finite = np.isfinite(x)
    xf = x[finite]
    n, n_dropped = int(xf.size), int(x.size - xf.size)
    common = dict(family=family, n=n, n_dropped=n_dropped, rule=balanced)

    def fallback(reason: str, n_iter: int = 0) -> MixtureFit:
        try:
            with np.errstate(all="ignore"):
                loc, scale, nu = fam.single(xf if n else np.array([-1.0, 1.0]))
        except Exception:  # noqa: BLE001
            loc, scale, nu = float("nan"), float("nan"), None
        if not n:
            loc, scale = 0.0, 1.0
        if not (math.isfinite(loc) and math.isfinite(scale)):
            loc, scale = float(np.median(xf)), 1.0
            loc = loc if math.isfinite(loc) else 0.0
        scale = max(scale, FALLBACK_SCALE_FLOOR * max(1.0, abs(loc)))
        fit = MixtureFit(weights=(1.0, 0.0), means=(loc, loc), scales=(scale, scale),
                         dof=None if nu is None else (nu, nu), converged=False, n_iter=n_iter,
                         fallback=reason, **common)
        fit.log_likelihood = fit.log_likelihood_of(xf) if n else 0.0
        return fit

    if n < MIN_POINTS:
        return fallback(f"only {n} finite points (< {MIN_POINTS})")
    with np.errstate(all="ignore"):
        m, s = float(np.mean(xf)), float(np.std(xf))
    if not (math.isfinite(m) and math.isfinite(s)):
        return fallback("non-finite mean/spread (values too large)")
    if s <= ZERO_SPREAD * max(1.0, abs(m)):
        return fallback(f"zero variance (all values ~= {m:.6g})")
    z = (xf - m) / s

    try:
        inits = [fam.init_params(z, lab) for lab in initial_partitions(z, seed)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with np.errstate(all="ignore"):
                raw = fam.fit(z, inits, seed=seed, max_iter=max_iter, tol=tol)
    except Exception as e:  # noqa: BLE001 -- a fit must never crash a training run
        return fallback(f"fit failed: {type(e).__name__}: {e}")

    params = [raw.weights, raw.means, raw.scales] + ([] if raw.dof is None else [raw.dof])
    if not all(np.all(np.isfinite(p)) for p in params):
        return fallback("non-finite fitted parameters", raw.n_iter)
    for k in range(2):
        if raw.weights[k] < MIN_WEIGHT or raw.weights[k] * n < MIN_EFFECTIVE:
            return fallback(f"component emptied (weight {raw.weights[k]:.3g}, "
                            f"{raw.weights[k] * n:.3g} effective points)", raw.n_iter)
        if raw.scales[k] < COLLAPSE_SCALE and raw.weights[k] * n < max(MIN_POINTS, COLLAPSE_SHARE * n):
            return fallback(f"component collapsed (scale {raw.scales[k]:.2e} x data std)", raw.n_iter)

    # back to the units of x; components still in the family's order
    w = raw.weights / raw.weights.sum()
    mu = m + s * raw.means
    sc = s * raw.scales
    dof = None if raw.dof is None else tuple(float(v) for v in raw.dof)

    def build(order: Sequence[int], **kw) -> MixtureFit:
        return MixtureFit(weights=tuple(w[list(order)]), means=tuple(mu[list(order)]),
                          scales=tuple(sc[list(order)]),
                          dof=None if dof is None else tuple(dof[i] for i in order),
                          converged=bool(raw.converged), n_iter=int(raw.n_iter), **common, **kw)

    b = balanced_index(w, mu, balanced, origin)
    rule_order = (b, 1 - b)
    order, swapped, matched = rule_order, False, False
    if previous is not None and previous.fallback is None:
        cand = build((0, 1))
        px = None if previous_x is None else _as_1d(previous_x)[finite]
        score = agreement_score(previous, cand, xf, px)
        if abs(score) >= MATCH_MIN:
            order = (0, 1) if score > 0 else (1, 0)
            matched = True
            swapped = order != rule_order
    fit = build(order, swapped=swapped, matched_previous=matched)
    fit.log_likelihood = fit.log_likelihood_of(xf)
    return fit
