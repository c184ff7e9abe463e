"""Dotted keys (``method.rho``): the one way a key is named across the nested mappings of a
trial config, a grid layer and ``--set``.

:func:`key_values` splits command-line ``KEY=VALUE`` items (``--set``, ``--option``),
:func:`parse_set` reads ``--set``'s values as YAML, :func:`set_dotted` and :func:`get_dotted` write
and read one key, :func:`deep_merge` lays one layer over another (a dotted key in a
layer sets that one key), and :func:`flatten` is the inverse: every leaf under its dotted key.
Problems are one :class:`~raygap.errors.ConfigError` line naming the key.
"""
from __future__ import annotations

import copy
from typing import Any

import yaml

from .errors import ConfigError
from .safe_yaml import too_long


def key_values(items: list[str] | None, flag: str) -> list[tuple[str, str]]:
    """Command-line ``KEY=VALUE`` items (``--set``, ``--option``) -> [(KEY, VALUE)] as typed, split
    at the first ``=``; an item without one is one line naming ``flag``."""
    out = []
    for it in items or []:
        if "=" not in it:
            raise ConfigError(f"{flag} expects KEY=VALUE, got {it!r}", key=flag)
        k, v = it.split("=", 1)
        out.append((k, v))
    return out


def parse_set(items: list[str] | None) -> list[tuple[str, Any]]:
    """``["method.rho=0.9", ...]`` -> [("method.rho", 0.9)], values parsed as YAML."""
    out = []
    for k, v in key_values(items, "--set"):
        try:
            val = yaml.safe_load(v) if v != "" else ""
        except yaml.YAMLError:
            val = v
        except ValueError as e:          # an integer longer than Python converts
            raise ConfigError(too_long(e), key=k.strip()) from None
        out.append((k.strip(), val))
    return out


def set_dotted(d: dict, key: str, value) -> None:
    parts = key.split(".")
    if not all(parts):
        raise ConfigError("malformed dotted key", key=key)
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"{p} is not a section", key=key)
        cur = nxt
    cur[parts[-1]] = value


def get_dotted(d: dict, key: str):
    """The value at ``key`` in nested ``d``; None where a part is missing."""
    cur: Any = d
    for p in key.split("."):
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return cur


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if "." in str(k):
            set_dotted(out, k, copy.deepcopy(v))
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
