"""Modules imported on first use, for the plug-in files (``methods/``, ``data/``, ``models/``).

Every raygap command validates its configs against the registries, and the registries are
filled by importing every plug-in file. Importing torch costs seconds, so a plug-in file must
not import it at its top: its params dataclass, its registration, its ``check_config`` and its
dataset ``layout`` are plain Python, and only its training code needs torch. Such a file binds

    torch = lazy("torch")
    Fn = lazy("torch.nn.functional")

instead of ``import torch``: the name then behaves as the module everywhere it is used inside a
function (``torch.zeros(3)``, ``Fn.cross_entropy``, ``isinstance(x, torch.Tensor)``), and the
import happens at the first such use, when a trial runs. A module-level use (a decorator such
as ``@torch.no_grad()``, a class deriving from ``nn.Module``, a default value) would import it
at once: those stay out of the plug-in files' tops (``tests/test_import_cost.py`` checks that
validating every shipped grid leaves torch unimported).

Unlike ``importlib.util.LazyLoader`` (and the ``lazy_loader`` package built on it), nothing is
put in ``sys.modules`` before the real import: libraries that ask ``"torch" in sys.modules``
before touching torch (scipy's array-API helpers do) are not made to import it.
"""
from __future__ import annotations

import importlib
from types import ModuleType


class LazyModule:
    """Stands for the module ``name``; imports it on the first attribute read."""

    __slots__ = ("_name", "_module")

    def __init__(self, name: str):
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str):
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}{'' if self._module is None else ' (imported)'}>"


def lazy(name: str) -> LazyModule:
    """A stand-in for ``import name`` that imports on first use (see the module doc)."""
    return LazyModule(name)
