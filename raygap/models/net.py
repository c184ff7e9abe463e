"""The multimodal network: one encoder per named modality and a fusion head."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..data.base import ModalitySpec
from ..registry import BACKBONES, FUSIONS
from . import SEQUENCE_KINDS
from .output import ModelOutput


def backbone_name(spec: ModalitySpec, model_cfg) -> str:
    """``model.sequence_backbone`` for sequence / vector modalities, ``model.backbone`` otherwise."""
    if spec.kind in SEQUENCE_KINDS:
        return getattr(model_cfg, "sequence_backbone", "gru")
    return model_cfg.backbone


class MultimodalNet(nn.Module):
    def __init__(self, specs: list[ModalitySpec], num_classes: int, model_cfg):
        super().__init__()
        self.modalities = [s.name for s in specs]
        self.encoders = nn.ModuleDict({s.name: BACKBONES.get(backbone_name(s, model_cfg)).obj(s, model_cfg)
                                       for s in specs})
        dims = {m: e.out_dim for m, e in self.encoders.items()}
        self.fusion = FUSIONS.get(model_cfg.fusion).obj(dims, num_classes, model_cfg)

    def encode(self, batch: dict) -> dict[str, torch.Tensor]:
        return {m: self.encoders[m](batch[m]) for m in self.modalities}

    def head(self, feats: dict[str, torch.Tensor]) -> ModelOutput:
        res = self.fusion(feats)          # (fused, parts) or (fused, parts, extras)
        return ModelOutput(feats, res[1], res[0], res[2] if len(res) > 2 else {})

    def forward(self, batch: dict) -> ModelOutput:
        return self.head(self.encode(batch))


def build_model(specs: list[ModalitySpec], num_classes: int, model_cfg) -> MultimodalNet:
    return MultimodalNet(specs, num_classes, model_cfg)
