"""Greedy (Wu et al., ICML 2022): stage-by-stage encoding, the MMTM gate, the bypass through
running means, conditional learning speeds, the curation decision and a checkpoint round trip."""
import io
import math
import types

import pytest
import torch

from raygap.config import resolve
from raygap.data.base import ModalitySpec
from raygap.errors import ConfigError
from raygap import trial
from raygap.methods.base import MethodContext, TrainState
from raygap.methods.greedy import Greedy, curation_target, speed_gap, speed_ratio, staged_encode, _channels_after
from raygap.models import build_model
from raygap.models.mmtm import MMTM

SPECS = [ModalitySpec("audio", "spectrogram", (1, 16, 12)), ModalitySpec("visual", "frames", (2, 3, 16, 16))]
sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731


def make(modalities=("audio", "visual"), **method):
    cfg = resolve({"method": {"name": "greedy", **method}, "model": {"backbone": "small", "width": 4}})
    ctx = MethodContext(list(modalities), 3, 8, cfg, torch.device("cpu"))
    return Greedy(cfg.params("method"), ctx), cfg


def model_and_method(seed=0, **method):
    torch.manual_seed(seed)
    m, cfg = make(**method)
    model = build_model(SPECS, 3, cfg.model)
    m.setup(model)
    return model, m


def batch(seed=1, n=4):
    g = torch.Generator().manual_seed(seed)
    return {"audio": torch.randn(n, 1, 16, 12, generator=g), "visual": torch.randn(n, 2, 3, 16, 16, generator=g),
            "label": torch.tensor([0, 1, 2, 0][:n]), "index": torch.arange(n)}


def hand_mmtm(double_gate=False):
    """C_0 = C_1 = 1, ratio 2 -> hidden int(2*2/2) = 2; W_z = I, W_0 = [1, 1], W_1 = [-1, 1], no biases."""
    blk = MMTM(1, 1, ratio=2.0, double_gate=double_gate)
    with torch.no_grad():
        blk.squeeze_fc.weight.copy_(torch.eye(2))
        blk.excite[0].weight.copy_(torch.tensor([[1.0, 1.0]]))
        blk.excite[1].weight.copy_(torch.tensor([[-1.0, 1.0]]))
        for lin in (blk.squeeze_fc, blk.excite[0], blk.excite[1]):
            lin.bias.zero_()
    return blk


def test_staged_encode_without_mmtm_equals_the_encoders():
    torch.manual_seed(0)
    cfg = resolve({"model": {"backbone": "small", "width": 4}})
    model = build_model(SPECS, 3, cfg.model).eval()
    b = batch()
    encs = [model.encoders["audio"], model.encoders["visual"]]
    got = staged_encode(encs, [b["audio"], b["visual"]])
    for e, x, f in zip(encs, [b["audio"], b["visual"]], got):
        assert torch.allclose(f, e(x), atol=1e-6)
    # an identity insert after every child changes nothing either
    ident = {i: (lambda hs, bts: hs) for i in range(4)}
    got2 = staged_encode(encs, [b["audio"], b["visual"]], ident)
    assert all(torch.equal(a, c) for a, c in zip(got, got2))
    # small width 4: blocks of 4, 8, 16, 32 channels
    assert [_channels_after(encs[0].trunk, i) for i in range(4)] == [4, 8, 16, 32]


def test_mmtm_gate_on_a_hand_example():
    blk = hand_mmtm()
    h0 = torch.tensor([[[[1.0, 3.0], [2.0, 2.0]]]])       # s_0 = 2
    h1 = torch.tensor([[[[0.0, -2.0], [-1.0, -1.0]]]])     # s_1 = -1
    out0, out1 = blk([h0, h1], [None, None])
    # z = relu([2, -1]) = [2, 0]; g_0 = sigmoid(2 + 0) = 0.8807971; g_1 = sigmoid(-2 + 0) = 0.1192029
    assert torch.allclose(out0, h0 * 0.8807971, atol=1e-6)
    assert torch.allclose(out1, h1 * 0.1192029, atol=1e-6)
    # MMTM paper's 2 x sigmoid: g_0 = 1.7615942
    out0, _ = hand_mmtm(double_gate=True)([h0, h1], [None, None])
    assert torch.allclose(out0, h0 * 1.7615942, atol=1e-6)
    # frames: a (B*T = 1*2, C, h, w) map is squeezed over T, h, w, and one gate scales both frames:
    # frame means 1 and 3 -> s_0 = 2 as above
    hf = torch.stack([torch.ones(1, 2, 2), 3 * torch.ones(1, 2, 2)])
    outf, _ = blk([hf, h1], [(1, 2), None])
    assert torch.allclose(outf, hf * 0.8807971, atol=1e-6)


@pytest.mark.parametrize("bypass, expected_g0", [("squeeze", sig(1.0)), ("gate", sig(2.0))])
def test_bypass_uses_the_running_means(bypass, expected_g0):
    blk = hand_mmtm()
    # first training forward, s = [2, -1]: running means become s_avg = [2, -1], g_avg_0 = sigmoid(2)
    blk.gates([torch.tensor([[2.0]]), torch.tensor([[-1.0]])], update=True)
    assert blk.avg_squeeze(1).item() == pytest.approx(-1.0) and blk.avg_gate(0).item() == pytest.approx(sig(2.0))
    s0 = torch.tensor([[1.0]])
    s1 = torch.tensor([[3.0]], requires_grad=True)
    g0, g1 = blk.gates([s0, s1], cut=0, bypass=bypass, update=True)
    # without bypass g_0 = sigmoid(1 + 3) = 0.9820138; bypass "squeeze": [s_0, avg s_1] = [1, -1] ->
    # z = [1, 0] -> g_0 = sigmoid(1) = 0.7310586; bypass "gate": g_0 = avg g_0 = sigmoid(2) = 0.8807971
    assert g0.item() == pytest.approx(expected_g0, abs=1e-6)
    assert g1.item() == pytest.approx(sig(-1.0 + 3.0), abs=1e-6)        # the other gate is untouched
    dep = torch.autograd.grad(g0.sum(), s1, allow_unused=True)[0] if g0.requires_grad else None
    assert dep is None or dep.abs().item() == 0.0       # g_0 does not see the current s_1
    # running means are cumulative: s_avg_0 = (1 + 2) / 2 = 1.5, s_avg_1 = (3 - 1) / 2 = 1,
    # g_avg_0 = (sigmoid(4) + sigmoid(2)) / 2 (the un-bypassed gate) = 0.9314055
    assert blk.avg_squeeze(0).item() == pytest.approx(1.5)
    assert blk.avg_squeeze(1).item() == pytest.approx(1.0)
    assert blk.avg_gate(0).item() == pytest.approx((sig(4.0) + sig(2.0)) / 2, abs=1e-6)
    assert int(blk.steps) == 2


def test_conditional_learning_speed_on_hand_numbers():
    p1 = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    p2 = torch.nn.Parameter(torch.tensor([2.0]))
    p3 = torch.nn.Parameter(torch.tensor([3.0]))               # no gradient: counts in ||w||^2 only
    p1.grad, p2.grad = torch.tensor([0.1, 0.2]), torch.tensor([0.3])
    # (0.01 + 0.04 + 0.09) / (1 + 4 + 4) = 0.14 / 9
    assert speed_ratio([p1, p2]) == pytest.approx(0.14 / 9)
    # (0.14) / (9 + 9)
    assert speed_ratio([p1, p2, p3]) == pytest.approx(0.14 / 18)
    # d = log10(1.0 / 0.1) - log10(0.2 / 0.2) = 1
    assert speed_gap([0.1, 0.2], [1.0, 0.2]) == pytest.approx(1.0)
    assert speed_gap([0.1, 0.2], [0.2, 2.0]) == pytest.approx(math.log10(2.0) - 1.0)
    assert speed_gap([0.0, 0.2], [1.0, 0.2]) == 0.0


def _set_grads(params, gmain, gbyp):
    """Every weight 1 (norm^2 = 1), one gradient entry per branch: speed = g^2."""
    main, byp = params
    for k in range(2):
        main[k][0].grad = torch.tensor([gmain[k]])
        byp[k][0].grad = torch.tensor([gbyp[k]])


def test_curation_decision_and_window():
    assert curation_target(0.005, 0.01) is None and curation_target(-0.02, 0.01) == 1
    assert curation_target(0.02, 0.01) == 0
    m, _ = make(window=3, start_epoch=2)
    params = ([[torch.nn.Parameter(torch.ones(1))] for _ in range(2)],
              [[torch.nn.Parameter(torch.ones(1))] for _ in range(2)])
    m.branch_params = lambda model: params
    # main speeds [0.01, 1], bypass [1, 1]: d = log10(1/0.01) - log10(1/1) = 2 > 0.01 -> modality 0
    _set_grads(params, [0.1, 1.0], [1.0, 1.0])
    m.step(None, epoch=1)                      # before start_epoch: speeds accumulate, no window
    assert not m.curating and m.d == pytest.approx(2.0)
    m.step(None, epoch=2)                      # sums now [0.02, 2] and [2, 2]: d = 2 again
    assert m.curating and m.caring == 0 and m.d == pytest.approx(2.0)
    assert m.epoch_log["windows"] == [1, 0]
    _set_grads(params, [1.0, 0.1], [1.0, 1.0])  # would flip d, but inside the window nothing accumulates
    for _ in range(3):
        assert m.curating
        m.step(None, epoch=2)
    assert not m.curating and m.m_main == pytest.approx([0.02, 2.0])
    assert m.epoch_log["curation_steps"] == 3
    # one normal step: sums main [1.02, 2.01], bypass [3, 3]: d = log10(3/1.02) - log10(3/2.01) = 0.2949...
    m.step(None, epoch=2)
    assert m.d == pytest.approx(math.log10(2.01 / 1.02)) and m.caring == 0
    # a branch whose main path now learns far faster: d < 0 -> modality 1
    _set_grads(params, [10.0, 0.0], [1.0, 10.0])
    for _ in range(3):
        m.step(None, epoch=2)
    # main [101.02, 2.01], bypass [4, 103]: d = log10(4/101.02) - log10(103/2.01) < 0
    m.step(None, epoch=2)
    assert m.d == pytest.approx(math.log10(4 / 101.02) - math.log10(103 / 2.01))
    assert m.curating and m.caring == 1


def test_forward_applies_the_bypass_to_the_cared_modality_only():
    model, m = model_and_method(mmtm_after=[-2, -1])
    assert sorted(model.greedy_mmtm) == ["after2", "after3"]
    b = batch()
    st = types.SimpleNamespace(epoch=0)
    model.train()
    m.forward(model, b, st)                    # fills the running means
    model.eval()
    normal = m.predict(model, b)
    m.curating, m.caring = True, 0
    cut = m.forward(model, b, st)
    assert not torch.allclose(cut.features["audio"], normal.features["audio"])
    # (the visual features change too: the audio map fed to the later MMTM block changed)
    # the cared modality's features do not depend on the other modality's current input
    b2 = dict(b, visual=b["visual"] + 1.0)
    cut2 = m.forward(model, b2, st)
    assert torch.allclose(cut2.features["audio"], cut.features["audio"], atol=1e-6)
    # MMTM parameters are part of the model (so on the optimizer and in the checkpoint)
    names = dict(model.named_parameters())
    assert "greedy_mmtm.after3.squeeze_fc.weight" in names
    assert "greedy_mmtm.after3.avg_squeeze_0" in model.state_dict()


def test_two_modalities_only_and_bad_positions():
    # declared once (registration meta max_modalities=2), checked when the config is loaded
    with pytest.raises(ConfigError, match="needs exactly 2 modalities; this trial has 3"):
        resolve({"method": {"name": "greedy"}, "data": {"name": "avdigits", "text": True}})
    with pytest.raises(ConfigError, match="does not exist"):
        model_and_method(mmtm_after=[4])
    with pytest.raises(ConfigError, match="twice"):
        model_and_method(mmtm_after=[3, -1])


def _train_steps(model, m, opt, n, epoch=2):
    for i in range(n):
        model.train()
        b = batch(seed=10 + i)
        out = m.forward(model, b, types.SimpleNamespace(epoch=epoch))
        loss, _ = m.loss(out, b, None)
        opt.zero_grad()
        loss.backward()
        m.after_backward(model, out, b, types.SimpleNamespace(epoch=epoch, found_inf=None))
        opt.step()


def test_state_dict_round_trip_continues_exactly():
    model, m = model_and_method(window=2, start_epoch=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    _train_steps(model, m, opt, 4)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "method": m.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=False)
    model2, m2 = model_and_method(seed=5, window=2, start_epoch=0)
    model2.load_state_dict(ck["model"])
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.05)
    opt2.load_state_dict(ck["opt"])
    m2.load_state_dict(ck["method"])
    assert m2.state_dict() == m.state_dict()
    assert int(model2.greedy_mmtm["after3"].steps) == 4
    _train_steps(model, m, opt, 3)
    _train_steps(model2, m2, opt2, 3)
    assert m2.state_dict() == m.state_dict()
    for (k, a), (_, c) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert torch.equal(a, c), k


def test_single_block_bypass_leaves_the_other_modality_alone():
    model, m = model_and_method(mmtm_after=[-1])
    b = batch()
    model.train()
    m.forward(model, b, types.SimpleNamespace(epoch=0))
    model.eval()
    normal = m.predict(model, b)
    m.curating, m.caring = True, 1
    cut = m.forward(model, b, types.SimpleNamespace(epoch=0))
    assert torch.allclose(cut.features["audio"], normal.features["audio"], atol=1e-6)
    assert not torch.allclose(cut.features["visual"], normal.features["visual"])


def _scaled_steps(**method):
    """Greedy through ``trial.train_step`` with a real GradScaler (enabled, on the CPU) and SGD.
    ``step(i, inf=True)`` makes that backward's gradient of one audio weight infinite (a hook),
    as an fp16 overflow does: GradScaler must skip the step."""
    model, m = model_and_method(**method)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    poison = [False]
    model.encoders["audio"].trunk[0][0].weight.register_hook(lambda g: g * math.inf if poison[0] else g)
    st = TrainState(2, 3, model, opt, None, None, torch.device("cpu"), None)

    def step(i, inf=False):
        poison[0] = inf
        model.train()
        trial.train_step(model, m, batch(seed=10 + i), st, opt, scaler, "none", torch.device("cpu"), {})
    return model, m, step


def test_a_step_gradscaler_skips_adds_no_speed():
    """fp16: the infinite gradients of a skipped step used to enter the never-reset speed sums,
    the gap became NaN / -inf for the rest of the run and every decision cared for one modality."""
    model, m, step = _scaled_steps(start_epoch=0, epsilon=100.0)     # no window: every step decides
    step(0)
    step(1)
    before, weights = m.state_dict(), {k: v.clone() for k, v in model.state_dict().items()}
    assert 0 < min(m.m_main + m.m_bypass) and max(m.m_main + m.m_bypass) < math.inf
    step(2, inf=True)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items()
               if "weight" in k and "avg" not in k)                # the scaler did skip it
    assert m.state_dict() == before                               # nothing added, nothing decided, not counted
    for i in range(3, 6):
        step(i)
    assert all(math.isfinite(v) and v > 0 for v in m.m_main + m.m_bypass) and math.isfinite(m.d)
    assert m.epoch_log["steps"] == 5 and m.epoch_log["windows"] == [0, 0]


def test_a_skipped_step_does_not_advance_a_curation_window():
    model, m, step = _scaled_steps(start_epoch=0, window=2)
    m.curating, m.caring, m.cur_step = True, 0, 0
    step(0, inf=True)
    assert m.curating and m.cur_step == 0 and m.epoch_log == {"curation_steps": 0, "windows": [0, 0], "steps": 0}
    step(1)
    step(2)                                                       # two updates for modality 0: the window ends
    assert not m.curating and m.epoch_log["curation_steps"] == 2 and m.epoch_log["steps"] == 2
