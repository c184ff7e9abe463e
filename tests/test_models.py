import torch

from raygap.config import resolve
from raygap.data.base import ModalitySpec
from raygap.models import build_model
from raygap.models.backbones import resnet18, small

SPECS = [ModalitySpec("audio", "spectrogram", (1, 40, 32)), ModalitySpec("visual", "frames", (2, 3, 32, 32))]


def _batch(b=5):
    g = torch.Generator().manual_seed(0)
    return {"audio": torch.randn(b, 1, 40, 32, generator=g), "visual": torch.randn(b, 2, 3, 32, 32, generator=g)}


def test_per_modality_logits_sum_to_fused_logits():
    cfg = resolve({"model": {"backbone": "small", "width": 8}})
    torch.manual_seed(0)
    model = build_model(SPECS, 6, cfg.model).eval()
    out = model(_batch())
    total = sum(out.logits.values())
    assert out.fused.shape == (5, 6)
    assert torch.allclose(total, out.fused, atol=1e-6, rtol=0)
    # the split is a real split: each part is W^m phi_m + b/2 computed by hand
    fc = model.fusion.fc
    wa = fc.weight[:, :64]
    assert torch.allclose(out.logits["audio"], out.features["audio"] @ wa.t() + fc.bias / 2, atol=1e-6)


def test_three_modalities_bias_shared_in_thirds():
    specs = SPECS + [ModalitySpec("extra", "spectrogram", (1, 8, 8))]
    cfg = resolve({"model": {"backbone": "small", "width": 4}})
    model = build_model(specs, 3, cfg.model).eval()
    with torch.no_grad():
        model.fusion.fc.weight.zero_()
        model.fusion.fc.bias.copy_(torch.tensor([3.0, -6.0, 9.0]))
    b = _batch(2)
    b["extra"] = torch.randn(2, 1, 8, 8)
    out = model(b)
    for m in ("audio", "visual", "extra"):
        assert torch.allclose(out.logits[m], torch.tensor([[1.0, -2.0, 3.0]] * 2))


def test_resnet18_adapted_as_the_field_does():
    cfg = resolve({})
    a = resnet18(SPECS[0], cfg.model)
    assert a.trunk[0].in_channels == 1 and a.trunk[0].kernel_size == (7, 7) and a.trunk[0].stride == (2, 2)
    assert a(torch.randn(2, 1, 40, 32)).shape == (2, 512)
    v = resnet18(SPECS[1], cfg.model)
    assert v.trunk[0].in_channels == 3
    x = torch.randn(2, 2, 3, 32, 32)
    v.eval()
    feats = v(x)
    assert feats.shape == (2, 512)
    # frames run as B*T images and are pooled over time: equals the mean of per-frame features
    per_frame = torch.stack([v.trunk(x[:, t]).mean(dim=(2, 3)) for t in range(2)], 1).mean(1)
    assert torch.allclose(feats, per_frame, atol=1e-5)


def test_small_backbone_width():
    cfg = resolve({"model": {"backbone": "small", "width": 8}})
    enc = small(SPECS[0], cfg.model)
    assert enc.out_dim == 64 and enc(torch.randn(3, 1, 40, 32)).shape == (3, 64)
