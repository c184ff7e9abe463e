"""Concat: the plain joint-training baseline (Table II, "Baseline (Concat)")."""
from __future__ import annotations

import torch.nn.functional as Fn

from ..registry import METHODS
from .base import Method


@METHODS.register("concat", params=None, version=1)
class Concat(Method):
    """L = L_f: cross-entropy of the fused logits only."""

    def loss(self, out, batch, st):
        loss = Fn.cross_entropy(out.fused, batch["label"])
        return loss, {"loss_f": loss.detach()}
