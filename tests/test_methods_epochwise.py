"""Epoch-wise baselines of Table II: G-Blending (weights from the overfitting-to-generalization
behaviour of each branch), PMR (prototypes, prototype logits, the weaker modality's extra term)
and D&R (k-means purity gap, soft re-initialization toward the initial weights)."""
import math
import types

import numpy as np
import pytest
import torch

from raygap.config import resolve
from raygap.data.base import ModalitySpec
from raygap.methods.base import MethodContext
from raygap.methods.dnr import DnR, cluster_purity, purity, reinit_weight, soft_reinit
from raygap.methods.gblending import GBlending, blend_weights
from raygap.methods.pmr import PMR, boost_coefficients, prototype_logits, stratified_subset
from raygap.models import build_model
from raygap.models.net import ModelOutput

LN2, LN3 = math.log(2.0), math.log(3.0)
D = math.log(8 / 7)    # CE of logits [0, ln 7] for label 1
LN7 = math.log(7.0)
MODS = ["audio", "visual"]


def make(name, n_train=6, num_classes=2, **method):
    cfg = resolve({"method": {"name": name, **method}})
    ctx = MethodContext(list(MODS), num_classes, n_train, cfg, torch.device("cpu"))
    cls = {"gblending": GBlending, "pmr": PMR, "dnr": DnR}[name]
    return cls(cfg.params("method"), ctx)


# ----------------------------------------------------------------------------- G-Blending
def test_gblending_weights_two_estimates_by_hand():
    m0 = {"fused": (2.0, 2.0), "audio": (2.0, 2.0), "visual": (2.0, 2.0)}
    # fused:  O 0 -> 0.5, dG = 0.5, dO = 0.5 -> 0.5/0.25 = 2
    # audio:  O 0 -> 0.2, dG = 0.6, dO = 0.2 -> 0.6/0.04 = 15
    # visual: O 0 -> 0.1, dG = 0.1, dO = 0.1 -> 0.1/0.01 = 10      sum 27
    m1 = {"fused": (1.0, 1.5), "audio": (1.2, 1.4), "visual": (1.8, 1.9)}
    w, det = blend_weights(m0, m1)
    assert w == pytest.approx({"fused": 2 / 27, "audio": 15 / 27, "visual": 10 / 27})
    assert det["dG_audio"] == pytest.approx(0.6) and det["dO_audio"] == pytest.approx(0.2)
    # second estimate, from m1 to m2:
    # fused:  O 0.5 -> 0.8, dG = 1.5 - 1.3 = 0.2, dO = 0.3 -> 0.2/0.09 = 2.2222
    # audio:  O 0.2 -> 0.9, dG = 1.4 - 1.5 = -0.1 -> 0 (its validation loss rose)
    # visual: O 0.1 -> 0.2, dG = 0.2, dO = 0.1 -> 0.2/0.01 = 20      w = [0.1, 0, 0.9]
    m2 = {"fused": (0.5, 1.3), "audio": (0.6, 1.5), "visual": (1.5, 1.7)}
    w, _ = blend_weights(m1, m2)
    assert w == pytest.approx({"fused": 0.1, "audio": 0.0, "visual": 0.9})
    # abs: audio gets |-0.1| / 0.7^2 = 0.2040816; sum 22.4263039 -> fused 0.0990913
    w, _ = blend_weights(m1, m2, negative_gain="abs")
    assert w["audio"] == pytest.approx(0.2040816 / 22.4263039, rel=1e-6)
    assert w["fused"] == pytest.approx(2.2222222 / 22.4263039, rel=1e-6)
    # no branch gained on validation: no estimate (the method keeps its weights)
    assert blend_weights(m2, m2)[0] is None


def _pred(rows: dict[str, list[list[float]]]):
    n = len(next(iter(rows.values())))
    return {**{k: np.array(v, dtype=np.float32) for k, v in rows.items()},
            "label": np.ones(n, dtype=np.int64), "index": np.arange(n)}


def test_gblending_hook_uniform_then_estimate_with_the_floor_and_weighted_loss():
    m = make("gblending", super_epoch=5, eps=0.01)
    z, l3, l7 = [0.0, 0.0], [0.0, LN3], [0.0, LN7]
    calls = []
    splits = {  # every sample has label 1
        0: {"train": dict(fused=[z], audio=[z], visual=[z]), "val": dict(fused=[z], audio=[z], visual=[z])},
        5: {"train": dict(fused=[l7], audio=[l3], visual=[l7]), "val": dict(fused=[l3], audio=[l3], visual=[z])},
    }

    def st_at(epoch):
        def predict(split, indices=None, features=False):
            calls.append((epoch, split))
            return _pred(splits[epoch][split])
        return types.SimpleNamespace(epoch=epoch, predict_split=predict, train_indices=None, log=lambda s: None)

    m.on_epoch_start(st_at(0))
    assert m.weights == pytest.approx({"fused": 1 / 3, "audio": 1 / 3, "visual": 1 / 3})   # before any estimate
    m.on_epoch_start(types.SimpleNamespace(epoch=3))          # not a boundary: no evaluation at all
    assert calls == [(0, "train"), (0, "val")]
    m.on_epoch_start(st_at(5))
    # fused:  LT = ln(8/7), LV = ln(4/3): O = ln(7/6) = 0.1541507, dG = ln2 - ln(4/3) = 0.4054651,
    #         dO^2 = 0.0237624 (above the floor 0.01) -> 17.063283
    # audio:  LT = LV = ln(4/3): O = 0, dO = 0 -> floor 0.01 -> 0.4054651 / 0.01 = 40.546511
    # visual: LV = ln 2 = start: dG = 0 -> 0                  -> w = [0.2961872, 0.7038128, 0]
    assert m.weights == pytest.approx({"fused": 0.2961872, "audio": 0.7038128, "visual": 0.0}, abs=1e-6)
    rec = m.on_epoch_end(None)
    assert rec["gb_LT_fused"] == pytest.approx(D) and rec["gb_LV_visual"] == pytest.approx(LN2)
    assert rec["w_audio"] == pytest.approx(0.7038128, abs=1e-6) and rec["gb_estimates"] == 1
    # L = sum_k w_k CE_k with w = [0.1, 0, 0.9]: fused [0, ln3] -> ln(4/3), audio [0, 0] -> ln 2,
    # visual [ln3, 0] -> ln 4:  0.1*0.2876821 + 0*0.6931472 + 0.9*1.3862944 = 1.2764331
    m.weights = {"fused": 0.1, "audio": 0.0, "visual": 0.9}
    out = ModelOutput({}, {"audio": torch.tensor([[0.0, 0.0]]), "visual": torch.tensor([[LN3, 0.0]])},
                      torch.tensor([[0.0, LN3]]))
    loss, logs = m.loss(out, {"label": torch.tensor([1])}, None)
    assert loss.item() == pytest.approx(1.2764331, abs=1e-6)
    assert logs["loss_visual"].item() == pytest.approx(math.log(4.0), abs=1e-6)
    # state round trip: a fresh method continues with the same weights and the same reference point
    m2 = make("gblending", super_epoch=5, eps=0.01)
    m2.load_state_dict(m.state_dict())
    assert m2.weights == m.weights and m2.last == m.last and m2.n_estimates == 1



# ----------------------------------------------------------------------------- PMR
def test_pmr_prototypes_are_class_means_with_the_official_ema_schedule():
    m = make("pmr", momentum=0.5)
    y = np.array([0, 0, 1, 1])
    fa = np.array([[0, 0], [2, 0], [3, 4], [3, 0]], dtype=float)      # means [1, 0] and [3, 2]
    m.update_prototypes({"audio": fa, "visual": fa}, y)
    assert torch.allclose(m.protos["audio"], torch.tensor([[1.0, 0.0], [3.0, 2.0]]))
    m.update_prototypes({"audio": fa + 2, "visual": fa}, y)          # second computation: no EMA (official)
    assert torch.allclose(m.protos["audio"], torch.tensor([[3.0, 2.0], [5.0, 4.0]]))
    m.update_prototypes({"audio": fa + 4, "visual": fa}, y)          # third: 0.5*[5,4] + 0.5*[3,2] = [4,3]
    assert torch.allclose(m.protos["audio"], torch.tensor([[4.0, 3.0], [6.0, 5.0]]))
    # state round trip
    m2 = make("pmr", momentum=0.5)
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2.protos["audio"], m.protos["audio"]) and m2.n_computed == 3


def test_pmr_prototype_logits_are_minus_euclidean_distance():
    # f = [0, 4]; c0 = [0, 0] at distance 4, c1 = [3, 4] at distance 3 -> [-4, -3] (squared would be [-16, -9])
    lg = prototype_logits(torch.tensor([[0.0, 4.0]]), torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    assert torch.allclose(lg, torch.tensor([[-4.0, -3.0]]))
    # a class without a prototype is never predicted
    lg = prototype_logits(torch.tensor([[0.0, 4.0]]), torch.zeros(2, 2), torch.tensor([True, False]))
    assert lg[0, 1] == float("-inf") and torch.isfinite(lg[0, 0])
    assert boost_coefficients({"a": 1.0, "v": 1.0}, 2.0) == {"a": 0.0, "v": 0.0}   # ratio 1: nothing


def _pmr_batch(audio_sep: float, visual_sep: float):
    """Two samples, labels [0, 1]; each modality's features sit on its own prototypes, which are
    audio_sep / visual_sep apart, so the true-class prototype probability is sigmoid(sep)."""
    fa = torch.tensor([[0.0, 0.0], [audio_sep * 0.6, audio_sep * 0.8]], requires_grad=True)
    fv = torch.tensor([[0.0, 0.0], [visual_sep, 0.0]], requires_grad=True)
    protos = {"audio": fa.detach().clone(), "visual": fv.detach().clone()}
    out = ModelOutput({"audio": fa, "visual": fv}, {}, torch.zeros(2, 2))
    return out, {"label": torch.tensor([0, 1])}, protos


def test_pmr_extra_term_goes_to_the_weaker_modality_by_hand():
    m = make("pmr", alpha=2.0)
    out, batch, protos = _pmr_batch(5.0, 1.0)
    m.protos, m.valid = protos, {k: torch.ones(2, dtype=torch.bool) for k in protos}
    # audio prototype logits [0, -5] and [-5, 0]: true prob sigmoid(5) = 0.9933071 each, s_a = 1.9866143
    # visual [0, -1] and [-1, 0]: sigmoid(1) = 0.7310586 each, s_v = 1.4621172; ratio 1.3587244 > 1
    # -> visual is weaker: L = CE_f + 2 * CE_proto_v = ln 2 + 2 * ln(1 + e^-1) = 0.6931472 + 0.6265234
    loss, logs = m.loss(out, batch, types.SimpleNamespace(epoch=0))
    assert loss.item() == pytest.approx(1.3196706, abs=1e-6)
    assert logs["ratio_audio_visual"].item() == pytest.approx(1.3587244, abs=1e-6)
    assert logs["proto_prob_visual"].item() == pytest.approx(0.7310586, abs=1e-6)
    assert logs["boost_visual"].item() == 1.0 and logs["boost_audio"].item() == 0.0
    loss.backward()
    assert out.features["visual"].grad.abs().sum() > 0          # the term reaches the weaker encoder only
    assert torch.equal(out.features["audio"].grad, torch.zeros(2, 2))   # the dominant one: 0 x its term
    # swapped strengths: audio is weaker, its CE_proto = ln(1 + e^-1) gets the coefficient instead
    out, batch, protos = _pmr_batch(1.0, 5.0)
    m.protos = protos
    loss, logs = m.loss(out, batch, types.SimpleNamespace(epoch=70))   # end_epoch 70 is inclusive
    assert loss.item() == pytest.approx(1.3196706, abs=1e-6) and logs["boost_audio"].item() == 1.0
    # after the modulation window: CE of the fused output only
    loss, _ = m.loss(out, batch, types.SimpleNamespace(epoch=71))
    assert loss.item() == pytest.approx(LN2, abs=1e-6)
    # the dominant modality's true class without a prototype (its CE is infinite): 0 x it stays 0.
    # audio: class 1 has no prototype -> sample 0 prob 1, sample 1 prob 0: s_a = 1. visual: the
    # prototypes swapped -> true-class prob sigmoid(-1) = 0.2689414 each: s_v = 0.5378828 < s_a.
    # L = ln 2 + 2 * ln(1 + e) = 0.6931472 + 2 * 1.3132617 = 3.3196706
    out, batch, protos = _pmr_batch(5.0, 1.0)
    m.protos = {"audio": protos["audio"], "visual": protos["visual"].flip(0)}
    m.valid = {"audio": torch.tensor([True, False]), "visual": torch.ones(2, dtype=torch.bool)}
    loss, logs = m.loss(out, batch, types.SimpleNamespace(epoch=0))
    assert logs["boost_audio"].item() == 0.0 and logs["boost_visual"].item() == 1.0
    assert loss.item() == pytest.approx(3.3196706, abs=3e-6)                 # (float32)
    loss.backward()
    assert torch.isfinite(out.features["audio"].grad).all() and torch.isfinite(out.features["visual"].grad).all()


def test_pmr_epoch_start_averages_a_stratified_subset():
    # 8 class-0 samples, 2 class-1 samples; fraction 0.5 -> ceil(4) + ceil(1) = 5 samples
    labels = torch.tensor([0] * 8 + [1] * 2)
    feats = np.stack([np.arange(10.0), np.zeros(10)], 1)
    feats[8:] = [5.0, 5.0]                                   # class 1: both at [5, 5]
    seen = []

    def predict(split, indices=None, features=False):
        seen.append(np.asarray(indices))
        return {"feat_audio": feats[indices], "feat_visual": feats[indices], "label": labels.numpy()[indices],
                "index": np.asarray(indices)}
    st = types.SimpleNamespace(epoch=0, data=types.SimpleNamespace(train=types.SimpleNamespace(labels=labels)),
                               train_indices=None, predict_split=predict)
    m = make("pmr", n_train=10, proto_fraction=0.5)
    m.on_epoch_start(st)
    idx = seen[0]
    assert len(idx) == 5 and (labels.numpy()[idx] == 0).sum() == 4
    c0 = feats[idx][labels.numpy()[idx] == 0].mean(0)
    assert torch.allclose(m.protos["audio"], torch.tensor(np.stack([c0, [5.0, 5.0]]), dtype=torch.float32))
    # the same (seed, epoch) draws the same subset; every class is represented
    r = stratified_subset(np.array([0, 0, 0, 1]), 0.1, np.random.default_rng(0))
    assert sorted(np.array([0, 0, 0, 1])[r]) == [0, 1]


# ----------------------------------------------------------------------------- D&R
def test_purity_by_hand():
    # cluster 0 holds labels [0, 0, 1] -> 2 hits, cluster 1 holds [1, 1, 2] -> 2 hits: 4/6
    assert purity(np.array([0, 0, 1, 1, 1, 2]), np.array([0, 0, 0, 1, 1, 1])) == pytest.approx(4 / 6)
    x = np.array([[0.0, 0.0], [0.0, 0.1], [10.0, 10.0], [10.0, 10.1]])
    assert cluster_purity(x, np.array([0, 0, 1, 1]), 2) == 1.0      # two blobs, one class each
    assert cluster_purity(x, np.array([0, 1, 0, 1]), 2) == 0.5      # labels independent of the blobs


def test_reinit_weight_and_the_move_toward_init_is_exactly_w():
    # tanh(3 * 0.1) = 0.2913126; official |gap| re-inits for a negative gap too, signed does not
    assert reinit_weight(0.1, 3.0) == pytest.approx(0.2913126, abs=1e-7)
    assert reinit_weight(-0.1, 3.0, "abs") == pytest.approx(0.2913126, abs=1e-7)
    assert reinit_weight(-0.1, 3.0, "signed") == 0.0 and reinit_weight(0.0, 3.0, "signed") == 0.0
    lin = torch.nn.Linear(2, 1)
    init = {n: torch.ones_like(p) for n, p in lin.named_parameters()}
    with torch.no_grad():
        for p in lin.parameters():
            p.fill_(3.0)
    soft_reinit(lin, init, 0.25)                  # 0.25 * 1 + 0.75 * 3 = 2.5
    assert all(torch.allclose(p, torch.full_like(p, 2.5)) for p in lin.parameters())


def _dnr_model():
    torch.manual_seed(0)
    cfg = resolve({"model": {"backbone": "small", "width": 4}})
    return build_model([ModalitySpec("audio", "spectrogram", (1, 8, 8)),
                        ModalitySpec("visual", "frames", (1, 1, 8, 8))], 2, cfg.model)


def _dnr_state(model, epoch, train_labels_audio, val_labels_audio):
    """Both modalities' features: two separated blobs; the labels of each split set the purities."""
    blobs = np.array([[0.0, 0.0], [0.0, 0.1], [10.0, 10.0], [10.0, 10.1]])
    calls = []

    def predict(split, indices=None, features=False):
        calls.append(split)
        ya = train_labels_audio if split == "train" else val_labels_audio
        return {"feat_audio": blobs, "feat_visual": blobs, "label": np.array(ya)}
    return types.SimpleNamespace(epoch=epoch, model=model, predict_split=predict, train_indices=None,
                                 log=lambda s: None, optimizer="old", new_optimizer=lambda: "new"), calls


def test_dnr_hook_moves_each_encoder_toward_init_by_its_own_w():
    model = _dnr_model()
    m = make("dnr", every=2, max_reinits=1)
    m.setup(model)
    with torch.no_grad():                         # training has moved the weights away from init
        for p in model.parameters():
            p.add_(0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bn = {n: b.clone() for n, b in model.named_buffers()}
    st, calls = _dnr_state(model, 1, [0, 0, 1, 1], [0, 1, 0, 1])
    m.on_epoch_start(st)                          # epoch 1: the previous epoch 0 is never a re-init point
    st.epoch = 2
    m.on_epoch_start(st)                          # previous epoch 1 is no multiple of 2
    assert calls == []
    # start of epoch 3 (after epoch 2): audio purity train 1.0, val 0.5 -> gap 0.5, w = tanh(1.5) = 0.9051483;
    # both splits' labels are what the stub returns, so visual sees the same purities -> the same w.
    st.epoch = 3
    m.on_epoch_start(st)
    w = 0.9051483
    for n, p in model.named_parameters():
        if n.startswith("encoders."):
            mod, rest = n.split(".")[1], n.split(".", 2)[2]
            expect = w * m.init[mod][rest] + (1 - w) * before[n]      # = before - 0.5 w exactly
            assert torch.allclose(p, expect, atol=1e-6), n
            assert torch.allclose(p, before[n] - 0.5 * w, atol=1e-5), n
        else:
            assert torch.equal(p, before[n]), n                         # the fusion head is left alone
    assert all(torch.equal(b, bn[n]) for n, b in model.named_buffers())   # BN statistics untouched
    rec = m.on_epoch_end(st)
    assert rec["dnr_w_audio"] == pytest.approx(w, abs=1e-6) and rec["dnr_gap_audio"] == pytest.approx(0.5)
    assert rec["dnr_purity_train_audio"] == 1.0 and rec["dnr_purity_val_audio"] == 0.5
    assert st.optimizer == "old"                  # official: the optimizer is kept
    # max_reinits = 1: the next due point does nothing
    st.epoch = 5
    calls.clear()
    m.on_epoch_start(st)
    assert calls == [] and m.n_reinits == 1


def test_dnr_signed_gap_below_zero_leaves_the_encoders_alone():
    model = _dnr_model()
    m = make("dnr", every=1, gap="signed", reset_optimizer=True)
    m.setup(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # train purity 0.5, val purity 1.0: gap -0.5 -> signed w = 0 (abs would give tanh(1.5))
    st, _ = _dnr_state(model, 2, [0, 1, 0, 1], [0, 0, 1, 1])
    m.on_epoch_start(st)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert m.on_epoch_end(st)["dnr_w_audio"] == 0.0 and st.optimizer == "new"


def test_dnr_state_round_trip_keeps_the_initial_weights():
    model = _dnr_model()
    m = make("dnr")
    m.setup(model)
    m.n_reinits = 2
    s = m.state_dict()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)                            # later changes to the model do not leak into the saved init
    m2 = make("dnr")
    m2.load_state_dict(s)
    assert m2.n_reinits == 2 and set(m2.init) == {"audio", "visual"}
    for mod in MODS:
        for n, p in model.encoders[mod].named_parameters():
            assert torch.allclose(m2.init[mod][n], p.detach() - 1.0, atol=1e-6)
