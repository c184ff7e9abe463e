"""The paper's formulas with hand-computed numbers: Eqs. 5, 6, 7, 9, 11 and 14."""
import math

import numpy as np
import pytest
import torch

from raygap.methods.gaps import adaptive_loss, auroc, kl_gap, prob_gap, zscore_stats

LN3 = math.log(3.0)


def test_eq5_prob_gap():
    # audio softmax([0, ln 3]) = [0.25, 0.75]; visual softmax([0, 0]) = [0.5, 0.5]; y = 1
    la, lv, y = torch.tensor([[0.0, LN3]]), torch.tensor([[0.0, 0.0]]), torch.tensor([1])
    assert prob_gap(la, lv, y).item() == pytest.approx(0.75 - 0.5, abs=1e-6)
    # y = 0: 0.25 - 0.5
    assert prob_gap(la, lv, torch.tensor([0])).item() == pytest.approx(-0.25, abs=1e-6)


def test_eq6_kl_gap():
    # KL([0.25, 0.75] || U) = 0.25 ln 0.5 + 0.75 ln 1.5 = -0.1732868 + 0.3040988 = 0.1308120; KL(U || U) = 0
    la, lv = torch.tensor([[0.0, LN3]]), torch.tensor([[0.0, 0.0]])
    assert kl_gap(la, lv).item() == pytest.approx(0.1308120, abs=1e-6)
    assert kl_gap(lv, la).item() == pytest.approx(-0.1308120, abs=1e-6)


def test_eq7_zscore_and_floor():
    mu, sigma = zscore_stats(np.array([1.0, 2.0, 3.0, 4.0, np.nan]), sigma_floor=0.05)
    # mean 2.5, population std sqrt(1.25) = 1.1180340; z(4) = 1.5 / 1.118034 = 1.3416408
    assert mu == pytest.approx(2.5) and sigma == pytest.approx(1.1180340)
    assert (4 - mu) / sigma == pytest.approx(1.3416408)
    assert zscore_stats(np.full(10, 0.3), sigma_floor=0.05) == (pytest.approx(0.3), 0.05)


def test_eq9_posterior_by_hand():
    from raygap.mixtures.base import MixtureFit
    fit = MixtureFit(family="gmm", weights=np.array([0.6, 0.4]), means=np.array([0.0, 2.0]),
                     scales=np.array([1.0, 1.0]), dof=None, n=10, n_dropped=0, converged=True, n_iter=1,
                     log_likelihood=0.0, fallback=None, swapped=False, rule="nearest_zero")
    w = fit.posterior(np.array([1.0, 0.0]))
    # x = 1 sits halfway: equal densities, so w0 = pi0 = 0.6
    # x = 0: N(0|0,1) = 0.3989423, N(0|2,1) = 0.0539910;
    #        w0 = 0.6*0.3989423 / (0.6*0.3989423 + 0.4*0.0539910) = 0.2393654 / 0.2609618 = 0.9172431
    assert w[0, 0] == pytest.approx(0.6, abs=1e-6)
    assert w[1, 0] == pytest.approx(0.9172431, abs=1e-6)
    assert np.allclose(w.sum(1), 1.0)


# Eq. 11 on two samples: ce_f = [1, 2], sum_m ce_m = [0.5, 1], g = [0.2, 0.6], w0 = [0.9, 0.3],
# w1 = [0.1, 0.7], u0 = 0.1, lambda = 0.5.
#  full:  s1 = 0.9*1 + 0.5*(0.04 + 0.1*0.01 + 0.5) = 1.1705; s2 = 0.3*2 + 0.5*(0.36 + 0.7*0.25 + 1) = 1.3675
#  alpha=0: 0.2705, 0.7675        beta=0: 1.1505, 1.1875        gamma=0: 1.17, 1.28
#  w0=w1=1: 1.275, 2.805          no unimodal: 0.9205, 0.8675
@pytest.mark.parametrize("switch, expected", [
    ({}, (1.1705 + 1.3675) / 2),
    ({"alpha": 0.0}, (0.2705 + 0.7675) / 2),
    ({"beta": 0.0}, (1.1505 + 1.1875) / 2),
    ({"gamma": 0.0}, (1.17 + 1.28) / 2),
    ({"weights_off": True}, (1.275 + 2.805) / 2),
    ({"uni_off": True}, (0.9205 + 0.8675) / 2),
])
def test_eq11_each_ablation_switch(switch, expected):
    kw = {"alpha": 1.0, "beta": 1.0, "gamma": 1.0}
    kw.update({k: v for k, v in switch.items() if k in kw})
    w0, w1 = torch.tensor([0.9, 0.3]), torch.tensor([0.1, 0.7])
    if switch.get("weights_off"):
        w0 = w1 = torch.ones(2)
    ce_uni = torch.zeros(2) if switch.get("uni_off") else torch.tensor([0.5, 1.0])
    out = adaptive_loss(torch.tensor([1.0, 2.0]), ce_uni, torch.tensor([0.2, 0.6]), w0, w1, 0.1, lam=0.5, **kw)
    assert out["loss"].item() == pytest.approx(expected, abs=1e-6)


def test_auroc_by_hand():
    # positives score 0.9, 0.4; negatives 0.5, 0.1: pairs won 3 of 4
    assert auroc(np.array([0.9, 0.4, 0.5, 0.1]), np.array([1, 1, 0, 0], bool)) == pytest.approx(0.75)
    assert auroc(np.array([1.0, 1.0]), np.array([1, 0], bool)) == pytest.approx(0.5)
