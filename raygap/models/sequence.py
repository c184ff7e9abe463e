"""Encoders for ``sequence`` (L, D) and ``vector`` (D,) modalities, registered in ``BACKBONES``.

They are the "adaptive modality encoders" of the three-modality setting: each modality
keeps its own input width D (300-d GloVe text, 5- or 74-d COVAREP audio, 20- or 35-d
Facet vision, a one-hot character sequence in avdigits) and is mapped to ``model.hidden``
features, so the fusion sees equal-width vectors whatever the modality.

* ``gru``      -- LayerNorm(D) -> Linear(D, H) -> GRU(H, H); the final hidden state.
* ``meanpool`` -- the mean over time -> LayerNorm(D) -> MLP(D, H, H); order-free and fast.

A ``vector`` modality is treated as a sequence of length 1.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..data.base import ModalitySpec
from ..registry import BACKBONES
from . import SEQUENCE_KINDS


def _width(spec: ModalitySpec) -> int:
    if spec.kind not in SEQUENCE_KINDS:
        raise ValueError(f"a sequence encoder cannot encode modality {spec.name!r} of kind {spec.kind!r}")
    return int(spec.shape[-1])


def _as_sequence(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(1) if x.dim() == 2 else x          # (B, D) -> (B, 1, D)


class GRUEncoder(nn.Module):
    def __init__(self, d_in: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_in)
        self.proj = nn.Linear(d_in, hidden)
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.proj(self.norm(_as_sequence(x).float())))
        _, last = self.rnn(h)
        return last[-1]                                      # (B, H)


class MeanPoolEncoder(nn.Module):
    def __init__(self, d_in: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, hidden), nn.ReLU(inplace=True))
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(_as_sequence(x).float().mean(dim=1))


@BACKBONES.register("gru", kinds=SEQUENCE_KINDS)
def gru(spec: ModalitySpec, model_cfg) -> nn.Module:
    """LayerNorm, a linear projection to ``model.hidden`` and a one-layer GRU (final state)."""
    return GRUEncoder(_width(spec), int(getattr(model_cfg, "hidden", 64)))


@BACKBONES.register("meanpool", kinds=SEQUENCE_KINDS)
def meanpool(spec: ModalitySpec, model_cfg) -> nn.Module:
    """Mean over time, LayerNorm and a two-layer MLP to ``model.hidden``."""
    return MeanPoolEncoder(_width(spec), int(getattr(model_cfg, "hidden", 64)))
