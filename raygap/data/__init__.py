"""Datasets; importing this package registers every loader.

Each ``*.py`` here other than the shared helpers is one dataset that registers itself in
``DATASETS`` (``avdigits``, ``cremad``, ``ave``, ``ks``, ``mosi``; docs/datasets.md); a new
dataset is a new file, with no list to edit (docs/contributing.md).
"""
import importlib
import pkgutil

_HELPERS = {"base", "media", "loader", "prepare", "cache", "augment", "synth", "preload", "splits"}

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _m.name not in _HELPERS and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
