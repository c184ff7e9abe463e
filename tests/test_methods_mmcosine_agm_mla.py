"""MMCosine (bounded cosine logits), AGM (responses, coefficients, scaled head and encoder gradients, the guard) and MLA
(alternating steps, the projector, entropy-weighted fusion), on tiny models with hand-computed
numbers, and each end to end through the one-trial engine with a resume."""
import math

import pytest
import torch
import torch.nn as nn

from raygap.config import resolve
from raygap.errors import ConfigError
from raygap.methods.agm import (AGM, AGMParams, agm_coefficients, clip_when_head_leaves, official_responses,
                                response_scores, score_ratios, shapley_responses, subset_logits)
from raygap.methods.base import MethodContext, TrainState
from raygap.methods.mla import MLA, batch_entropy_weights, entropy_weights, update_projector
from raygap.methods.mmcosine import MMCosine, cosine_logits
from raygap.models.fusion import ConcatFusion, SharedHead
from raygap.models.net import ModelOutput

LN3 = math.log(3.0)
MS = ["audio", "visual"]


class Tiny(nn.Module):
    """The MultimodalNet interface around linear encoders and a given fusion head."""

    def __init__(self, fusion_cls, d_in=3, d=2, k=2):
        super().__init__()
        torch.manual_seed(0)
        self.modalities = list(MS)
        self.encoders = nn.ModuleDict({m: nn.Linear(d_in, d) for m in MS})
        self.fusion = fusion_cls({m: d for m in MS}, k)

    def encode(self, batch):
        return {m: self.encoders[m](batch[m]) for m in self.modalities}

    def head(self, feats):
        fused, parts = self.fusion(feats)
        return ModelOutput(feats, parts, fused)

    def forward(self, batch):
        return self.head(self.encode(batch))


def make(cls, name, **method):
    cfg = resolve({"seed": 1, "method": {"name": name, **method},
                   "model": {"fusion": {"mla": "shared"}.get(name, "concat")}})
    ctx = MethodContext(list(MS), 2, 8, cfg, torch.device("cpu"))
    return cls(cfg.params("method"), ctx)


def state(epoch=0, phase=None):
    st = TrainState(epoch, 10, None, None, None, None, torch.device("cpu"), None)
    st.phase = phase
    return st


def batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"audio": torch.randn(n, 3, generator=g), "visual": torch.randn(n, 3, generator=g),
            "label": torch.tensor([0, 1] * (n // 2))}


# ----------------------------------------------------------------------------- MMCosine
def test_cosine_logits_by_hand():
    # phi = (3, 4), |phi| = 5; w_0 = (1, 0) -> cos 0.6; w_1 = (0, 2) -> cos 0.8; s = 10
    out = cosine_logits(torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]]), 10.0)
    assert out[0].tolist() == pytest.approx([6.0, 8.0])


def test_mmcosine_logits_are_bounded_by_s_times_m_and_ignore_the_bias():
    model = Tiny(ConcatFusion)
    meth = make(MMCosine, "mmcosine", scale=10.0)
    b = {k: v * 1000 if k != "label" else v for k, v in batch(8).items()}   # huge features
    with torch.no_grad():
        model.fusion.fc.weight.mul_(1000)
        model.fusion.fc.bias.fill_(50.0)
    out = meth.forward(model, b)
    assert out.fused.abs().max() <= 10.0 * 2 + 1e-4
    for m in MS:
        assert out.logits[m].abs().max() <= 10.0 + 1e-5
    # fused is the sum of the two cosine parts, with no bias: rescaling W^audio changes nothing
    assert torch.allclose(out.fused, out.logits["audio"] + out.logits["visual"])
    with torch.no_grad():
        model.fusion.fc.weight[:, :2].mul_(7.0)
    assert torch.allclose(meth.forward(model, b).fused, out.fused, atol=1e-5)
    loss, logs = meth.loss(out, b, state())
    assert loss.detach().item() == pytest.approx(float(nn.functional.cross_entropy(out.fused.detach(), b["label"])))
    assert meth.predict(model, b).fused.abs().max() <= 20.0 + 1e-4


def test_mmcosine_and_mla_declare_their_fusion_head():
    with pytest.raises(ConfigError) as e:
        resolve({"method": {"name": "mmcosine"}, "model": {"fusion": "gated"}})
    assert e.value.key == "model.fusion" and "concat" in e.value.line()
    with pytest.raises(ConfigError) as e:
        resolve({"method": {"name": "mla"}})
    assert "model.fusion=shared" in e.value.line()
    with pytest.raises(ConfigError):
        SharedHead({"audio": 4, "text": 8}, 2)


# ----------------------------------------------------------------------------- AGM
def zeros_blank(feats):
    return {m: torch.zeros_like(x) for m, x in feats.items()}


def test_official_and_shapley_responses_by_hand():
    # f(a, v) = (a + v)^2 + 1 at a = 1, v = 2: f(a,v) 10, f(0,v) 5, f(a,0) 2, f(0,0) 1
    # official: phi_a = 1/2 (10 - 5 + 2) = 3.5, phi_v = 1/2 (10 - 2 + 5) = 6.5   (sum 10 = f(a,v))
    # Shapley:  phi_a = 1/2 [(10 - 5) + (2 - 1)] = 3, phi_v = 1/2 [(10 - 2) + (5 - 1)] = 6   (sum 9)
    head = lambda fs: (fs["a"] + fs["v"]) ** 2 + 1   # noqa: E731
    feats = {"a": torch.tensor([[1.0]]), "v": torch.tensor([[2.0]])}
    f = subset_logits(head, feats, zeros_blank(feats))
    r = official_responses(f, ["a", "v"])
    assert r["a"].item() == pytest.approx(3.5) and r["v"].item() == pytest.approx(6.5)
    r = shapley_responses(f, ["a", "v"])
    assert r["a"].item() == pytest.approx(3.0) and r["v"].item() == pytest.approx(6.0)
    # three modalities, f = a*b*c + a at (1, 2, 3): Shapley gives a its own term 1 plus a third of abc = 6;
    # official: f(all) 7; a: 1/2 (7 - f(0,b,c) 0 + f(a,0,0) 1) = 4; b and c: 1/2 (7 - 1 + 0) = 3
    head3 = lambda fs: fs["a"] * fs["b"] * fs["c"] + fs["a"]   # noqa: E731
    feats = {"a": torch.tensor([[1.0]]), "b": torch.tensor([[2.0]]), "c": torch.tensor([[3.0]])}
    f = subset_logits(head3, feats, zeros_blank(feats))
    assert [v.item() for v in shapley_responses(f, list("abc")).values()] == pytest.approx([3.0, 2.0, 2.0])
    assert [v.item() for v in official_responses(f, list("abc")).values()] == pytest.approx([4.0, 3.0, 3.0])


def test_responses_of_a_linear_concat_head_with_features_zeroed():
    # f = W_a a + W_v v + b: Shapley phi_a = W_a a (the bias cancels); official
    # 1/2 [(W_a a + W_v v + b) - (W_v v + b) + (W_a a + b)] = W_a a + b/2: the concat head's own split
    model = Tiny(ConcatFusion)
    with torch.no_grad():
        model.fusion.fc.bias.copy_(torch.tensor([5.0, -3.0]))
    feats = model.encode(batch())
    f = subset_logits(lambda fs: model.head(fs).fused, feats, zeros_blank(feats))
    shap, off = shapley_responses(f, MS), official_responses(f, MS)
    for m in MS:
        assert torch.allclose(shap[m], feats[m] @ model.fusion.weight_of(m).t(), atol=1e-6)
        assert torch.allclose(off[m], feats[m] @ model.fusion.weight_of(m).t() + torch.tensor([2.5, -1.5]), atol=1e-6)


def floats(d: dict) -> dict:
    """AGM keeps its per-batch values as 0-dim tensors on the device."""
    return {k: float(v) for k, v in d.items()}


def test_agm_scores_ratios_and_coefficients_by_hand():
    # logits (ln 3, 0), label 0: p = 0.75, score -ln 0.75 = 0.2876821
    s = response_scores({"a": torch.tensor([[LN3, 0.0]]), "v": torch.tensor([[0.0, 0.0]])}, torch.tensor([0]))
    assert s["a"] == pytest.approx(0.2876821, abs=1e-6) and s["v"] == pytest.approx(math.log(2), abs=1e-6)
    # a p of 0 is floored at 1e-8: -ln 1e-8 = 18.4206807
    s0 = response_scores({"a": torch.tensor([[-200.0, 200.0]])}, torch.tensor([0]))
    assert s0["a"] == pytest.approx(18.4206807, abs=1e-5)
    # scores a 0.5, v 1.0: r_a = e^0.5 = 1.6487213, r_v = e^-0.5 = 0.6065307
    r = score_ratios({"a": 0.5, "v": 1.0})
    assert r["a"] == pytest.approx(1.6487213) and r["v"] == pytest.approx(0.6065307)
    # target 1: k_a = exp(1.5 * (1 - 1.6487213)) = exp(-0.9730820) = 0.3779165
    #           k_v = exp(1.5 * (1 - 0.6065307)) = exp(0.5902040) = 1.8043565
    k = agm_coefficients(r, {"a": 1.0, "v": 1.0}, 1.5, 7.0)
    assert k["a"] == pytest.approx(0.3779165, rel=1e-6) and k["v"] == pytest.approx(1.8043565, rel=1e-6)
    # the clip: target 10, ratio 1 -> min(9, 7) = 7 -> exp(10.5)
    assert agm_coefficients({"a": 1.0}, {"a": 10.0}, 1.5, 7.0)["a"] == pytest.approx(math.exp(10.5))
    # the official CREMA-D clip 10: target 13, ratio 1, alpha 1 -> min(12, 10) -> e^10; no clip (AVE, null): e^12
    assert agm_coefficients({"a": 1.0}, {"a": 13.0}, 1.0, 10.0)["a"] == pytest.approx(math.exp(10.0))
    assert agm_coefficients({"a": 1.0}, {"a": 13.0}, 1.0, None)["a"] == pytest.approx(math.exp(12.0))


def test_agm_defaults_are_the_official_cremad_script():
    p = AGMParams()
    assert (p.alpha, p.clip, p.modulation_starts, p.modulation_ends, p.grad_clip) == (1.0, 10.0, 0, 20, 1.0)
    assert (p.scale, p.response, p.blank) == ("logits", "official", "input")


# The hand-built batch: 2 samples, 2 classes, one input and one feature per modality.
#   x_a = (1, 2), x_v = (1, -1), labels (0, 1)
#   audio encoder  a = 1 * x_a + 0.5   -> a = (1.5, 2.5), on a zeroed input a0 = 0.5
#   visual encoder v = 2 * x_v - 1     -> v = (1, -3),    on a zeroed input v0 = -1
#   head (rows: classes; columns: a, v)  W = [[0.5, 1], [-0.5, 0]], b = (0, 0.5)
#   f(a,v) = (0.5 a + v, -0.5 a + 0.5):  sample 0 (1.75, -0.25), sample 1 (-1.75, -0.75)
#   f(0,v) = f(a0,v):                    sample 0 (1.25,  0.25), sample 1 (-2.75,  0.25)
#   f(a,0) = f(a,v0):                    sample 0 (-0.25, -0.25), sample 1 (0.25, -0.75)
#   f(0,0) = f(a0,v0) = (-0.75, 0.25) for both samples
# Official response phi_a = 1/2 (f(a,v) - f(0,v) + f(a,0)) = (0.125, -0.375), (0.625, -0.875);
#   phi_v = 1/2 (f(a,v) - f(a,0) + f(0,v)) = (1.625, 0.125), (-2.375, 0.125)   (phi_a + phi_v = f(a,v))
# Scores (a 2-class softmax is sigma of the logit difference):
#   L_a = 1/2 [-ln sigma(0.5) - ln sigma(-1.5)] = 1/2 (0.4740770 + 1.7014133) = 1.0877451
#   L_v = 1/2 [-ln sigma(1.5) - ln sigma(2.5)]  = 1/2 (0.2014133 + 0.0788897) = 0.1401515
#   r_a = e^(L_v - L_a) = e^-0.9475936 = 0.3876728, r_v = 1 / r_a = 2.5794950
# First batch, target 1, alpha 1: k_a = e^(1 - 0.3876728) = 1.8447195, k_v = e^(1 - 2.5794950) = 0.2060792
# The loss CE(phi_a + phi_v) = CE(f(a,v)) = 1/2 [-ln sigma(2) - ln sigma(1)] = 0.2200948; its gradient at the
#   logits g_i = (softmax - onehot) / 2: g_0 = (-0.0596015, 0.0596015), g_1 = (0.1344707, -0.1344707)
# With k on the responses the logits f(a,v), f(0,v), f(a,0) get 1/2 (k_a + k_v) g, 1/2 (k_v - k_a) g,
#   1/2 (k_a - k_v) g, so
#   dW_a = sum_i g_i [k_a a_i + 1/2 (k_v - k_a) a0]   = (0.4245589, -0.4245589)   (plain: 0.2467746)
#   dW_v = sum_i g_i [k_v v_i + 1/2 (k_a - k_v) v0]   = (-0.1567593, 0.1567593)  (plain: -0.4630136)
#   db   = 1/2 (k_a + k_v) sum_i g_i                  = (0.0767709, -0.0767709)  (plain: 0.0748692)
#   audio encoder: d a_i = k_a W_a^T g_i, d a0_i = 1/2 (k_v - k_a) W_a^T g_i (the blank pass)
#     weight: sum_i d a_i x_a_i = 0.3861735;  bias: sum_i (d a_i + d a0_i) = 0.0767709
#   visual encoder likewise: weight -0.0399942, bias 0.0767709
HAND = {"audio": torch.tensor([[1.0], [2.0]]), "visual": torch.tensor([[1.0], [-1.0]]), "label": torch.tensor([0, 1])}


def hand_model():
    model = Tiny(ConcatFusion, d_in=1, d=1, k=2)
    with torch.no_grad():
        for m, (w, c) in {"audio": (1.0, 0.5), "visual": (2.0, -1.0)}.items():
            model.encoders[m].weight.fill_(w)
            model.encoders[m].bias.fill_(c)
        model.fusion.fc.weight.copy_(torch.tensor([[0.5, 1.0], [-0.5, 0.0]]))
        model.fusion.fc.bias.copy_(torch.tensor([0.0, 0.5]))
    return model


def grads(model) -> list[float]:
    """dW_a (2), dW_v (2), db (2), audio encoder weight, bias, visual encoder weight, bias."""
    W, b = model.fusion.fc.weight.grad, model.fusion.fc.bias.grad
    enc = [float(t) for m in MS for t in (model.encoders[m].weight.grad[0, 0], model.encoders[m].bias.grad[0])]
    return [float(W[0, 0]), float(W[1, 0]), float(W[0, 1]), float(W[1, 1]), float(b[0]), float(b[1]), *enc]


def agm_step(model, **method):
    meth = make(AGM, "agm", **method)
    st = state()
    out = meth.forward(model, HAND, st)
    loss, _ = meth.loss(out, HAND, st)
    loss.backward()
    meth.after_backward(model, out, HAND, st)
    return meth, out, loss


def test_agm_official_on_a_hand_built_batch():
    model = hand_model()
    meth, out, loss = agm_step(model)
    assert torch.allclose(out.extras["response_audio"], torch.tensor([[0.125, -0.375], [0.625, -0.875]]))
    assert torch.allclose(out.extras["response_visual"], torch.tensor([[1.625, 0.125], [-2.375, 0.125]]))
    assert float(loss.detach()) == pytest.approx(0.2200948, abs=1e-6)
    assert floats(meth.coeff) == pytest.approx({"audio": 1.8447195, "visual": 0.2060792}, abs=1e-6)
    expect = [0.4245589, -0.4245589, -0.1567593, 0.1567593, 0.0767709, -0.0767709,
              0.3861735, 0.0767709, -0.0399942, 0.0767709]
    assert grads(model) == pytest.approx(expect, abs=1e-6)
    assert meth.on_epoch_end(state())["agm_clip_frac"] == 0.0      # |dW| <= 0.42: the guard stays off
    # the encoders were put back in train mode after their blank pass
    assert all(mod.training for mod in model.modules())


# alpha 12 on the same batch: k_a = e^(12 (1 - 0.3876728)) = e^7.3479265 = 1552.973, k_v = e^(12 (1 - 2.5794950))
#   = 5.87e-9. Then dW_a = (354.16682, -354.16682) leaves [-1, 1]: the guard clips the whole gradient to norm 1.
#   The unclipped gradient (formulas above): dW_a +-354.16682, dW_v -+58.134968, db +-58.134968, audio weight
#   325.09934, audio bias 58.134968, visual weight -1.14e-9, visual bias 58.134968; norm
#   sqrt(2 * 354.16682^2 + 4 * 58.134968^2 + 325.09934^2 + 2 * 58.134968^2) = 613.86962; each divided by it:
#   dW_a 0.5769414, dW_v -0.0947025, db 0.0947025, audio weight 0.5295902, biases 0.0947025, visual weight ~0
# raygap <= v4 (k on the features, Shapley response, features zeroed): phi_a = W_a a = (0.75, -0.75),
#   (1.25, -1.25), phi_v = W_v v = (1, 0), (-3, 0); L_a = 1/2 [-ln sigma(1.5) - ln sigma(-2.5)] = 1.3901515,
#   L_v = 1/2 [-ln sigma(1) - ln sigma(3)] = 0.1809245; k_a = e^(12 (1 - e^(L_v - L_a))) = 4531.759; the head
#   keeps its plain gradient (|dW_a| = 0.2467746 < 1, the guard never fires) and the audio encoder's weight gets
#   k_a sum_i W_a^T g_i x_a_i = 4531.759 * 0.2093406 = 948.67826
def test_the_guard_sees_a_large_k_only_when_k_scales_the_responses():
    model = hand_model()
    meth, _, _ = agm_step(model, alpha=12.0)
    assert float(meth.coeff["audio"]) == pytest.approx(1552.973, rel=1e-5)
    assert meth.on_epoch_end(state())["agm_clip_frac"] == 1.0
    g = grads(model)
    assert g == pytest.approx([0.5769414, -0.5769414, -0.0947025, 0.0947025, 0.0947025, -0.0947025,
                               0.5295902, 0.0947025, 0.0, 0.0947025], abs=1e-6)
    assert math.sqrt(sum(t * t for t in g)) == pytest.approx(1.0, abs=1e-6)
    old = hand_model()
    meth, _, _ = agm_step(old, alpha=12.0, clip=7.0, scale="features", response="shapley", blank="features")
    assert float(meth.coeff["audio"]) == pytest.approx(4531.759, rel=1e-5)
    assert meth.on_epoch_end(state())["agm_clip_frac"] == 0.0
    assert float(old.fusion.fc.weight.grad[0, 0]) == pytest.approx(0.2467746, abs=1e-6)
    assert float(old.encoders["audio"].weight.grad[0, 0]) == pytest.approx(948.67826, rel=1e-5)


# The other variants on the same batch, alpha 1:
# - Shapley with inputs zeroed: phi_a = phi_a(official) - f(0,0)/2 = (0.5, -0.5), (1, -1) (= W_a (a - a0)),
#   phi_v = (2, 0), (-2, 0); the loss logits phi_a + phi_v + f(0,0) are f(a,v) again (loss 0.2200948)
# - official with features zeroed: phi_a = W_a a + b/2 = (0.75, -0.5), (1.25, -1), phi_v = W_v v + b/2 =
#   (1, 0.25), (-3, 0.25); L_a = 1/2 [-ln sigma(1.25) - ln sigma(-2.25)] = 1.3010678, L_v = 1/2 [-ln sigma(0.75)
#   - ln sigma(3.25)] = 0.2124562; r_a = e^(L_v - L_a) = 0.3366836, k_a = e^(1 - r_a) = 1.9412195,
#   k_v = e^(1 - 1 / r_a) = 0.1394363. With a0 = v0 = 0 the head's gradients are exactly dW_a = k_a x plain,
#   dW_v = k_v x plain, db = 1/2 (k_a + k_v) x plain, each encoder's k_m x plain (plain: the CE(f(a,v)) gradients)
def test_the_shapley_and_feature_variants_on_the_hand_built_batch():
    model = hand_model()
    _, out, loss = agm_step(model, response="shapley")
    assert torch.allclose(out.extras["response_audio"], torch.tensor([[0.5, -0.5], [1.0, -1.0]]))
    assert torch.allclose(out.extras["response_visual"], torch.tensor([[2.0, 0.0], [-2.0, 0.0]]))
    assert float(loss.detach()) == pytest.approx(0.2200948, abs=1e-6)
    plain = hand_model()
    nn.functional.cross_entropy(plain(HAND).fused, HAND["label"]).backward()
    model = hand_model()
    meth, out, _ = agm_step(model, blank="features")
    assert torch.allclose(out.extras["response_audio"], torch.tensor([[0.75, -0.5], [1.25, -1.0]]))
    ka, kv = 1.9412195, 0.1394363
    assert floats(meth.coeff) == pytest.approx({"audio": ka, "visual": kv}, abs=1e-6)
    W, Wp = model.fusion.fc.weight.grad, plain.fusion.fc.weight.grad
    assert torch.allclose(W[:, 0], ka * Wp[:, 0], atol=1e-6) and torch.allclose(W[:, 1], kv * Wp[:, 1], atol=1e-6)
    assert torch.allclose(model.fusion.fc.bias.grad, (ka + kv) / 2 * plain.fusion.fc.bias.grad, atol=1e-6)
    for m, k in (("audio", ka), ("visual", kv)):
        for name in ("weight", "bias"):
            assert torch.allclose(getattr(model.encoders[m], name).grad, k * getattr(plain.encoders[m], name).grad,
                                  atol=1e-6)


def hand_scores(model, out, y) -> dict[str, float]:
    """L_m = CE(W_m x_m, y): the responses of a linear concatenation head, by hand."""
    W = model.fusion.fc.weight.detach()
    d = out.features["audio"].shape[1]
    parts = {"audio": W[:, :d], "visual": W[:, d:]}
    return {m: float(nn.functional.cross_entropy(out.features[m].detach() @ parts[m].T, y)) for m in MS}


V4 = {"alpha": 1.5, "clip": 7.0, "scale": "features", "response": "shapley", "blank": "features"}   # raygap <= v4


def test_agm_features_variant_scales_each_encoders_gradient_by_its_coefficient_and_keeps_running_means():
    b = batch(6)
    ref = Tiny(ConcatFusion)
    out = ref(b)
    nn.functional.cross_entropy(out.fused, b["label"]).backward()
    model = Tiny(ConcatFusion)                       # same seed: same weights
    meth = make(AGM, "agm", **V4)
    out = meth.forward(model, b)
    loss, _ = meth.loss(out, b, state())
    # first batch: target 1, ratio from this batch's Shapley responses, which for a linear
    # concatenation head are phi_m = W_m x_m (no bias): the scores by hand from the head's weights
    scores = hand_scores(model, out, b["label"])
    r = {"audio": math.exp(scores["visual"] - scores["audio"]), "visual": math.exp(scores["audio"] - scores["visual"])}
    k = {m: math.exp(1.5 * (1.0 - r[m])) for m in MS}
    assert floats(meth.coeff) == pytest.approx(k)
    assert k["audio"] != pytest.approx(1.0, abs=1e-3)
    loss.backward()
    for m in MS:
        assert torch.allclose(model.encoders[m].weight.grad, k[m] * ref.encoders[m].weight.grad, atol=1e-6)
    assert torch.allclose(model.fusion.fc.weight.grad, ref.fusion.fc.weight.grad, atol=1e-6)   # head untouched
    # the running means: after two batches, the mean of both batches' scores
    b2 = batch(6, seed=1)
    out2 = meth.forward(model, b2)
    meth.loss(out2, b2, state())
    s2 = hand_scores(model, out2, b2["label"])
    assert floats(meth.mean_score) == pytest.approx({m: (scores[m] + s2[m]) / 2 for m in MS})
    # the second batch's target comes from the first batch's scores (the running mean of one
    # batch), its ratio from its own: k = exp(1.5 * min(target - ratio, 7))
    other = {"audio": "visual", "visual": "audio"}
    k2 = {m: math.exp(1.5 * min(math.exp(scores[other[m]] - scores[m]) - math.exp(s2[other[m]] - s2[m]), 7.0))
          for m in MS}
    assert floats(meth.coeff) == pytest.approx(k2)
    # outside the window (0..2, both included) the coefficients are 1; its end epoch is inside
    late = make(AGM, "agm", **V4, modulation_ends=2)
    late.loss(late.forward(model, b), b, state(epoch=3))
    assert late.coeff == {"audio": 1.0, "visual": 1.0}
    last = make(AGM, "agm", **V4, modulation_ends=3)
    last.loss(last.forward(model, b), b, state(epoch=3))
    assert last.coeff != {"audio": 1.0, "visual": 1.0}


# ----------------------------------------------------------------------------- MLA
def test_projector_update_by_hand():
    # x = (3, 4), x^T x = 25, gamma 5: P = I - x x^T / 30 = [[0.7, -0.4], [-0.4, 0.4666667]]
    P = update_projector(torch.eye(2), torch.tensor([3.0, 4.0]), 5.0)
    assert P.flatten().tolist() == pytest.approx([0.7, -0.4, -0.4, 7 / 15])
    # P x = x * gamma / (gamma + |x|^2) = x / 6
    assert (P @ torch.tensor([3.0, 4.0])).tolist() == pytest.approx([0.5, 2 / 3])
    # a second direction: P stays symmetric and removes both (gamma -> 0)
    P = update_projector(torch.eye(3), torch.tensor([1.0, 0.0, 0.0]), 1e-9)
    P = update_projector(P, torch.tensor([1.0, 1.0, 0.0]), 1e-9)
    assert torch.allclose(P, torch.diag(torch.tensor([0.0, 0.0, 1.0])), atol=1e-6)


def test_entropy_weights_by_hand():
    # audio p = (0.75, 0.25): e_a = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.5623351; visual e_v = ln 2 = 0.6931472
    # lambda_a = exp(0.6931472 - 0.5623351) / (exp(0.1308121) + 1) = 1.1397491 / 2.1397491 = 0.5326555
    w = entropy_weights({"audio": torch.tensor([[LN3, 0.0]]), "visual": torch.tensor([[0.0, 0.0]])})
    assert w["audio"].item() == pytest.approx(0.5326555, abs=1e-6)
    assert w["visual"].item() == pytest.approx(1 - 0.5326555, abs=1e-6)


def test_batch_entropy_weights_of_the_official_code_by_hand():
    # audio logits [[0, 0], [ln 3, 0]]: softmax over the batch (dim 0) per class: (1/4, 3/4) and (1/2, 1/2),
    # e_a = -(1/4 ln 1/4 + 3/4 ln 3/4) + ln 2 = 0.5623351 + 0.6931472 = 1.2554823; visual all 0: e_v = 2 ln 2
    # lambda_a = exp(e_v - e_a) / (exp(e_v - e_a) + 1) = exp(0.1308121) / 2.1397491 = 0.5326555, for both samples
    w = batch_entropy_weights({"audio": torch.tensor([[0.0, 0.0], [LN3, 0.0]]), "visual": torch.zeros(2, 2)})
    assert w["audio"].tolist() == pytest.approx([0.5326555, 0.5326555], abs=1e-6)
    assert w["visual"].tolist() == pytest.approx([1 - 0.5326555] * 2, abs=1e-6)
    # the per-sample form gives the two samples different weights: 1/2 (both uniform) and 0.5326555
    per = entropy_weights({"audio": torch.tensor([[0.0, 0.0], [LN3, 0.0]]), "visual": torch.zeros(2, 2)})
    assert per["audio"].tolist() == pytest.approx([0.5, 0.5326555], abs=1e-6)


def test_mla_alternates_and_its_head_step_is_orthogonal_to_the_other_modality():
    model = Tiny(SharedHead)
    meth = make(MLA, "mla", gamma=1e-9, project=True)
    meth.setup(model)
    b = batch(4)
    assert meth.phases(state()) == ("audio", "visual")
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    def step(m):
        opt.zero_grad(set_to_none=True)
        out = meth.forward(model, b, state(phase=m))
        loss, logs = meth.loss(out, b, state(phase=m))
        assert set(logs) == {f"loss_{m}"} and list(out.features) == [m]
        loss.backward()
        other = [j for j in MS if j != m][0]
        assert model.encoders[other].weight.grad is None          # only m's encoder and the head
        meth.after_backward(model, out, b, state(phase=m))
        opt.step()
        return out.features[m].detach().mean(0)

    x_v = step("visual")
    # P_audio now removes the visual batch-mean direction; P_visual is still I
    assert torch.allclose(meth.P["audio"] @ x_v, torch.zeros(2), atol=1e-5)
    assert torch.equal(meth.P["visual"], torch.eye(2))
    w0 = model.fusion.fc.weight.detach().clone()
    step("audio")
    dw = model.fusion.fc.weight.detach() - w0
    assert dw.abs().max() > 0                                   # the head did move ...
    assert torch.allclose(dw @ x_v, torch.zeros(2), atol=1e-5)  # ... but not on the visual direction
    # without projection the same step does change the visual outputs
    plain = Tiny(SharedHead)
    pm = make(MLA, "mla", project=False)
    pm.setup(plain)
    out = pm.forward(plain, b, state(phase="audio"))
    pm.loss(out, b, state(phase="audio"))[0].backward()
    assert (plain.fusion.fc.weight.grad @ x_v).abs().max() > 1e-4


def test_mla_prediction_is_entropy_weighted():
    model = Tiny(SharedHead)
    meth = make(MLA, "mla")
    meth.setup(model)
    b = batch(4)
    out = meth.predict(model, b)
    lam = entropy_weights(out.logits)
    assert torch.allclose(out.fused, lam["audio"][:, None] * out.logits["audio"]
                          + lam["visual"][:, None] * out.logits["visual"])
    official = make(MLA, "mla", fusion_test="entropy_batch").predict(model, b)
    lam = batch_entropy_weights(official.logits)
    assert torch.allclose(official.fused, lam["audio"][:, None] * official.logits["audio"]
                          + lam["visual"][:, None] * official.logits["visual"])
    assert not torch.allclose(official.fused, out.fused)
    mean = make(MLA, "mla", fusion_test="mean").predict(model, b)
    assert torch.allclose(mean.fused, (mean.logits["audio"] + mean.logits["visual"]) / 2)


def test_agm_clips_the_whole_gradient_when_a_head_weight_gradient_leaves_the_bound():
    model = Tiny(ConcatFusion)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model.fusion.fc.weight.grad[0, 0] = 3.0          # outside [-1, 1]
    model.encoders["audio"].weight.grad[0, 0] = 4.0  # total norm sqrt(9 + 16) = 5
    assert bool(clip_when_head_leaves(model, 1.0))
    assert float(model.fusion.fc.weight.grad[0, 0]) == pytest.approx(0.6, abs=1e-6)      # 3 / 5
    assert float(model.encoders["audio"].weight.grad[0, 0]) == pytest.approx(0.8, abs=1e-6)
    # the head inside the bound: nothing changes, however large the encoder's gradient
    model.fusion.fc.weight.grad[0, 0] = -0.5
    model.encoders["audio"].weight.grad[0, 0] = 40.0
    assert not bool(clip_when_head_leaves(model, 1.0))
    assert float(model.encoders["audio"].weight.grad[0, 0]) == 40.0
    assert float(model.fusion.fc.weight.grad[0, 0]) == -0.5


def test_mla_by_default_alternates_without_projection_as_the_official_code_runs():
    model = Tiny(SharedHead)
    meth = make(MLA, "mla")
    meth.setup(model)
    b = batch(4)
    for m in ("visual", "audio"):
        model.zero_grad(set_to_none=True)
        out = meth.forward(model, b, state(phase=m))
        loss, _ = meth.loss(out, b, state(phase=m))
        loss.backward()
        plain = model.fusion.fc.weight.grad.clone()
        meth.after_backward(model, out, b, state(phase=m))
        assert torch.equal(model.fusion.fc.weight.grad, plain)          # the head's gradient as it was
    assert all(torch.equal(P, torch.eye(2)) for P in meth.P.values()) and meth.on_epoch_end(state()) == {}


def test_a_step_gradscaler_skips_counts_no_clip_and_protects_no_direction():
    """fp16: a skipped step (st.found_inf > 0; inf gradients) fires AGM's clip guard, and MLA's
    projector would learn a direction the head never trained on: neither may count."""
    model = Tiny(ConcatFusion)
    meth = make(AGM, "agm")
    b = batch(4)
    for found_inf in (1.0, 0.0):
        st = state()
        st.found_inf = torch.tensor(found_inf)
        model.zero_grad(set_to_none=True)
        out = meth.forward(model, b, st)
        meth.loss(out, b, st)[0].backward()
        model.fusion.fc.weight.grad[0, 0] = math.inf if found_inf else 3.0      # the guard fires either way
        meth.after_backward(model, out, b, st)
    assert meth.on_epoch_end(st)["agm_clip_frac"] == 0.5                      # 1 of the 2 batches
    model = Tiny(SharedHead)
    mla = make(MLA, "mla", gamma=1e-9, project=True)
    mla.setup(model)
    st = state(phase="visual")
    st.found_inf = torch.tensor(1.0)
    out = mla.forward(model, b, st)
    mla.loss(out, b, st)[0].backward()
    mla.after_backward(model, out, b, st)
    assert torch.equal(mla.P["audio"], torch.eye(2))                        # skipped: P unchanged
    st.found_inf = torch.tensor(0.0)
    mla.after_backward(model, out, b, st)
    assert torch.allclose(mla.P["audio"] @ out.features["visual"].detach().mean(0), torch.zeros(2), atol=1e-5)


def test_table2_runs_agm_with_the_official_scripts_values_per_dataset():
    """CREMA-D's script clips the exponent at 10, the AVE script not at all; KS has no official
    script, so the CREMA-D values stand."""
    from pathlib import Path

    from raygap.grid import load_grid

    grid = load_grid(Path(__file__).resolve().parent.parent / "grids" / "table2.yaml")
    clips = {t.column["data.name"]: t.config.method.clip for t in grid.trials if t.label == "AGM"}
    assert clips == {"cremad": 10.0, "ave": None, "ks": 10.0}
