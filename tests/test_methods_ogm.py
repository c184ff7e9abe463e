"""OGM-GE and OPM & OGM: the coefficient, the gradient scaling of the dominant encoder, the GE
noise and its window, and OPM's drop rate, on tiny models with hand-computed numbers."""
import math
import types

import pytest
import torch
import torch.nn as nn

from raygap.config import resolve
from raygap.methods.base import MethodContext
from raygap.methods.ogm_ge import OGMGE, modulate_gradients, modality_scores, ogm_coefficients, score_ratios
from raygap.methods.opm_ogm import OPMOGM, drop_probabilities
from raygap.models.fusion import ConcatFusion
from raygap.models.net import ModelOutput

LN3 = math.log(3.0)
MS = ["audio", "visual"]


class Tiny(nn.Module):
    """The MultimodalNet interface (encoders, fusion, encode, head) around given encoders."""

    def __init__(self, encoders: dict, dims: dict, k=2):
        super().__init__()
        self.modalities = list(encoders)
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = ConcatFusion(dims, k)

    def encode(self, batch):
        return {m: self.encoders[m](batch[m]) for m in self.modalities}

    def head(self, feats):
        fused, parts = self.fusion(feats)
        return ModelOutput(feats, parts, fused)

    def forward(self, batch):
        return self.head(self.encode(batch))


def conv_model():
    torch.manual_seed(0)
    enc = {m: nn.Sequential(nn.Conv2d(1, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()) for m in MS}
    return Tiny(enc, {m: 3 for m in MS})


def make(cls, name, **method):
    cfg = resolve({"seed": 3, "method": {"name": name, **method}})
    ctx = MethodContext(MS, 2, 8, cfg, torch.device("cpu"))
    return cls(cfg.params("method"), ctx)


def hand_out():
    """Two samples, labels [0, 1]: audio softmax at the true class 0.75 each -> s_a = 1.5;
    visual logits 0 -> 0.5 each -> s_v = 1.0; rho_a = 1.5, rho_v = 2/3."""
    la = torch.tensor([[LN3, 0.0], [0.0, LN3]])
    lv = torch.zeros(2, 2)
    return ModelOutput({}, {"audio": la, "visual": lv}, la + lv), torch.tensor([0, 1])


# ----------------------------------------------------------------------------- the coefficient
def test_coefficient_formula_by_hand():
    out, y = hand_out()
    s = modality_scores(out.logits, y)
    assert s["audio"] == pytest.approx(1.5) and s["visual"] == pytest.approx(1.0)
    rho = score_ratios(s)
    assert rho["audio"] == pytest.approx(1.5) and rho["visual"] == pytest.approx(2 / 3)
    # ratio (paper Eq. 10, official): 1 - tanh(0.8 * 1.5) = 1 - tanh(1.2) = 1 - 0.8336546 = 0.1663454
    k = ogm_coefficients(rho, 0.8, "ratio")
    assert k["audio"] == pytest.approx(0.1663454, abs=1e-6) and k["visual"] == 1.0
    # excess: 1 - tanh(0.8 * 0.5) = 1 - tanh(0.4) = 1 - 0.3799490 = 0.6200510
    k = ogm_coefficients(rho, 0.8, "excess")
    assert k["audio"] == pytest.approx(0.6200510, abs=1e-6) and k["visual"] == 1.0
    # equal scores: nobody is modulated
    assert ogm_coefficients(score_ratios({"a": 1.0, "b": 1.0}), 0.8) == {"a": 1.0, "b": 1.0}


def test_three_modalities_compare_with_the_mean_of_the_others():
    # s = (1.5, 1.0, 0.5): rho = 1.5/0.75 = 2, 1.0/1.0 = 1, 0.5/1.25 = 0.4
    rho = score_ratios({"a": 1.5, "b": 1.0, "c": 0.5})
    assert rho == pytest.approx({"a": 2.0, "b": 1.0, "c": 0.4})
    k = ogm_coefficients(rho, 0.8)
    # 1 - tanh(1.6) = 1 - 0.9216686 = 0.0783314; rho = 1 is not > 1
    assert k == pytest.approx({"a": 0.0783314, "b": 1.0, "c": 1.0}, abs=1e-6)


# ----------------------------------------------------------------------------- gradient scaling
def grads_of(model):
    x = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    batch = {"audio": x, "visual": x.flip(0), "label": torch.tensor([0, 1, 0, 1])}
    out = model(batch)
    nn.functional.cross_entropy(out.fused, batch["label"]).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("modulate", ["conv", "all"])
def test_dominant_encoder_grad_scaled_by_exactly_k_weak_untouched(modulate):
    model = conv_model()
    ref = grads_of(model)
    m = make(OGMGE, "ogm_ge", ge_noise_to="none", modulate=modulate)
    out, y = hand_out()                                   # audio dominant, k_a = 0.1663454
    m.after_backward(model, out, {"label": y}, types.SimpleNamespace(epoch=0))
    k = 0.1663454
    for n, p in model.named_parameters():
        if n.startswith("encoders.audio") and (p.dim() >= 4 or modulate == "all"):
            assert torch.allclose(p.grad, k * ref[n], atol=1e-7), n
        else:   # the visual encoder, the audio conv bias under "conv", the fusion head
            assert torch.equal(p.grad, ref[n]), n
    rec = m.on_epoch_end(None)
    assert rec["ogm_k_audio"] == pytest.approx(k, abs=1e-6) and rec["ogm_k_visual"] == 1.0
    assert rec["ogm_ratio"] == pytest.approx(1.5)


def test_ge_noise_std_is_the_grad_std_before_scaling():
    torch.manual_seed(0)
    enc = {m: nn.Sequential(nn.Conv2d(64, 64, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()) for m in MS}
    model = Tiny(enc, {m: 64 for m in MS})
    wa, wv = model.encoders["audio"][0].weight, model.encoders["visual"][0].weight   # 36864 entries each
    ga = 2.0 * torch.randn(wa.shape)
    gv = 3.0 * torch.randn(wv.shape)
    for noise_to in ["modulated", "both", "none"]:
        wa.grad, wv.grad = ga.clone(), gv.clone()
        modulate_gradients(model, {"audio": 0.25, "visual": 1.0}, noise_to=noise_to)
        res_a, res_v = wa.grad - 0.25 * ga, wv.grad - gv
        if noise_to == "none":
            assert torch.allclose(res_a, torch.zeros_like(res_a), atol=1e-6) and torch.equal(res_v, 0 * res_v)
            continue
        # noise std = std(g) before scaling = std(ga) ~ 2.0 (not 0.25 * 2 = 0.5); mean 0
        assert res_a.std().item() == pytest.approx(ga.std().item(), rel=0.03)
        assert abs(res_a.mean().item()) < 0.05
        if noise_to == "modulated":
            assert torch.equal(res_v, torch.zeros_like(res_v))            # k_v = 1: no noise
        else:
            assert res_v.std().item() == pytest.approx(gv.std().item(), rel=0.03)   # ~3.0


@pytest.mark.parametrize("epoch, changed", [(0, False), (1, False), (2, True), (4, True), (5, True), (6, False),
                                            (9, False)])
def test_modulation_only_inside_the_window(epoch, changed):
    model = conv_model()
    ref = grads_of(model)
    m = make(OGMGE, "ogm_ge", modulation_starts=2, modulation_ends=5)   # epochs 2, 3, 4, 5: the official 2 <= e <= 5
    out, y = hand_out()
    m.after_backward(model, out, {"label": y}, types.SimpleNamespace(epoch=epoch))
    w = model.encoders["audio"][0].weight
    same = torch.equal(w.grad, ref["encoders.audio.0.weight"])
    assert same != changed
    assert torch.equal(model.encoders["visual"][0].bias.grad, ref["encoders.visual.0.bias"])


# ----------------------------------------------------------------------------- OPM
def feature_model():
    """Encoders pass the features through; the fusion maps audio feature j to class j."""
    model = Tiny({m: nn.Flatten() for m in MS}, {m: 2 for m in MS})
    with torch.no_grad():
        model.fusion.fc.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
        model.fusion.fc.bias.zero_()
    return model


def feature_batch(n):
    # label 0, audio feature [ln 3, 0] -> softmax 0.75 at the true class; visual [0, 0] -> 0.5
    return {"audio": torch.tensor([[LN3, 0.0]]).repeat(n, 1), "visual": torch.zeros(n, 2),
            "label": torch.zeros(n, dtype=torch.long), "index": torch.arange(n)}


def test_drop_probability_formula():
    # rho_a = 1.5: q = 0.5 * (1 + 0.5 * tanh(0.5)) = 0.5 * (1 + 0.5 * 0.4621172) = 0.6155293
    q = drop_probabilities({"audio": 1.5, "visual": 2 / 3}, 0.5, 0.5)
    assert q["audio"] == pytest.approx(0.6155293, abs=1e-6) and q["visual"] == 0.0
    assert drop_probabilities({"a": 1.0, "b": 1.0}, 0.5, 0.5) == {"a": 0.0, "b": 0.0}
    assert drop_probabilities({"a": 50.0, "b": 0.02}, 0.9, 5.0)["a"] == 1.0      # clipped


def run_opm(n_batches, B=16, **kw):
    m = make(OPMOGM, "opm_ogm", warmup_epochs=0, **kw)
    model = feature_model()
    st = types.SimpleNamespace(epoch=0)
    m.on_epoch_start(st)
    masks = []
    for _ in range(n_batches):
        out = m.forward(model, feature_batch(B), st)
        masks.append(out.extras.get("drop_audio", torch.zeros(B, dtype=torch.bool)))
        assert "drop_visual" not in out.extras or not out.extras["drop_visual"].any()   # q_v = 0
    return m, model, torch.stack(masks), m.on_epoch_end(st)


def test_opm_drops_the_dominant_modality_at_rate_q():
    q, p_exe = 0.6155293, 0.7
    m, _, masks, rec = run_opm(1000)
    # per sample: p_exe * q = 0.7 * 0.6155293 = 0.4308705 (1000 batches: batch-level sd ~ 0.009)
    assert masks.float().mean().item() == pytest.approx(p_exe * q, abs=0.03)
    assert rec["opm_exec_frac"] == pytest.approx(p_exe, abs=0.04)
    assert rec["opm_q_audio"] == pytest.approx(q, abs=1e-6) and rec["opm_q_visual"] == 0.0
    executed = masks.any(1)
    assert masks[executed].float().mean().item() == pytest.approx(q, abs=0.02)   # within executed batches
    assert rec["opm_drop_rate_visual"] == 0.0
    # the same seed gives the same drops
    _, _, masks2, _ = run_opm(1000)
    assert torch.equal(masks, masks2)


def test_opm_zeroes_features_before_the_head_with_bml_rescaling():
    m = make(OPMOGM, "opm_ogm", warmup_epochs=0, p_exe=1.0)
    model = feature_model()
    out = m.forward(model, feature_batch(64), types.SimpleNamespace(epoch=0))
    drop = out.extras["drop_audio"]
    assert 0 < drop.sum() < 64
    # theta = (2 * q + 2 * 0) / 4 = 0.3077646; 1 / (1 - theta) = 1.4445954
    # fused = W [a; v] / (1 - theta): kept samples [ln 3 * 1.4445954, 0] = [1.5870, 0], dropped [0, 0]
    assert torch.allclose(out.fused[drop], torch.zeros(int(drop.sum()), 2))
    assert torch.allclose(out.fused[~drop][:, 0], torch.full((int((~drop).sum()),), LN3 * 1.4445954), atol=1e-5)
    # the reported per-modality logits are those before dropping (the OGM scores use them)
    assert torch.allclose(out.logits["audio"][:, 0], torch.full((64,), LN3))
    m2 = make(OPMOGM, "opm_ogm", warmup_epochs=0, p_exe=1.0, rescale="none")
    out2 = m2.forward(model, feature_batch(64), types.SimpleNamespace(epoch=0))
    assert torch.allclose(out2.fused[~out2.extras["drop_audio"]][:, 0], torch.tensor(LN3))


def test_no_drop_in_predict_or_warmup_and_generator_resumes():
    m, model, _, _ = run_opm(3)
    b = feature_batch(64)
    model.eval()
    assert torch.allclose(m.predict(model, b).fused[:, 0], torch.full((64,), LN3))   # nothing zeroed
    w = make(OPMOGM, "opm_ogm", warmup_epochs=2, p_exe=1.0)
    out = w.forward(feature_model(), b, types.SimpleNamespace(epoch=1))
    assert "drop_audio" not in out.extras and torch.allclose(out.fused[:, 0], torch.full((64,), LN3))
    s = m.state_dict()
    a = torch.rand(5, generator=m.gen)
    m.load_state_dict(s)
    assert torch.equal(torch.rand(5, generator=m.gen), a)


def test_opm_ogm_scales_dominant_grad_with_pre_drop_scores():
    # audio dominant (rho_a = 1.5): OGM k_a = 1 - tanh(1.2) = 0.1663454 on the audio encoder only
    model = conv_model()
    ref = grads_of(model)
    m = make(OPMOGM, "opm_ogm", warmup_epochs=0, ge_noise_to="none")
    m._batch = {"rho": {"audio": 1.5, "visual": 2 / 3}}
    m.after_backward(model, None, None, types.SimpleNamespace(epoch=0))
    assert torch.allclose(model.encoders["audio"][0].weight.grad, 0.1663454 * ref["encoders.audio.0.weight"], atol=1e-7)
    assert torch.equal(model.encoders["visual"][0].weight.grad, ref["encoders.visual.0.weight"])
