"""What a model's forward returns (plain Python: methods import it without importing torch)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class ModelOutput:
    features: dict[str, torch.Tensor]     # per modality, (B, D_m)
    logits: dict[str, torch.Tensor]       # per modality, (B, K): the head's share, or an auxiliary head
    fused: torch.Tensor                   # (B, K)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)   # what a fusion exposes (e.g. gates)
