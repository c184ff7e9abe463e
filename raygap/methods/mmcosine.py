"""MMCosine: multimodal cosine loss (Xu et al., ICASSP 2023), after the official
GeWu-Lab/MMCosine_ICASSP23 ``main.py`` (concatenation fusion).

The concatenation head's weight W = [W^1 ... W^M] (K x sum D_m) is used without its bias:

    logits_m = s * cos(phi_m, w^m_k)  for every class k     (row-normalized features, each class's
                                                              weight vector w^m_k normalized)
    fused    = sum_m logits_m                                 |fused_k| <= s * M
    L        = CE(fused)

The same logits are used at evaluation, so every modality's contribution to a prediction is
bounded by s and no modality can win by growing its feature or weight norms.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..lazy import lazy
from ..params import F
from ..registry import METHODS
from ..models.output import ModelOutput
from .base import Method

torch = lazy("torch")
Fn = lazy("torch.nn.functional")


@dataclass
class MMCosineParams:
    scale: float = F(10.0, range=(1e-6, 1e4), help="s: the cosine logits are s * cos (official: 10)")


def cosine_logits(feats: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
    """s * cos(phi, w_k), (B, K), from features (B, D) and a class weight matrix (K, D)."""
    return scale * Fn.normalize(feats, dim=1) @ Fn.normalize(weight, dim=1).t()


@METHODS.register("mmcosine", params=MMCosineParams, version=1, fusion="concat")
class MMCosine(Method):
    """Cross-entropy of the summed per-modality cosine logits (no bias)."""

    def forward(self, model, batch, st=None) -> ModelOutput:
        feats = model.encode(batch)
        logits = {m: cosine_logits(feats[m], model.fusion.weight_of(m), self.p.scale) for m in model.modalities}
        fused = torch.stack([logits[m] for m in model.modalities]).sum(0)
        return ModelOutput(feats, logits, fused)

    def predict(self, model, batch) -> ModelOutput:
        return self.forward(model, batch)
