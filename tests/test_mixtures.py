"""Two-component 1-D mixtures (raygap.mixtures): recovery, Eq. 9 posteriors, degenerate
inputs, determinism, naming rules and identity across refits."""
import json
import math

import numpy as np
import pytest
from scipy import stats

from raygap.mixtures import MixtureFit, fit_mixture
from raygap.registry import MIXTURES

FAMILIES = ["gmm", "smm", "lmm"]

# ---- recovery ------------------------------------------------------------------------
PI = np.array([0.7, 0.3])
MU = np.array([0.0, 3.0])
SC = np.array([0.5, 1.0])      # Gaussian std / Laplace b / Student-t sigma
NU = 5.0

# tolerances asserted below (N = 20000; over 20 sampling seeds the worst errors seen were
# pi 0.010, mu 0.040, scale 4.2 %, nu 24 %)
TOL_PI, TOL_MU, TOL_SCALE_REL, TOL_NU_REL = 0.03, 0.1, 0.10, 0.5


def sample(family, n, seed):
    rng = np.random.default_rng(seed)
    k = (rng.random(n) < PI[1]).astype(int)
    if family == "gmm":
        e = rng.standard_normal(n)
    elif family == "lmm":
        e = rng.laplace(size=n)
    else:
        e = rng.standard_t(NU, size=n)
    return MU[k] + SC[k] * e


def stratified(mu, sd, n):
    """Deterministic 'sample' of N(mu, sd^2): its n quantiles at (i + 0.5) / n."""
    return mu + sd * stats.norm.ppf((np.arange(n) + 0.5) / n)


@pytest.mark.parametrize("family", FAMILIES)
def test_recovers_known_parameters(family):
    f = fit_mixture(family, sample(family, 20000, seed=0), seed=0)
    assert f.fallback is None and f.converged and not f.swapped
    assert f.n == 20000 and f.n_dropped == 0
    # component 0 = balanced = the one nearest zero
    assert np.all(np.abs(np.array(f.weights) - PI) < TOL_PI), f.summary()
    assert np.all(np.abs(np.array(f.means) - MU) < TOL_MU), f.summary()
    assert np.all(np.abs(np.array(f.scales) - SC) / SC < TOL_SCALE_REL), f.summary()
    if family == "smm":
        assert np.all(np.abs(np.array(f.dof) - NU) / NU < TOL_NU_REL), f.summary()
    else:
        assert f.dof is None
    assert math.isfinite(f.log_likelihood)


# ---- Eq. 9 by hand -----------------------------------------------------------------
def test_gmm_posterior_by_hand():
    f = MixtureFit("gmm", weights=(0.6, 0.4), means=(0.0, 2.0), scales=(1.0, 1.0))
    w = f.posterior([1.0, 0.0, 2.0])
    # x = 1: both densities are phi(1) (distance 1, same sigma) -> w0 = pi0 = 0.6
    # x = 0: N(0|0,1) = c, N(0|2,1) = c e^-2  (c = 1/sqrt(2 pi))
    #        w0 = 0.6 / (0.6 + 0.4 e^-2) = 0.6 / (0.6 + 0.4 * 0.1353352832) = 0.6 / 0.6541341133
    #           = 0.9172437
    # x = 2: w0 = 0.6 e^-2 / (0.6 e^-2 + 0.4) = 0.0812011699 / 0.4812011699 = 0.1687468
    assert w[:, 0] == pytest.approx([0.6, 0.9172437, 0.1687468], abs=1e-6)
    assert np.allclose(w.sum(axis=1), 1.0)
    # unequal sigmas: pi = (0.5, 0.5), sigma = (1, 2), mu = (0, 0), at x = 0:
    # N(0|0,1) = c, N(0|0,4) = c / 2  ->  w0 = 1 / (1 + 1/2) = 2/3
    g = MixtureFit("gmm", weights=(0.5, 0.5), means=(0.0, 0.0), scales=(1.0, 2.0))
    assert g.posterior([0.0])[0, 0] == pytest.approx(2 / 3, abs=1e-12)


@pytest.mark.parametrize("family", ["lmm", "smm", "gmm"])
def test_component_densities_match_scipy(family):
    pi, mu, sc, nu = (0.65, 0.35), (-0.2, 1.7), (0.6, 1.3), (4.0, 9.0)
    f = MixtureFit(family, weights=pi, means=mu, scales=sc, dof=nu if family == "smm" else None)
    x = np.array([-3.0, -0.2, 0.0, 0.5, 1.7, 4.0])
    if family == "lmm":
        ref = [stats.laplace.logpdf(x, loc=mu[k], scale=sc[k]) for k in (0, 1)]
    elif family == "smm":
        ref = [stats.t.logpdf(x, df=nu[k], loc=mu[k], scale=sc[k]) for k in (0, 1)]
    else:
        ref = [stats.norm.logpdf(x, loc=mu[k], scale=sc[k]) for k in (0, 1)]
    ref = np.stack(ref, axis=1)
    assert np.allclose(f.component_logpdf(x), ref, rtol=1e-10, atol=1e-12)
    joint = np.array(pi)[None, :] * np.exp(ref)
    assert np.allclose(f.posterior(x), joint / joint.sum(axis=1, keepdims=True), atol=1e-12)
    assert np.allclose(f.pdf(x), joint.sum(axis=1), rtol=1e-10)


def test_laplace_posterior_by_hand():
    # pi = (0.5, 0.5), mu = (0, 2), b = (1, 1), x = 0:
    # f0 = 1/2 e^0, f1 = 1/2 e^-2 -> w0 = 1 / (1 + e^-2) = 1 / 1.1353352832 = 0.8807971
    f = MixtureFit("lmm", weights=(0.5, 0.5), means=(0.0, 2.0), scales=(1.0, 1.0))
    assert f.posterior([0.0])[0, 0] == pytest.approx(0.8807971, abs=1e-6)


def test_posterior_is_stable_far_out_and_handles_non_finite():
    f = MixtureFit("gmm", weights=(0.7, 0.3), means=(0.0, 3.0), scales=(0.5, 1.0))
    x = np.array([1e4, -1e4, 1e200, np.nan, np.inf, -np.inf])
    w = f.posterior(x)
    assert np.all(np.isfinite(w)) and np.allclose(w.sum(axis=1), 1.0)
    assert w[0, 1] == 1.0 and w[1, 1] == 1.0      # far out belongs to the wider component
    assert np.array_equal(w[3:], [[1.0, 0.0]] * 3)  # non-finite -> balanced
    # a zero scale never divides by zero
    z = MixtureFit("lmm", weights=(0.5, 0.5), means=(0.0, 1.0), scales=(0.0, 1.0))
    assert np.all(np.isfinite(z.posterior([0.0, 0.5, 1.0])))


# ---- degenerate inputs ----------------------------------------------------------------
def _valid(f, x):
    w = f.posterior(x)
    assert w.shape == (np.asarray(x).size, 2)
    assert np.all(np.isfinite(w)) and np.all(w >= 0) and np.allclose(w.sum(axis=1), 1.0)
    json.dumps(f.to_dict())
    return w


@pytest.mark.parametrize("family", FAMILIES)
def test_degenerate_inputs_never_crash(family):
    rng = np.random.default_rng(0)
    # all gaps equal
    x = np.full(200, 0.3)
    f = fit_mixture(family, x)
    assert f.fallback and "zero variance" in f.fallback
    assert f.weights == (1.0, 0.0) and np.array_equal(_valid(f, x)[:, 0], np.ones(200))
    # only 3 points / nothing finite / empty
    for x, n_dropped in ((np.array([0.1, 2.0, -1.0]), 0), (np.full(5, np.nan), 5), (np.array([]), 0)):
        f = fit_mixture(family, x)
        assert f.fallback and "finite points" in f.fallback and f.n_dropped == n_dropped
        assert np.all(_valid(f, x)[:, 0] == 1.0)
    # NaN / inf mixed in: dropped for the fit, counted, posterior (1, 0) there
    x = np.concatenate([sample(family, 3000, 1), [np.nan] * 7, [np.inf, -np.inf]])
    f = fit_mixture(family, x)
    assert f.fallback is None and f.n == 3000 and f.n_dropped == 9
    w = _valid(f, x)
    assert np.array_equal(w[-9:], [[1.0, 0.0]] * 9)
    # one component empty (all from one Gaussian): no fallback, two overlapping components that
    # split the one bump about its centre, with comparable weights
    x = rng.normal(0.0, 1.0, 4000)
    f = fit_mixture(family, x)
    _valid(f, x)
    assert f.fallback is None
    assert abs(f.weights[0] * f.means[0] + f.weights[1] * f.means[1]) < 0.1
    assert max(abs(m) for m in f.means) < 1.0 and min(f.weights) > 0.3
    # a point mass holding many samples (saturated, memorised gaps) plus a spread: a real tight
    # cluster, kept with its scale on the floor; the spike is the balanced component
    x = np.concatenate([np.zeros(500), rng.normal(2.0, 1.0, 500)])
    f = fit_mixture(family, x)
    assert f.fallback is None
    assert abs(f.means[0]) < 1e-6 and f.scales[0] < 0.01 and f.weights[0] == pytest.approx(0.5, abs=0.05)
    assert np.all(_valid(f, x)[:500, 0] > 0.99)
    # a spike on a handful of identical outliers: whatever the fit, posteriors stay valid
    x = np.concatenate([np.full(3, 5.0), rng.normal(0.0, 1.0, 997)])
    _valid(fit_mixture(family, x), x)
    # values too large for a mean / std
    x = rng.normal(0.0, 1.0, 50) * 1e300
    f = fit_mixture(family, x)
    assert f.fallback
    _valid(f, x)


def test_unknown_family_or_rule_raise():
    with pytest.raises(KeyError, match="nearest: 'gmm'"):
        fit_mixture("gmmm", np.arange(20.0))
    with pytest.raises(ValueError, match="nearest_zero"):
        fit_mixture("gmm", np.arange(20.0), balanced="smallest")


def test_registered_and_loaded_by_plugins(monkeypatch):
    import sys

    import raygap
    import raygap.plugins
    assert {"gmm", "smm", "lmm"} <= set(MIXTURES.names())
    # load_all() on a process that has not imported the mixtures yet registers them: forget the
    # package and its registrations (monkeypatch restores both afterwards), then call it
    for name in [n for n in sys.modules if n == "raygap.mixtures" or n.startswith("raygap.mixtures.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delattr(raygap, "mixtures")
    monkeypatch.setattr(MIXTURES, "_entries", {})
    monkeypatch.setattr(raygap.plugins, "_loaded", False)
    assert MIXTURES.names() == []
    raygap.plugins.load_all()
    assert {"gmm", "smm", "lmm"} <= set(MIXTURES.names()) and "raygap.mixtures.gaussian" in sys.modules


# ---- determinism and serialisation ------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_fit(family):
    x = sample(family, 5000, seed=4)
    a, b = fit_mixture(family, x, seed=7), fit_mixture(family, x, seed=7)
    assert a.to_dict() == b.to_dict()
    assert np.array_equal(a.posterior(x), b.posterior(x))


def test_to_dict_roundtrip():
    f = fit_mixture("smm", sample("smm", 3000, seed=2))
    d = json.loads(json.dumps(f.to_dict()))
    assert set(d) >= {"pi", "mu", "sigma", "nu"}
    g = MixtureFit.from_dict(d)
    assert g == f


# ---- naming rules ----------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_naming_rules_disagree_on_crafted_data(family):
    # big component (70 %) at 2.0, small one (30 %) at 0.1: nearest_zero names the small
    # one balanced, largest_weight the big one
    x = np.concatenate([stratified(2.0, 0.3, 1400), stratified(0.1, 0.3, 600)])
    nz = fit_mixture(family, x, balanced="nearest_zero")
    lw = fit_mixture(family, x, balanced="largest_weight")
    assert nz.fallback is None and lw.fallback is None
    assert abs(nz.means[0] - 0.1) < 0.1 and nz.weights[0] == pytest.approx(0.3, abs=0.03)
    assert abs(lw.means[0] - 2.0) < 0.1 and lw.weights[0] == pytest.approx(0.7, abs=0.03)
    assert nz.rule == "nearest_zero" and lw.rule == "largest_weight"
    assert not nz.swapped and not lw.swapped
    # the same components, named the other way round
    assert nz.means == pytest.approx(lw.means[::-1])
    assert np.allclose(nz.posterior(x), lw.posterior(x)[:, ::-1])
    # right_tail: the imbalanced component is the one further right (mean 2.0) -> balanced at 0.1;
    # moving the origin to 1.8 makes nearest_zero pick the 2.0 component instead
    rt = fit_mixture(family, x, balanced="right_tail")
    assert abs(rt.means[0] - 0.1) < 0.1 and abs(rt.means[1] - 2.0) < 0.1
    shifted = fit_mixture(family, x, balanced="nearest_zero", origin=1.8)
    assert abs(shifted.means[0] - 2.0) < 0.1


# ---- identity across refits ---------------------------------------------------------------
def _two(mu0, mu1, pi0, n=4000, sd=0.4):
    n0 = int(round(pi0 * n))
    return np.concatenate([stratified(mu0, sd, n0), stratified(mu1, sd, n - n0)])


@pytest.mark.parametrize("family", FAMILIES)
def test_refit_on_perturbed_copy_keeps_identity(family):
    x = _two(-1.0, 1.1, 0.5)
    a = fit_mixture(family, x)
    assert a.weights[0] == pytest.approx(0.5, abs=0.02) and a.means[0] < 0
    y = x + np.random.default_rng(5).normal(0.0, 0.05, x.size)
    b = fit_mixture(family, y, previous=a)
    assert b.matched_previous and not b.swapped
    assert b.means[0] == pytest.approx(a.means[0], abs=0.1)
    assert np.mean(np.abs(b.posterior(x)[:, 0] - a.posterior(x)[:, 0])) < 0.05


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_kept_when_nearest_zero_rule_would_swap(family):
    a = fit_mixture(family, _two(-1.0, 1.1, 0.5))          # balanced: the one near -1.0
    assert a.means[0] < 0
    y = _two(-1.15, 0.95, 0.5)                              # now +0.95 is nearer zero
    alone = fit_mixture(family, y)
    assert alone.means[0] > 0 and not alone.swapped        # the rule alone swaps ...
    b = fit_mixture(family, y, previous=a)
    assert b.swapped and b.matched_previous                # ... matching keeps identity
    assert b.means[0] == pytest.approx(-1.15, abs=0.1)
    assert b.means[1] == pytest.approx(0.95, abs=0.1)
    assert np.allclose(b.posterior(y), alone.posterior(y)[:, ::-1])
    assert "SWAPPED" in b.summary() and b.to_dict()["swapped"] is True


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_kept_when_largest_weight_rule_would_swap(family):
    a = fit_mixture(family, _two(-1.0, 1.0, 0.53), balanced="largest_weight")
    assert a.means[0] < 0 and a.weights[0] > 0.5
    y = _two(-1.0, 1.0, 0.47)                               # weights cross 0.5
    alone = fit_mixture(family, y, balanced="largest_weight")
    assert alone.means[0] > 0
    b = fit_mixture(family, y, balanced="largest_weight", previous=a)
    assert b.swapped and b.means[0] < 0 and b.weights[0] < 0.5


def test_fallback_previous_is_ignored_and_fallback_never_swaps():
    x = _two(-1.0, 1.1, 0.5)
    fb = fit_mixture("gmm", np.full(50, 1.0))
    assert fb.fallback
    f = fit_mixture("gmm", x, previous=fb)
    assert not f.matched_previous and not f.swapped
    a = fit_mixture("gmm", x)
    g = fit_mixture("gmm", np.full(50, 1.0), previous=a)
    assert g.fallback and not g.swapped and g.weights == (1.0, 0.0)
