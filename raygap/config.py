"""Typed, validated trial configs.

A trial config is one YAML mapping with the sections ``seed``, ``data``, ``model``,
``method``, ``optim``, ``train`` and ``resources``. Each section is described by a
dataclass below; ``data`` and ``method`` also accept the keys of the chosen dataset's
or method's own params dataclass (from the registries), flat in the same mapping::

    data:   {name: avdigits, visual_corrupt: 0.3}
    method: {name: gap_adaptive, rho: 0.95}

Field metadata drives validation: ``range=(lo, hi)`` (inclusive), ``choices=[...]``,
``registry=<Registry>`` (choices are its names), ``help``. Unknown keys are rejected
with the nearest valid key; every error is a :class:`ConfigError` (one line, exit 2).

``load_config`` / ``resolve`` return a :class:`TrialConfig`: the fully resolved nested
dict (all defaults filled in) plus attribute access per section. Its ``key()`` is the
hash that identifies a trial (resources excluded).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import RESULTS_VERSION
from .data.base import DataCommon
from .errors import ConfigError
from .params import F
from .registry import BACKBONES, DATASETS, FUSIONS, METHODS, Registry


@dataclass
class DataSection(DataCommon):
    name: str = F("avdigits", registry=DATASETS, help="dataset (registry name)")
    modalities: list[str] | None = F(None, help="subset / order of the dataset's modalities")


@dataclass
class ModelSection:
    backbone: str = F("resnet18", registry=BACKBONES, help="encoder for image modalities (spectrograms, frames)")
    sequence_backbone: str = F("gru", registry=BACKBONES,
                               help="encoder for sequence / vector modalities (text, MOSI features)")
    hidden: int = F(64, range=(4, 4096), help="hidden size of the sequence encoders and the gated fusion")
    fusion: str = F("concat", registry=FUSIONS, help="fusion head")
    width: int = F(32, range=(4, 1024), help="base channel width of the `small` backbone")


@dataclass
class MethodSection:
    name: str = F("concat", registry=METHODS, help="training method (registry name)")


@dataclass
class OptimSection:
    name: str = F("sgd", choices=["sgd", "adam", "adamw"])
    lr: float = F(2e-3, range=(1e-8, 10.0))
    momentum: float = F(0.9, range=(0.0, 0.999))
    weight_decay: float = F(1e-4, range=(0.0, 1.0))
    scheduler: str = F("none", choices=["none", "step", "cosine"])
    step_size: int = F(70, range=(1, 100000), help="StepLR period in epochs")
    gamma: float = F(0.1, range=(0.0, 1.0), help="StepLR factor")


@dataclass
class TrainSection:
    epochs: int = F(100, range=(1, 100000))
    batch_size: int = F(64, range=(1, 1 << 16))
    eval_batch_size: int = F(256, range=(1, 1 << 16))
    device: str = F("auto", choices=["auto", "cpu", "cuda"], help="auto: the GPU Ray assigns, else CPU")
    amp: str = F("none", choices=["none", "bf16", "fp16"], help="autocast dtype (CUDA; bf16 also on CPU)")
    num_workers: int = F(0, range=(0, 128), help="DataLoader workers for file-backed datasets")
    threads: int = F(0, range=(0, 1024), help="torch intra-op threads; 0 = the CPUs allotted to the trial")
    select: str = F("auto", choices=["auto", "acc", "macro_f1", "loss", "mae", "corr", "acc2", "f1_2", "acc7"],
                    help="validation metric that picks the reported epoch; auto: acc (classification), mae (regression)")
    regression_loss: str = F("l1", choices=["l1", "mse"], help="task loss for a regression target (MOSI: L1)")
    checkpoint: bool = F(True, help="write a checkpoint every epoch (needed for resume)")
    deterministic: bool = F(True, help="deterministic kernels (CPU runs are bit-reproducible for a seed)")


@dataclass
class ResourcesSection:
    cpu: float = F(1.0, range=(0.0, 1024.0))
    gpu: float = F(0.0, range=(0.0, 64.0))


SECTIONS: dict[str, type] = {
    "data": DataSection,
    "model": ModelSection,
    "method": MethodSection,
    "optim": OptimSection,
    "train": TrainSection,
    "resources": ResourcesSection,
}
PLUGIN_REGISTRY = {"data": DATASETS, "method": METHODS}
TOP_LEVEL = ["seed", *SECTIONS]
NOT_HASHED = {"resources"}


# ----------------------------------------------------------------------------- helpers
def nearest(word: str, choices) -> str | None:
    choices = [str(c) for c in choices]
    m = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.0)
    return m[0] if m else None


def _fields(cls: type) -> dict[str, tuple[Any, dataclasses.Field]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f) for f in dataclasses.fields(cls)}


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return copy.deepcopy(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _coerce(value, tp, key: str):
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
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(e.problem)
        raise ConfigError(errors[0] if errors else f"{value!r} has the wrong type", key=key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"expected a list, got {value!r}", key=key)
        return [_coerce(v, args[0] if args else Any, f"{key}[{i}]") for i, v in enumerate(value)]
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
        for v in vals:
            if not (lo <= v <= hi):
                raise ConfigError(f"{v!r} is out of range [{lo}, {hi}]", key=key)


def validate_params(cls: type, values: dict, prefix: str, *, allow_extra: bool = False) -> dict:
    """Validate ``values`` against dataclass ``cls``; return the known keys with defaults filled."""
    fields = _fields(cls)
    out = {}
    for name, (tp, f) in fields.items():
        if name in values:
            v = _coerce(values[name], tp, f"{prefix}.{name}")
            _check(v, f, f"{prefix}.{name}")
        else:
            v = _default(f)
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


# ----------------------------------------------------------------------------- config
class Section(types.SimpleNamespace):
    def to_dict(self) -> dict:
        return dict(vars(self))


class TrialConfig:
    """A fully resolved, validated trial config."""

    def __init__(self, resolved: dict):
        self._d = resolved
        self.seed: int = resolved["seed"]
        for s in SECTIONS:
            setattr(self, s, Section(**resolved[s]))

    def to_dict(self) -> dict:
        return copy.deepcopy(self._d)

    def hashed_part(self) -> dict:
        return {k: v for k, v in self._d.items() if k not in NOT_HASHED}

    def key(self) -> str:
        """Identity of the trial: hash of the resolved config (resources excluded) and the
        results version of the code (bumped by changes that alter results)."""
        method_version = METHODS.get(self._d["method"]["name"]).meta.get("version", 1)
        payload = json.dumps({"config": self.hashed_part(), "results_version": RESULTS_VERSION,
                              "method_version": method_version}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def params(self, section: str):
        """The dataset's / method's own params dataclass instance."""
        name = self._d[section]["name"]
        return plugin_params(self._d[section], PLUGIN_REGISTRY[section].get(name).params)

    def common_data(self) -> DataCommon:
        return plugin_params(self._d["data"], DataCommon)

    def __repr__(self) -> str:
        return f"TrialConfig({self.key()})"


def resolve(raw: dict | None) -> TrialConfig:
    """Validate a raw nested mapping and fill every default."""
    from .plugins import load_all

    load_all()
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"a trial config must be a mapping, got {type(raw).__name__}")
    for k in raw:
        if k not in TOP_LEVEL:
            raise ConfigError("unknown key", key=str(k), hint=f"nearest valid key: {nearest(k, TOP_LEVEL)}")
    out: dict[str, Any] = {"seed": _coerce(raw.get("seed", 0), int, "seed")}
    if not (0 <= out["seed"] < 2**31):
        raise ConfigError(f"{out['seed']} is out of range [0, 2**31)", key="seed")
    for s, cls in SECTIONS.items():
        vals = raw.get(s) or {}
        if not isinstance(vals, dict):
            raise ConfigError(f"expected a mapping, got {vals!r}", key=s)
        if s in PLUGIN_REGISTRY:
            common = validate_params(cls, vals, s, allow_extra=True)
            entry = PLUGIN_REGISTRY[s].get(common["name"])
            own = validate_params(entry.params, vals, s, allow_extra=True) if entry.params else {}
            known = set(common) | set(own)
            for k in vals:
                if k not in known:
                    raise ConfigError(f"unknown key for {s} {common['name']!r}", key=f"{s}.{k}",
                                      hint=f"nearest valid key: {s}.{nearest(k, known)}")
            out[s] = {**common, **own}
        else:
            out[s] = validate_params(cls, vals, s)
    _cross_checks(out)
    return TrialConfig(out)


def _cross_checks(c: dict) -> None:
    mods = c["data"].get("modalities")
    if mods is not None and len(mods) < 1:
        raise ConfigError("needs at least one modality", key="data.modalities")
    need = METHODS.get(c["method"]["name"]).meta.get("fusion")
    if need and c["model"]["fusion"] != need:
        raise ConfigError(f"method {c['method']['name']} needs the {need} fusion head, got "
                          f"{c['model']['fusion']}", key="model.fusion", hint=f"set model.fusion={need}")
    if c["train"]["device"] == "cpu" and c["resources"]["gpu"] > 0:
        raise ConfigError("train.device is cpu but the trial asks for a GPU", key="resources.gpu",
                          hint="set resources.gpu=0 or train.device=auto")
    if c["train"]["amp"] == "fp16" and c["train"]["device"] == "cpu":
        raise ConfigError("fp16 autocast needs CUDA", key="train.amp", hint="use bf16 on CPU")


# ----------------------------------------------------------------------------- dotted keys
def parse_set(items: list[str] | None) -> list[tuple[str, Any]]:
    """``["method.rho=0.9", ...]`` -> [("method.rho", 0.9)], values parsed as YAML."""
    out = []
    for it in items or []:
        if "=" not in it:
            raise ConfigError(f"--set expects KEY=VALUE, got {it!r}", key="--set")
        k, v = it.split("=", 1)
        try:
            val = yaml.safe_load(v) if v != "" else ""
        except yaml.YAMLError:
            val = v
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


def read_yaml(path: str | Path) -> Any:
    p = Path(path)
    if not p.exists():
        raise ConfigError("no such file", file=str(p))
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}invalid YAML: {problem}", file=str(p)) from None


def load_config(path: str | Path, sets: list[str] | None = None) -> TrialConfig:
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError("a trial config must be a mapping", file=str(path))
    try:
        for k, v in parse_set(sets):
            set_dotted(raw, k, v)
        return resolve(raw)
    except ConfigError as e:
        raise e.with_file(str(path)) from None
