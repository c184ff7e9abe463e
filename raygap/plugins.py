"""Import every plugin package so the registries are filled (methods, datasets, mixtures,
backbones, fusions). Called before a config is validated."""
from __future__ import annotations

_loaded = False


def load_all() -> None:
    global _loaded
    if _loaded:
        return
    from . import data, methods, mixtures, models  # noqa: F401
    _loaded = True
