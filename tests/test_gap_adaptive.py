"""gap_adaptive as a method: Eq. 11 through the hook with each switch, the sign of Eq. 14,
and the pitfalls of SPEC (runaway penalty, dominant modality, component identity, control)."""
import math
import types

import numpy as np
import pytest
import torch

from raygap.config import resolve
from raygap.methods.base import MethodContext
from raygap.methods.gap_adaptive import GapAdaptive
from raygap.models.net import ModelOutput
from raygap.trial import run_trial
from _tiny import avdigits

LN3 = math.log(3.0)


def make(n_train=4, **method):
    cfg = resolve({"method": {"name": "gap_adaptive", "warmup_epochs": 2, "rho": 0.5, **method}})
    ctx = MethodContext(["audio", "visual"], 2, n_train, cfg, torch.device("cpu"))
    return GapAdaptive(cfg.params("method"), ctx)


def one_sample(requires_grad=False):
    la = torch.tensor([[0.0, LN3]])                   # s_a = [0.25, 0.75]
    lv = torch.tensor([[0.0, 0.0]], requires_grad=requires_grad)   # s_v = [0.5, 0.5]
    out = ModelOutput({}, {"audio": la, "visual": lv}, la + lv)    # fused = [0, ln 3]
    batch = {"label": torch.tensor([1]), "index": torch.tensor([0])}
    return out, batch, lv


def adaptive(m, epoch=3):
    m.w0[0], m.w1[0], m.u0 = 0.8, 0.2, 0.05
    return types.SimpleNamespace(epoch=epoch)


# One sample, y = 1: CE_f = CE_a = -ln 0.75 = 0.2876821, CE_v = ln 2 = 0.6931472, g = 0.25,
# w0 = 0.8, w1 = 0.2, u0 = 0.05, lambda = 0.5 ** (3 - 2) = 0.5:
#   full:        0.8*0.2876821 + 0.5*(0.0625 + 0.2*0.04 + 0.9808293) = 0.2301457 + 0.5256647 = 0.7558104
#   w/o w0, w1:  0.2876821 + 0.5*(0.0625 + 0.04 + 0.9808293)          = 0.8293468
#   w/o L_a,L_v: 0.2301457 + 0.5*(0.0625 + 0.008)                      = 0.2653957
#   alpha = 0:   0.5256647;  beta = 0: 0.2301457 + 0.5*(0.9888293) = 0.7245604
#   gamma = 0:   0.2301457 + 0.5*(1.0433293) = 0.7518104
@pytest.mark.parametrize("switch, expected", [
    ({}, 0.7558104), ({"posterior_weights": False}, 0.8293468), ({"unimodal_loss": False}, 0.2653957),
    ({"alpha": 0.0}, 0.5256647), ({"beta": 0.0}, 0.7245604), ({"gamma": 0.0}, 0.7518104),
])
def test_eq11_through_the_method_hook(switch, expected):
    m = make(**switch)
    st = adaptive(m)
    out, batch, _ = one_sample()
    loss, logs = m.loss(out, batch, st)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert m.lam(3) == 0.5 and m.stage(3) == "adaptive"


def test_warmup_stage_is_eq10_and_lambda_counts_from_the_stage():
    m = make()
    out, batch, _ = one_sample()
    loss, _ = m.loss(out, batch, types.SimpleNamespace(epoch=0))
    assert loss.item() == pytest.approx(0.2876821 * 2 + 0.6931472, abs=1e-6)   # L_f + L_a + L_v
    assert m.lam(2) == 1.0 and m.lam(4) == 0.25
    assert make(lambda_from="start").lam(2) == 0.25


def test_eq14_gap_gradient_reaches_the_weak_modality_with_its_sign():
    # only the gap terms: dL/ds_v = -2*lambda*(gamma*w1*(g - u0) + beta*g) = -2*0.5*(0.2*0.2 + 0.25) = -0.29;
    # ds_v/dl_v = s_v*(e_y - s) = [-0.25, 0.25]  ->  dL/dl_v = [0.0725, -0.0725]
    m = make(alpha=0.0, unimodal_loss=False)
    st = adaptive(m)
    out, batch, lv = one_sample(requires_grad=True)
    loss, _ = m.loss(out, batch, st)
    loss.backward()
    assert torch.allclose(lv.grad, torch.tensor([[0.0725, -0.0725]]), atol=1e-6)
    # a descent step raises the weak modality's probability of the true class
    s_before = torch.softmax(lv.detach(), 1)[0, 1]
    s_after = torch.softmax(lv.detach() - 0.1 * lv.grad, 1)[0, 1]
    assert s_after > s_before


def test_gap_gradient_reaches_the_visual_encoder_of_a_real_model():
    from raygap.data.base import ModalitySpec
    from raygap.models import build_model
    torch.manual_seed(0)
    cfg = resolve({"model": {"backbone": "small", "width": 4}})
    model = build_model([ModalitySpec("audio", "spectrogram", (1, 8, 8)),
                         ModalitySpec("visual", "frames", (1, 1, 8, 8))], 2, cfg.model)
    m = make(n_train=6, alpha=0.0, unimodal_loss=False)
    m.w0[:], m.w1[:], m.u0 = 0.5, 0.5, 0.0
    batch = {"audio": torch.randn(6, 1, 8, 8), "visual": torch.randn(6, 1, 1, 8, 8),
             "label": torch.tensor([0, 1, 0, 1, 0, 1]), "index": torch.arange(6)}
    loss, _ = m.loss(model(batch), batch, types.SimpleNamespace(epoch=3))
    loss.backward()
    g = sum(p.grad.abs().sum() for p in model.encoders["visual"].parameters() if p.grad is not None)
    assert g > 0


def test_runaway_penalty_is_bounded_as_sigma_goes_to_zero():
    """Refit on gaps that have (almost) closed: sigma_G -> 0. The raw-gap loss cannot exceed
    beta*1 + gamma*(1 + |u0|)^2 + CE terms; the z-space loss is held by the sigma floor."""
    out, batch, _ = one_sample()
    st = types.SimpleNamespace(epoch=3, data=types.SimpleNamespace(train=types.SimpleNamespace(extras={})),
                               log=lambda s: None)
    losses = {}
    for space in ("raw", "z"):
        vals = []
        for spread in (1e-1, 1e-3, 1e-6, 0.0):
            m = make(gap_space=space, sigma_floor=0.05, posterior_weights=False)
            m.train_gaps = torch.tensor([0.5, 0.5 + spread, 0.5 - spread, 0.5], dtype=torch.float32)
            m._refit(st, "train")
            assert m.sigma_g >= 0.05
            vals.append(m.loss(out, batch, st)[0].item())
        losses[space] = vals
        assert all(math.isfinite(v) for v in vals)
    # raw: g in [-1, 1] and u0 a raw mean: bounded by 0.2877 + 0.5*(1 + 4 + 0.98) whatever sigma is
    assert max(losses["raw"]) < 0.2877 + 0.5 * (1 + 4 + 0.9809)
    # z: 1/sigma_G is capped by the floor, so once sigma_G sits on it the loss no longer grows
    assert losses["z"][1] == pytest.approx(losses["z"][3], rel=1e-5)


def _val_stub(audio_acc_high: bool):
    y = np.array([0, 1, 0, 1])
    good = np.eye(2)[y] * 5.0
    bad = np.eye(2)[1 - y] * 5.0
    pred = {"label": y, "audio": good if audio_acc_high else bad, "visual": bad if audio_acc_high else good}
    logs = []
    return types.SimpleNamespace(epoch=2, predict_split=lambda split, indices=None: pred, log=logs.append,
                                 logs=logs, optimizer=None, new_optimizer=lambda: "fresh",
                                 data=types.SimpleNamespace(train=types.SimpleNamespace(extras={})))


def test_dominant_modality_from_validation_and_both_views_logged():
    m = make(dominant="validation")
    m.train_gaps = torch.tensor([0.3, 0.2, 0.4, 0.1])   # audio more confident on the training pass
    st = _val_stub(audio_acc_high=False)                 # ... but visual is better on validation
    m.on_epoch_start(st)
    assert (m.dom, m.weak) == ("visual", "audio")
    assert torch.allclose(m.train_gaps, torch.tensor([-0.3, -0.2, -0.4, -0.1]))
    rec = m.on_epoch_end(st)
    assert rec["dominant"] == "visual" and rec["dominant_train_disagrees"] is True
    assert rec["switch_val_acc_visual"] == 1.0 and rec["switch_val_acc_audio"] == 0.0
    assert st.optimizer == "fresh"                       # reset at the switch (Table IV)
    m2 = make(dominant="config", reset_optimizer=False)
    m2.train_gaps = torch.tensor([0.3, 0.2, 0.4, 0.1])
    st2 = _val_stub(audio_acc_high=False)
    m2.on_epoch_start(st2)
    assert (m2.dom, m2.weak) == ("audio", "visual") and st2.optimizer is None


def test_purification_keeps_w0_above_tau_and_reports_data_pct():
    m = make(n_train=200, purify_tau=0.5)
    rng = np.random.default_rng(0)
    gaps = np.concatenate([rng.normal(0.0, 0.05, 150), rng.normal(0.8, 0.05, 50)])
    m.train_gaps = torch.tensor(gaps, dtype=torch.float32)
    st = _val_stub(audio_acc_high=True)
    st.train_indices = None
    m.on_epoch_start(st)
    assert 140 <= len(st.train_indices) <= 160 and np.mean(st.train_indices < 150) > 0.95   # the balanced group
    assert m.data_pct == pytest.approx(100 * len(st.train_indices) / 200)
    assert m.stage(2) == "purify"
    out, batch, _ = one_sample()
    loss, _ = m.loss(out, batch, types.SimpleNamespace(epoch=5))
    assert loss.item() == pytest.approx(0.2876821 * 2 + 0.6931472, abs=1e-6)   # L_wp alone


def test_end_to_end_refits_log_the_mixture_and_resume_exactly(tmp_path):
    raw = {"data": avdigits(visual_corrupt=0.3, visual_noise=0.5, audio_speed=0.0),
           "model": {"backbone": "small", "width": 4}, "optim": {"lr": 0.1},
           "method": {"name": "gap_adaptive", "warmup_epochs": 1, "mixture": "smm"},
           "train": {"epochs": 3, "batch_size": 128, "device": "cpu", "threads": 2, "checkpoint_every": 1}}
    cfg = resolve(raw)
    full = run_trial(cfg, checkpoint_dir=tmp_path / "a")
    h = full.history
    assert [r["stage"] for r in h] == ["warmup", "adaptive", "adaptive"]
    for r in h[1:]:
        assert len(r["fit_pi"]) == 2 and len(r["fit_nu"]) == 2 and sum(r["gap_hist"]) == 1295
        # a share of the 1295 training samples, and an AUROC
        assert r["frac_w1_gt_half"] * 1295 == pytest.approx(round(r["frac_w1_gt_half"] * 1295), abs=1e-6)
        assert 0.0 <= r["auroc_w1_corrupt_visual"] <= 1.0

    class Stop(Exception):
        pass

    def stop(rec, ck):
        if rec["epoch"] == 1:
            raise Stop()
    with pytest.raises(Stop):
        run_trial(cfg, checkpoint_dir=tmp_path / "b", report=stop)
    resumed = run_trial(cfg, checkpoint_dir=tmp_path / "b")
    strip = lambda hs: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in hs]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
    # the paper's Figures 3, 5, 6 can be drawn from the history alone
    from raygap.figures import trial_figures
    figs = trial_figures(full.history, ["audio", "visual"], tmp_path / "figs", "t")
    assert sorted(p.name for p in figs) == ["t_accuracy.png", "t_fit.png", "t_gap_evolution.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in figs)
