"""Fusion heads, registered in ``FUSIONS``.

A head maps per-modality features ``{m: (B, D_m)}`` to the fused logits and to one
logit tensor per modality from the same parameters, so unimodal predictions need no
extra classifier.
"""
from __future__ import annotations

import torch
import torch.nn as nn

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
