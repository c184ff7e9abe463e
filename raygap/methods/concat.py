"""Concat: the plain joint-training baseline (Table II, "Baseline (Concat)")."""
from __future__ import annotations

from ..registry import METHODS
from .base import Method


@METHODS.register("concat", params=None, version=1)
class Concat(Method):
    """L = L_f: the task loss of the fused output only (cross-entropy, or L1/MSE for regression)."""

    tasks = ("classification", "regression")   # the base class's loss: the task loss of the fused output
