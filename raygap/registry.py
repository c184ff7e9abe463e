"""Name -> code registries (methods, datasets, mixtures, backbones, fusions).

A YAML name maps straight to an entry; adding a method, dataset or backbone means
adding a file that calls ``REGISTRY.register(...)`` and importing it from the
package's ``__init__`` -- no runner or trainer code changes.
"""
from __future__ import annotations

import difflib
import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Entry:
    name: str
    obj: Any                      # class or builder function
    params: type | None = None    # dataclass of the entry's own config keys (validated at load)
    doc: str = ""
    meta: dict = field(default_factory=dict)


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, params: type | None = None, **meta) -> Callable:
        def deco(obj):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = Entry(name, obj, params, (obj.__doc__ or "").strip(), meta)
            return obj
        return deco

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
