"""Config-field metadata shared by the config sections and every plugin's params dataclass."""
from __future__ import annotations

import copy
from dataclasses import field


def F(default, *, range=None, choices=None, registry=None, help="", open_low=False):
    """A dataclass field carrying validation metadata. ``range=(lo, hi)`` is inclusive,
    or ``(lo, hi]`` with ``open_low`` (a value must be above ``lo``)."""
    meta = {"help": help}
    if range is not None:
        meta["range"] = range
        meta["open_low"] = bool(open_low)
    if choices is not None:
        meta["choices"] = list(choices)
    if registry is not None:
        meta["registry"] = registry
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return field(default=default, metadata=meta)
