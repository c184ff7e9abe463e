"""CPSL (docs/method-cpsl.md): SL, the conflict ratio and coefficient, the head projection;
regression metrics; the gated fusion and sequence encoders it runs on."""
import math
import types

import numpy as np
import pytest
import torch
import torch.nn as nn

from raygap.config import resolve
from raygap.data.base import ModalitySpec
from raygap.methods.base import MethodContext
from raygap.methods.cpsl import (CPSL, conflict_coefficient, conflict_ratios, prior_support, project_off,
                                 statistical_loss_classification, statistical_loss_regression)
from raygap.metrics import regression_metrics, sentiment_metrics
from raygap.models import build_model
from _tiny import avdigits

LN3 = math.log(3.0)


def test_statistical_loss_regression_by_hand():
    # pred [1, 3]: mean 2, population std 1; train mu 1, sigma 0.5 -> (2-1)^2 + (1-0.5)^2 = 1.25
    assert statistical_loss_regression(torch.tensor([[1.0], [3.0]]), 1.0, 0.5).item() == pytest.approx(1.25)


def test_statistical_loss_classification_by_hand():
    # softmax rows [0.25, 0.75] and [0.5, 0.5] -> batch mean [0.375, 0.625]; prior [0.5, 0.5]
    # KL = 0.5 ln(0.5/0.375) + 0.5 ln(0.5/0.625) = 0.5*0.2876821 - 0.5*0.2231436 = 0.0322693
    logits = torch.tensor([[0.0, LN3], [0.0, 0.0]])
    assert statistical_loss_classification(logits, torch.tensor([0.5, 0.5])).item() == pytest.approx(0.0322693, abs=1e-6)
    # a zero-prior class adds nothing: prior [1, 0] -> KL = ln(1/0.375) = 0.9808293
    assert statistical_loss_classification(logits, torch.tensor([1.0, 0.0])).item() == pytest.approx(0.9808293, abs=1e-6)


def _kl_masked(logits, prior):
    """The statistical loss as CPSL version 1 wrote it, with a boolean mask (a nonzero per step on CUDA)."""
    pbar = torch.softmax(logits.float(), dim=1).mean(0).clamp_min(1e-12)
    pri = prior.to(pbar)
    nz = pri > 0
    return (pri[nz] * (pri[nz].log() - pbar[nz].log())).sum()


def test_statistical_loss_on_the_prior_support_by_hand_and_bit_identical_to_the_mask():
    # softmax rows [1/4, 1/4, 1/2] and [1/2, 1/4, 1/4] -> batch mean [3/8, 1/4, 3/8]; prior [1/2, 0, 1/2]:
    # KL = 2 * 0.5 ln(0.5 / 0.375) = ln(4/3) = 0.2876821 (class 1, prior 0, adds nothing)
    logits = torch.tensor([[0.0, 0.0, math.log(2.0)], [math.log(2.0), 0.0, 0.0]])
    idx, pri = prior_support([0.5, 0.0, 0.5])
    assert idx.tolist() == [0, 2] and pri.tolist() == [0.5, 0.5] and idx.dtype == torch.int64
    assert statistical_loss_classification(logits, (idx, pri)).item() == pytest.approx(0.2876821, abs=1e-6)
    assert statistical_loss_classification(logits, torch.tensor([0.5, 0.0, 0.5])).item() == pytest.approx(0.2876821, abs=1e-6)
    # what CPSL's numbers on the CPU rest on: the same bits as the masked formula, loss and gradient
    g = torch.Generator().manual_seed(0)
    for k in (2, 3, 6, 10, 31, 101):
        for _ in range(5):
            counts = torch.randint(0, 4, (k,), generator=g).float()
            counts[0] += 1                                      # some classes have prior 0, never all
            prior = (counts / counts.sum()).tolist()
            x = torch.randn(8, k, generator=g) * 3
            a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
            old, new = _kl_masked(a, torch.tensor(prior)), statistical_loss_classification(b, prior_support(prior))
            old.backward()
            new.backward()
            assert torch.equal(old, new) and torch.equal(a.grad, b.grad), (k, prior)


def test_a_step_gradscaler_skips_adds_no_statistics():
    """fp16: a skipped step's gradients are inf/NaN; its G, rho and k must not enter the epoch's means."""
    m = _method(tau=1.2, alpha=1.0, k_min=0.1, project=False)
    enc = nn.ModuleDict({k: nn.Linear(1, 1, bias=False) for k in ["text", "audio", "vision"]})
    model = types.SimpleNamespace(encoders=enc)
    m.on_epoch_start(types.SimpleNamespace(data=types.SimpleNamespace(
        train=types.SimpleNamespace(labels=torch.tensor([0.0, 1.0])))))
    for grads, found_inf in (({"text": 3.0, "audio": 1.0, "vision": 2.0}, 0.0),
                             ({"text": math.inf, "audio": 1.0, "vision": 2.0}, 1.0)):
        for k, gval in grads.items():
            enc[k].weight.grad = torch.tensor([[gval]])
        m.after_backward(model, None, None, types.SimpleNamespace(found_inf=torch.tensor(found_inf)))
    rec = m.on_epoch_end(None)                        # the first step's figures alone
    assert rec["conflict_rate"] == 1.0 and rec["rho_text"] == pytest.approx(1.5) and rec["rho_audio"] == pytest.approx(0.5)
    assert rec["k_text"] == pytest.approx(0.5378828, abs=1e-6) and rec["k_audio"] == 1.0


def test_conflict_ratio_and_coefficient_by_hand():
    # G = [3, 1, 2] -> mean 2 -> rho = [1.5, 0.5, 1.0]
    rho = conflict_ratios({"text": 3.0, "audio": 1.0, "vision": 2.0})
    assert rho == pytest.approx({"text": 1.5, "audio": 0.5, "vision": 1.0})
    # k = max(0.1, 1 - tanh(1.0 * 0.5)) = 1 - 0.4621172 = 0.5378828
    assert conflict_coefficient(1.5, 1.0, 0.1) == pytest.approx(0.5378828, abs=1e-7)
    # far above the mean the floor holds: 1 - tanh(3) = 0.0049 -> 0.1
    assert conflict_coefficient(4.0, 1.0, 0.1) == 0.1
    assert conflict_ratios({"a": 0.0, "b": 0.0}) == {"a": 1.0, "b": 1.0}


def test_projection_by_hand():
    # D = [1, 0], S = [-1, 1]: <D,S> = -1, |S|^2 = 2 -> remove (-1/2)(-1, 1) = [0.5, -0.5]; D' = [0.5, 0.5], <D',S> = 0
    d, s = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    remove, applied = project_off(d, s)
    assert applied and torch.allclose(remove, torch.tensor([0.5, -0.5]))
    assert float(((d - remove) * s).sum()) == pytest.approx(0.0, abs=1e-7)
    # no conflict (cos >= 0): nothing removed
    remove, applied = project_off(torch.tensor([1.0, 1.0]), s)
    assert not applied and remove.abs().sum() == 0


def _method(task="regression", **p):
    cfg = resolve({"method": {"name": "cpsl", **p}, "model": {"fusion": "gated"}})
    ctx = MethodContext(["text", "audio", "vision"], 1 if task == "regression" else 2, 8, cfg,
                        torch.device("cpu"), task=task)
    return CPSL(cfg.params("method"), ctx)


def test_encoder_gradient_scaled_by_k_only_for_the_conflicting_modality():
    m = _method(tau=1.2, alpha=1.0, k_min=0.1, project=False)
    enc = nn.ModuleDict({k: nn.Linear(1, 1, bias=False) for k in ["text", "audio", "vision"]})
    for k, gval in {"text": 3.0, "audio": 1.0, "vision": 2.0}.items():   # one parameter each: RMS = |g|
        enc[k].weight.grad = torch.tensor([[gval]])
    model = types.SimpleNamespace(encoders=enc)
    m.on_epoch_start(types.SimpleNamespace(data=types.SimpleNamespace(
        train=types.SimpleNamespace(labels=torch.tensor([0.0, 1.0])))))
    m.after_backward(model, None, None, types.SimpleNamespace(found_inf=None))
    assert enc["text"].weight.grad.item() == pytest.approx(3.0 * 0.5378828, abs=1e-6)   # rho 1.5 > 1.2
    assert enc["audio"].weight.grad.item() == 1.0 and enc["vision"].weight.grad.item() == 2.0
    rec = m.on_epoch_end(None)
    assert rec["conflict_rate"] == 1.0 and rec["rho_text"] == pytest.approx(1.5)
    assert rec["k_text"] == pytest.approx(0.5378828, abs=1e-6) and rec["k_audio"] == 1.0


def _tiny_net(seed):
    torch.manual_seed(seed)
    cfg = resolve({"model": {"fusion": "gated", "sequence_backbone": "meanpool", "hidden": 4}})
    specs = [ModalitySpec("text", "sequence", (3, 5)), ModalitySpec("audio", "vector", (6,)),
             ModalitySpec("vision", "sequence", (2, 4))]
    net = build_model(specs, 1, cfg.model)
    batch = {"text": torch.randn(6, 3, 5) * 3, "audio": torch.randn(6, 6), "vision": torch.randn(6, 2, 4),
             "label": torch.tensor([3.0, -3.0, 2.5, 2.0, 3.0, -2.0])}
    return net, batch


def _step(seed, project):
    net, batch = _tiny_net(seed)
    m = _method(project=project, tau=1.0)
    m.stats = {"mu": -1.5, "sigma": 0.2}      # SL pulls the batch's mean and spread away from the task
    st = types.SimpleNamespace(model=net, found_inf=None)
    out = net(batch)
    loss, _ = m.loss(out, batch, st)
    net.zero_grad()
    loss.backward()
    pending = m._pending
    m.after_backward(net, out, batch, st)
    return net, out, pending, m


def test_projection_leaves_the_dominant_head_gradient_non_negative_on_sl():
    found = 0
    for seed in range(40):
        net_p, out, (delta, s_grad, extras), m = _step(seed, project=True)
        net_n, *_ = _step(seed, project=False)
        rho_dom = max(m.ctx.modalities, key=lambda k: m.c[f"rho_{k}"])
        d = delta.t() @ extras[f"contrib_{rho_dom}"]
        removed = net_n.fusion.head.weight.grad - net_p.fusion.head.weight.grad
        cos_before = float((d * s_grad).sum() / (d.norm() * s_grad.norm()))
        d_after = d - removed
        assert float((d_after * s_grad).sum()) >= -1e-6           # after it: cos(D', S) >= 0
        if cos_before < 0:
            found += 1
            assert removed.abs().sum() > 0 and m.c["projected"] == 1
        else:
            assert removed.abs().sum() == 0
    assert found > 0                                           # the conflicting case did occur


def test_regression_metrics_by_hand():
    p = np.array([-1.0, 0.4, 2.6, -0.2])
    y = np.array([-2.0, 0.0, 3.0, 1.0])
    r = sentiment_metrics(p, y)
    assert r["mae"] == pytest.approx(0.75)                    # (1 + .4 + .4 + 1.2) / 4
    assert r["acc2"] == pytest.approx(0.75)                   # >=0: [F,T,T,F] vs [F,T,T,T]
    assert r["f1_2"] == pytest.approx((2 / 3 * 1 + 0.8 * 3) / 4)   # weighted by support 1 : 3
    assert r["acc2_nz"] == pytest.approx(2 / 3)               # zero label dropped: [F,T,F] vs [F,T,T]
    assert r["f1_2_nz"] == pytest.approx(2 / 3)
    assert r["acc7"] == pytest.approx(0.5)                    # [-1,0,3,0] vs [-2,0,3,1]
    assert r["corr"] == pytest.approx(8.7 / math.sqrt(7.15 * 13), abs=1e-9)
    full = regression_metrics({"fused": p[:, None], "text": np.zeros((4, 1))}, y)
    assert full["mae"] == pytest.approx(0.75) and full["loss"] == pytest.approx((1 + .16 + .16 + 1.44) / 4)
    assert math.isnan(full["corr_text"])                      # a constant prediction has no correlation


def test_gated_fusion_contributions_sum_to_the_head_input():
    net, batch = _tiny_net(0)
    out = net(batch)
    z = sum(out.extras[f"contrib_{m}"] for m in ["text", "audio", "vision"])
    assert torch.allclose(out.fused, net.fusion.head(z), atol=1e-6)
    assert set(out.logits) == {"text", "audio", "vision"} and out.logits["text"].shape == (6, 1)


def test_gap_adaptive_on_three_modalities_and_cpsl_on_two():
    """The paper's method on three-modality avdigits with its gap on a configured pair, and CPSL on
    the two-modality data, each end to end through the engine."""
    from raygap.trial import run_trial
    fast = {"data": avdigits(visual_corrupt=0.3), "model": {"backbone": "small", "width": 4},
            "optim": {"lr": 0.05}, "train": {"epochs": 3, "batch_size": 128, "device": "cpu", "threads": 2, "checkpoint_every": 1}}
    ga = run_trial(resolve({**fast, "data": {**fast["data"], "text": True},
                            "method": {"name": "gap_adaptive", "pair": ["text", "visual"], "warmup_epochs": 1}}))
    switch = ga.history[1]
    assert switch["stage"] == "adaptive" and switch["dominant"] in ("text", "visual")
    assert {"acc_audio", "acc_visual", "acc_text"} <= set(ga.metrics)
    assert math.isfinite(switch["gap_mean"]) and math.isfinite(ga.metrics["acc"])
    cp = run_trial(resolve({**fast, "method": {"name": "cpsl"}, "model": {**fast["model"], "fusion": "gated"}}))
    rec = cp.history[-1]
    assert set(k for k in rec if k.startswith("rho_")) == {"rho_audio", "rho_visual"}
    assert 0.0 <= rec["conflict_rate"] <= 1.0 and math.isfinite(cp.metrics["acc"])
