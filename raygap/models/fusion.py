"""Fusion heads, registered in ``FUSIONS``.

A head maps per-modality features ``{m: (B, D_m)}`` to the fused logits and to one
logit tensor per modality from the same parameters, so unimodal predictions need no
extra classifier.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..registry import FUSIONS


@FUSIONS.register("concat")
class ConcatFusion(nn.Module):
    """f = W [phi_1; ...; phi_M] + b (paper Eq. 1), split as f = sum_m (W^m phi_m + b/M) (Eq. 2).

    The bias is shared equally between the M modality parts, so the per-modality logits
    add up to the fused logits exactly.
    """

    def __init__(self, dims: dict[str, int], num_classes: int, model_cfg=None):
        super().__init__()
        self.modalities = list(dims)
        self.dims = [dims[m] for m in self.modalities]
        self.fc = nn.Linear(sum(self.dims), num_classes)
        nn.init.xavier_normal_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def weight_of(self, modality: str) -> torch.Tensor:
        """W^m: the columns of the fusion weight that act on modality m's features."""
        i = self.modalities.index(modality)
        start = sum(self.dims[:i])
        return self.fc.weight[:, start:start + self.dims[i]]

    def forward(self, feats: dict[str, torch.Tensor]):
        share = self.fc.bias / len(self.modalities)
        parts = {m: feats[m] @ self.weight_of(m).t() + share for m in self.modalities}
        fused = self.fc(torch.cat([feats[m] for m in self.modalities], dim=1))
        return fused, parts


@FUSIONS.register("gated", head_weight=True)    # (CPSL's projection needs a head weight)
class GatedFusion(nn.Module):
    """Gated cross-modal fusion with unimodal auxiliary heads (the CPSL model's fusion).

    h_m = tanh(P_m phi_m + p_m)                         each modality projected to H
    g_m = sigmoid(G_m [phi_1; ...; phi_M] + q_m)        its gate, computed from every modality
    z   = sum_m c_m,   c_m = g_m * h_m                  the fused representation
    fused logits = W z + b;   logits_m = A_m phi_m + a_m (an auxiliary head per modality)

    ``extras`` carries ``contrib_<m>`` = c_m (detached) and ``gate_<m>`` = mean gate per
    sample: since dL/dW = delta^T z = sum_m delta^T c_m, the head's weight gradient splits
    exactly into one part per modality (what CPSL's conflict-aware penalty works on).
    """

    def __init__(self, dims: dict[str, int], num_classes: int, model_cfg=None):
        super().__init__()
        self.modalities = list(dims)
        h = int(getattr(model_cfg, "hidden", 64)) if model_cfg is not None else 64
        total = sum(dims.values())
        self.proj = nn.ModuleDict({m: nn.Linear(d, h) for m, d in dims.items()})
        self.gate = nn.ModuleDict({m: nn.Linear(total, h) for m in dims})
        self.head = nn.Linear(h, num_classes)
        self.aux = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in dims.items()})

    @property
    def head_weight(self) -> torch.Tensor:
        return self.head.weight

    def forward(self, feats: dict[str, torch.Tensor]):
        cat = torch.cat([feats[m] for m in self.modalities], dim=1)
        contrib = {m: torch.sigmoid(self.gate[m](cat)) * torch.tanh(self.proj[m](feats[m])) for m in self.modalities}
        z = torch.stack([contrib[m] for m in self.modalities]).sum(0)
        fused = self.head(z)
        parts = {m: self.aux[m](feats[m]) for m in self.modalities}
        extras = {f"contrib_{m}": c.detach() for m, c in contrib.items()}
        return fused, parts, extras


@FUSIONS.register("shared")
class SharedHead(nn.Module):
    """One linear head shared by every modality (MLA's head): logits_m = W phi_m + b, and the
    fused logits their mean. Every encoder must give features of the same size."""

    def __init__(self, dims: dict[str, int], num_classes: int, model_cfg=None):
        super().__init__()
        self.modalities = list(dims)
        sizes = sorted(set(dims.values()))
        if len(sizes) != 1:
            raise ConfigError(f"the shared head needs encoders of one feature size, got "
                              f"{', '.join(f'{m} {d}' for m, d in dims.items())}", key="model.fusion",
                              hint="use one backbone for every modality or model.fusion=concat")
        self.fc = nn.Linear(sizes[0], num_classes)

    def forward(self, feats: dict[str, torch.Tensor]):
        parts = {m: self.fc(feats[m]) for m in self.modalities}
        fused = torch.stack([parts[m] for m in self.modalities]).mean(0)
        return fused, parts
