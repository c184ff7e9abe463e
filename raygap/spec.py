"""One cell membership of a grid: :class:`TrialSpec` (its own module so that :mod:`raygap.grid`
and :mod:`raygap.search` both build them without importing each other)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import TrialConfig


@dataclass
class TrialSpec:
    """One cell membership: (row label, column values, seed) -> a resolved trial."""
    label: str
    column: dict[str, Any]
    seed: int
    config: TrialConfig
    key: str
    resources: dict
