"""Name -> code registries (methods, datasets, mixtures, backbones, fusions).

A YAML name maps straight to an entry; adding a method, dataset or backbone means
adding a file that calls ``REGISTRY.register(...)`` and importing it from the
package's ``__init__`` -- no runner or trainer code changes.

A name may also be *declared* (``REGISTRY.declare(name, module, **meta)``) by a package whose
modules cannot be imported cheaply (the encoders and fusion heads are ``nn.Module`` classes:
importing them imports torch): the name and its meta are known at once, so configs are
validated without torch, and ``module`` is imported -- registering the name for real -- when
the entry's ``obj`` is first used.

Every entry records where it comes from (``Entry.origin``, shown by ``raygap list``): a
built-in module, or the plug-in being imported (:func:`registering_from`, set by
:mod:`raygap.plugins`). A name registered twice is a :class:`Clash` naming both origins.
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

_ORIGINS: list[str] = []          # the plug-in being imported now (innermost last)


@contextmanager
def registering_from(origin: str) -> Iterator[None]:
    """Entries registered or declared inside this block come from ``origin`` (a plug-in:
    ``file /path/x.py``, ``entry point dist 1.0 (module)``, ``module name``)."""
    _ORIGINS.append(origin)
    try:
        yield
    finally:
        _ORIGINS.pop()


def _origin(module: str) -> str:
    return _ORIGINS[-1] if _ORIGINS else f"built-in {module}"


class Clash(ValueError):
    """A name registered twice: one line naming the kind, the name and both origins."""

    def __init__(self, kind: str, name: str, first: str, second: str):
        self.kind, self.name, self.first, self.second = kind, name, first, second
        super().__init__(f"{kind} {name!r} is registered by {second} and already by {first}")


class Entry:
    """One registered name: ``obj`` (class or builder function), ``params`` (dataclass of the
    entry's own config keys, validated at load), ``doc`` and registration ``meta``. A declared
    entry imports its ``module`` on the first read of ``obj`` or ``doc``."""

    def __init__(self, name: str, obj: Any = None, params: type | None = None, doc: str = "",
                 meta: dict | None = None, module: str | None = None, origin: str = ""):
        self.name, self._obj, self.params, self._doc = name, obj, params, doc
        self.meta = dict(meta or {})
        self.module = module          # declared, registered when this module is imported
        self.origin = origin          # where it comes from: "built-in raygap.methods.concat", "file /x/m.py", ...

    def _load(self) -> None:
        if self._obj is None and self.module is not None:
            importlib.import_module(self.module)
            if self._obj is None:
                raise RuntimeError(f"{self.module} is declared to register {self.name!r} but does not")

    @property
    def obj(self) -> Any:
        self._load()
        return self._obj

    @property
    def doc(self) -> str:
        self._load()
        return self._doc

    def __repr__(self) -> str:
        return f"Entry({self.name!r}, {'declared in ' + self.module if self._obj is None else self._obj!r})"


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, params: type | None = None, **meta) -> Callable:
        def deco(obj):
            doc = (obj.__doc__ or "").strip()
            have = self._entries.get(name)
            if have is not None and have.module is not None and have._obj is None:     # declared: fill it in
                if obj.__module__ != have.module or meta != have.meta or params is not None:
                    raise ValueError(f"{self.kind} {name!r} is declared in {have.module} with meta {have.meta}; "
                                     f"{obj.__module__} registers it with {meta}" + (" and params" if params else ""))
                have._obj, have._doc = obj, doc
                return obj
            origin = _origin(obj.__module__)
            if have is not None:
                raise Clash(self.kind, name, have.origin, origin)
            self._entries[name] = Entry(name, obj, params, doc, meta, origin=origin)
            return obj
        return deco

    def declare(self, name: str, module: str, **meta) -> None:
        """``name`` (with ``meta``) is registered by ``module``, imported when the entry's code is
        first used (see the module doc)."""
        origin = _origin(module)
        if name in self._entries:
            raise Clash(self.kind, name, self._entries[name].origin, origin)
        self._entries[name] = Entry(name, meta=meta, module=module, origin=origin)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def nearest(self, name: str) -> str | None:
        m = difflib.get_close_matches(str(name), self.names(), n=1, cutoff=0.0)
        return m[0] if m else None

    def source(self, name: str) -> str:
        """A digest of the file that defines ``name`` as it is now (12 hex digits): stored with
        each finished trial, so results of a method whose code changed since are found."""
        import inspect

        obj = self.get(name).obj
        try:
            path = inspect.getsourcefile(obj) or ""
        except TypeError:
            return ""
        return _file_digest(path)

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            near = self.nearest(name)
            hint = f"; nearest: {near!r}" if near else ""
            raise KeyError(f"unknown {self.kind} {name!r} (choices: {', '.join(self.names())}{hint})") from None


@functools.lru_cache(maxsize=None)
def _file_digest(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:12]
    except OSError:
        return ""


METHODS = Registry("method")
DATASETS = Registry("dataset")
MIXTURES = Registry("mixture")
BACKBONES = Registry("backbone")
FUSIONS = Registry("fusion")
