"""Training methods; importing this package registers every method file in it.

Each ``*.py`` here other than the shared helpers is one method (or a family of
closely related variants) that registers itself in ``METHODS``; a new method is a new
file, with no list to edit.
"""
import importlib
import pkgutil

from .base import Method, MethodContext, TrainState  # noqa: F401

_HELPERS = {"base", "gaps"}

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _m.name not in _HELPERS and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
