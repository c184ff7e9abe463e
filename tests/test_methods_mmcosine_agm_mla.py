"""MMCosine (bounded cosine logits), AGM (Shapley responses, coefficients, gradient hooks) and MLA
(alternating steps, the projector, entropy-weighted fusion), on tiny models with hand-computed
numbers, and each end to end through the one-trial engine with a resume."""
import math

import pytest
import torch
import torch.nn as nn

from raygap.config import resolve
from raygap.errors import ConfigError
from raygap.methods.agm import AGM, agm_coefficients, clip_when_head_leaves, response_scores, score_ratios, shapley_responses
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
def test_shapley_responses_by_hand():
    # f(a, v) = (a + v)^2 at a = 1, v = 2: f(a,v) 9, f(0,v) 4, f(a,0) 1, f(0,0) 0
    # phi_a = 1/2 [(9 - 4) + (1 - 0)] = 3;  phi_v = 1/2 [(9 - 1) + (4 - 0)] = 6
    head = lambda fs: (fs["a"] + fs["v"]) ** 2   # noqa: E731
    r = shapley_responses(head, {"a": torch.tensor([[1.0]]), "v": torch.tensor([[2.0]])})
    assert r["a"].item() == pytest.approx(3.0) and r["v"].item() == pytest.approx(6.0)
    # three modalities, f = a*b*c + a at (1, 2, 3): a gets its own term 1 plus a third of abc = 6
    head3 = lambda fs: fs["a"] * fs["b"] * fs["c"] + fs["a"]   # noqa: E731
    r = shapley_responses(head3, {"a": torch.tensor([[1.0]]), "b": torch.tensor([[2.0]]), "c": torch.tensor([[3.0]])})
    assert [r[m].item() for m in "abc"] == pytest.approx([3.0, 2.0, 2.0])


def test_shapley_response_of_a_linear_concat_head_is_its_share_without_bias():
    model = Tiny(ConcatFusion)
    with torch.no_grad():
        model.fusion.fc.bias.copy_(torch.tensor([5.0, -3.0]))
    feats = model.encode(batch())
    r = shapley_responses(lambda fs: model.head(fs).fused, feats)
    for m in MS:
        assert torch.allclose(r[m], feats[m] @ model.fusion.weight_of(m).t(), atol=1e-6)


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


def hand_scores(model, out, y) -> dict[str, float]:
    """L_m = CE(W_m x_m, y): the responses of a linear concatenation head, by hand."""
    W = model.fusion.fc.weight.detach()
    d = out.features["audio"].shape[1]
    parts = {"audio": W[:, :d], "visual": W[:, d:]}
    return {m: float(nn.functional.cross_entropy(out.features[m].detach() @ parts[m].T, y)) for m in MS}


def test_agm_scales_each_encoders_gradient_by_its_coefficient_and_keeps_running_means():
    b = batch(6)
    ref = Tiny(ConcatFusion)
    out = ref(b)
    nn.functional.cross_entropy(out.fused, b["label"]).backward()
    model = Tiny(ConcatFusion)                       # same seed: same weights
    meth = make(AGM, "agm", alpha=1.5)
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
    late = make(AGM, "agm", modulation_ends=2)
    late.loss(late.forward(model, b), b, state(epoch=3))
    assert late.coeff == {"audio": 1.0, "visual": 1.0}
    last = make(AGM, "agm", modulation_ends=3)
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
