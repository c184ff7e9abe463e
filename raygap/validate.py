"""The generic validator: a mapping checked against a dataclass whose fields carry
:func:`raygap.params.F` metadata -- the config sections and every plug-in's params.

Field metadata drives it: ``range=(lo, hi)`` (inclusive; ``open_low`` excludes ``lo``),
``choices=[...]``, ``registry=<Registry>`` (choices are its names), ``help``. Values are
coerced to the annotated type (YAML 1.1 reads ``2e-3`` as text: it becomes a float); unknown
keys are rejected with the nearest valid key. Every problem is one
:class:`~raygap.errors.ConfigError` naming the dotted key.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
import types
import typing
from typing import Any

from .errors import ConfigError, nearest
from .registry import Registry


@functools.cache            # (get_type_hints evaluates every annotation: most of a 10,000-cell grid's expansion)
def _fields(cls: type) -> dict[str, tuple[Any, dataclasses.Field]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f) for f in dataclasses.fields(cls)}


def field_default(f: dataclasses.Field):
    """A field's default value (a fresh copy of a mutable one)."""
    if f.default is not dataclasses.MISSING:
        v = f.default
        return copy.deepcopy(v) if isinstance(v, (list, dict, set)) else v     # (others are immutable)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def coerce(value, tp, key: str):
    """Coerce a YAML value to the annotated type or raise ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, key)
            except ConfigError as e:
                errors.append(e.problem)
        raise ConfigError(errors[0] if errors else f"{value!r} has the wrong type", key=key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"expected a list, got {value!r}", key=key)
        return [coerce(v, args[0] if args else Any, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {value!r}", key=key)
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"expected true/false, got {value!r}", key=key)
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"expected an integer, got {value!r}", key=key)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"expected an integer, got {value!r}", key=key)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"expected a number, got {value!r}", key=key)
        if isinstance(value, (int, float)):
            v = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "2e-3" as a string
            try:
                v = float(value)
            except ValueError:
                raise ConfigError(f"expected a number, got {value!r}", key=key) from None
        else:
            raise ConfigError(f"expected a number, got {value!r}", key=key)
        if not math.isfinite(v):
            raise ConfigError(f"expected a finite number, got {value!r}", key=key)
        return v
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"expected a string, got {value!r}", key=key)
    return value


def _check(value, f: dataclasses.Field, key: str):
    meta = f.metadata
    choices = meta.get("choices")
    reg: Registry | None = meta.get("registry")
    if reg is not None:
        choices = reg.names()
    if choices is not None and value is not None:
        vals = value if isinstance(value, list) else [value]
        for v in vals:
            if v not in choices:
                raise ConfigError(f"{v!r} is not one of {', '.join(map(str, choices))}", key=key,
                                  hint=f"nearest: {nearest(v, choices)!r}")
    rng = meta.get("range")
    if rng is not None and value is not None:
        lo, hi = rng
        vals = value if isinstance(value, list) else [value]
        open_low = meta.get("open_low", False)
        for v in vals:
            if not ((lo < v if open_low else lo <= v) and v <= hi):
                raise ConfigError(f"{v!r} is out of range {'(' if open_low else '['}{lo}, {hi}]", key=key,
                                  hint="a trial needs some CPU: use a fraction such as 0.5 to pack trials"
                                  if key == "resources.cpu" else None)


def validate_params(cls: type, values: dict, prefix: str, *, allow_extra: bool = False) -> dict:
    """Validate ``values`` against dataclass ``cls``; return the known keys with defaults filled."""
    fields = _fields(cls)
    out = {}
    for name, (tp, f) in fields.items():
        if name in values:
            v = coerce(values[name], tp, f"{prefix}.{name}")
            _check(v, f, f"{prefix}.{name}")
        else:
            v = field_default(f)
        out[name] = v
    if not allow_extra:
        for k in values:
            if k not in fields:
                raise ConfigError("unknown key", key=f"{prefix}.{k}",
                                  hint=f"nearest valid key: {prefix}.{nearest(k, fields)}")
    return out


def plugin_params(section: dict, cls: type | None):
    """Instantiate a plugin's params dataclass from a resolved section."""
    if cls is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in section.items() if k in names})
