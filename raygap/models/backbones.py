"""Per-modality encoders, registered in ``BACKBONES``.

Every builder takes the modality's :class:`ModalitySpec` and the ``model`` config
section and returns an ``nn.Module`` with an ``out_dim`` attribute mapping a batch of
that modality to (B, out_dim) features.

* ``resnet18`` -- torchvision's ResNet-18 from scratch, adapted as this field does
  (OGM-GE's backbone, shared by PMR, D&R, BML, MMCosine): conv1 takes the modality's
  channel count (1 for spectrograms); frames (B, T, C, H, W) run as B*T images and
  are average-pooled over time and space; Kaiming (fan_out) convs, BatchNorm 1/0.
* ``small`` -- a 4-block CNN of configurable width, so CPU runs take minutes.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..data.base import ModalitySpec
from ..registry import BACKBONES

IMAGE_KINDS = ("spectrogram", "frames")


def _in_channels(spec: ModalitySpec) -> int:
    if spec.kind == "spectrogram":
        return spec.shape[0]
    if spec.kind == "frames":
        return spec.shape[1]
    raise ValueError(f"backbone for images cannot encode modality {spec.name!r} of kind {spec.kind!r}")


def init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv1d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ImageEncoder(nn.Module):
    """Wraps a 2-D trunk (B, C, H, W) -> (B, D, h, w) for spectrograms or frame stacks."""

    def __init__(self, trunk: nn.Module, out_dim: int, kind: str):
        super().__init__()
        self.trunk, self.out_dim, self.kind = trunk, out_dim, kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "frames":                      # (B, T, C, H, W) -> B*T images
            b, t = x.shape[:2]
            fmap = self.trunk(x.flatten(0, 1))         # (B*T, D, h, w)
            fmap = fmap.unflatten(0, (b, t))           # (B, T, D, h, w)
            return fmap.mean(dim=(1, 3, 4))            # = AdaptiveAvgPool3d over (T, h, w)
        return self.trunk(x).mean(dim=(2, 3))          # global average pool


def _resnet_trunk(in_ch: int) -> nn.Module:
    import torchvision  # imported lazily: it costs seconds (it pulls in torch._dynamo)

    net = torchvision.models.resnet18(weights=None)
    net.conv1 = nn.Conv2d(in_ch, 64, kernel_size=7, stride=2, padding=3, bias=False)
    trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                          net.layer1, net.layer2, net.layer3, net.layer4)
    init_weights(trunk)
    return trunk


@BACKBONES.register("resnet18")
def resnet18(spec: ModalitySpec, model_cfg) -> nn.Module:
    """ResNet-18 from scratch (512-d features)."""
    return ImageEncoder(_resnet_trunk(_in_channels(spec)), 512, spec.kind)


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


@BACKBONES.register("small")
def small(spec: ModalitySpec, model_cfg) -> nn.Module:
    """4 conv blocks (width w, 2w, 4w, 8w; strides 1, 2, 2, 2) and global pooling."""
    w = int(getattr(model_cfg, "width", 32))
    trunk = nn.Sequential(_block(_in_channels(spec), w, 1), _block(w, 2 * w, 2),
                          _block(2 * w, 4 * w, 2), _block(4 * w, 8 * w, 2))
    init_weights(trunk)
    return ImageEncoder(trunk, 8 * w, spec.kind)
