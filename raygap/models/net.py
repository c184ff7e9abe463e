"""The multimodal network: one encoder per named modality and a fusion head."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..data.base import ModalitySpec
from ..registry import BACKBONES, FUSIONS


@dataclass
class ModelOutput:
    features: dict[str, torch.Tensor]     # per modality, (B, D_m)
    logits: dict[str, torch.Tensor]       # per modality, (B, K), from the shared head
    fused: torch.Tensor                   # (B, K)


class MultimodalNet(nn.Module):
    def __init__(self, specs: list[ModalitySpec], num_classes: int, model_cfg):
        super().__init__()
        self.modalities = [s.name for s in specs]
        self.encoders = nn.ModuleDict({s.name: BACKBONES.get(model_cfg.backbone).obj(s, model_cfg)
                                       for s in specs})
        dims = {m: e.out_dim for m, e in self.encoders.items()}
        self.fusion = FUSIONS.get(model_cfg.fusion).obj(dims, num_classes, model_cfg)

    def encode(self, batch: dict) -> dict[str, torch.Tensor]:
        return {m: self.encoders[m](batch[m]) for m in self.modalities}

    def head(self, feats: dict[str, torch.Tensor]) -> ModelOutput:
        fused, parts = self.fusion(feats)
        return ModelOutput(feats, parts, fused)

    def forward(self, batch: dict) -> ModelOutput:
        return self.head(self.encode(batch))


def build_model(specs: list[ModalitySpec], num_classes: int, model_cfg) -> MultimodalNet:
    return MultimodalNet(specs, num_classes, model_cfg)
