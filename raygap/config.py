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
from dataclasses import dataclass
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
    select_from: str = F("all", choices=["all", "adaptive"],
                         help="epochs the reported one is picked from: all, or only those after a method's warm-up "
                              "stage (records whose stage is not 'warmup'; docs/method.md)")
    regression_loss: str = F("l1", choices=["l1", "mse"], help="task loss for a regression target (MOSI: L1)")
    checkpoint: bool = F(True, help="write checkpoints (needed for resume)")
    checkpoint_every: int = F(5, range=(1, 100000),
                              help="write (and, in a grid, upload) the checkpoint every N epochs: a stopped run "
                                   "recomputes at most N - 1 epochs; a paper trial's checkpoint is ~100 MB")
    deterministic: bool = F(True, help="deterministic kernels and cuBLAS workspace: bit-reproducible for a seed on "
                                       "the CPU, on a GPU as docs/method.md says (\"What repeats on a GPU\")")
    channels_last: str = F("auto", choices=["auto", "on", "off"],
                           help="channels-last memory format for the conv encoders (faster convolutions on "
                                "tensor cores); auto: on with CUDA, off on the CPU")
    compile: bool = F(False, help="torch.compile each encoder and the fusion head (minutes of compilation "
                                  "per trial, then faster steps; a C++ compiler is needed on the CPU)")


@dataclass
class ResourcesSection:
    cpu: float = F(1.0, range=(0.0, 1024.0), open_low=True, help="CPUs per trial (Ray's num_cpus; fractions pack trials)")
    gpu: float = F(0.0, range=(0.0, 64.0), help="GPUs per trial (Ray's num_gpus; 0.5 packs two trials per GPU)")


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
# keys that never change a trial's numbers (how often it is checkpointed): outside its hash
# (how it runs, not what it computes: memory layout and compilation change rounding only)
NOT_HASHED_KEYS = {"train": {"checkpoint_every", "channels_last", "compile"}, "data": {"preload"}}
# keys added after results were stored, hashed only when set away from the value that reproduces
# those results (so a stored trial keeps its identity): {section: {key: (that value, keys that only
# matter when it is changed)}}
HASHED_UNLESS = {"data": {"pipeline": ("files", ("cache_side",))}, "train": {"select_from": ("all", ())}}


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
        out = {k: ({kk: vv for kk, vv in v.items() if kk not in NOT_HASHED_KEYS[k]} if k in NOT_HASHED_KEYS else v)
               for k, v in self._d.items() if k not in NOT_HASHED}
        for section, keys in HASHED_UNLESS.items():
            for key, (old, riders) in keys.items():
                if out[section].get(key, old) == old:
                    out[section] = {k: v for k, v in out[section].items() if k != key and k not in riders}
        return out

    def key(self) -> str:
        """Identity of the trial: hash of the resolved config (resources excluded) and the
        results version of the code (bumped by changes that alter results)."""
        method_version = METHODS.get(self._d["method"]["name"]).meta.get("version", 1)
        payload = json.dumps({"config": self.hashed_part(), "results_version": RESULTS_VERSION,
                              "method_version": method_version}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def warmup(self) -> tuple[str, int] | None:
        """``(warm-up key, W)`` when the method declares a warm-up stage other trials may share
        (``Method.shared_warmup``): the key hashes everything the first W epochs depend on --
        the whole config outside ``method:`` (resources too: a CPU trial's threads follow
        them), the method's name, version and the keys it names. None: nothing to share."""
        name = self._d["method"]["name"]
        entry = METHODS.get(name)
        share = entry.obj.shared_warmup(self.params("method"))
        if share is None:
            return None
        W, keys = share
        rest = {k: v for k, v in self._d.items() if k != "method"}
        payload = json.dumps({"warmup_of": {"name": name, **keys}, "config": rest,
                              "results_version": RESULTS_VERSION, "method_version": entry.meta.get("version", 1)},
                             sort_keys=True, default=str)
        return "w" + hashlib.sha256(payload.encode()).hexdigest()[:15], int(W)

    def params(self, section: str):
        """The dataset's / method's own params dataclass instance."""
        name = self._d[section]["name"]
        return plugin_params(self._d[section], PLUGIN_REGISTRY[section].get(name).params)

    def common_data(self) -> DataCommon:
        return plugin_params(self._d["data"], DataCommon)

    def __repr__(self) -> str:
        return f"TrialConfig({self.key()})"


def warmup_groups(specs) -> dict[tuple[str, int], list]:
    """The items of ``specs`` (anything with a ``.config``: a grid's trial specs) that declare
    a shareable warm-up, grouped by it: ``(warm-up key, W) -> [spec, ...]`` (see
    :meth:`TrialConfig.warmup`)."""
    groups: dict[tuple[str, int], list] = {}
    for s in specs:
        if (w := s.config.warmup()) is not None:
            groups.setdefault(w, []).append(s)
    return groups


def epochs_not_trained_again(groups: dict[tuple[str, int], list]) -> int:
    """Epochs shared warm-ups save: every member of a group but one skips its W warm-up epochs."""
    return sum((len(members) - 1) * W for (_, W), members in groups.items())


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


def trial_modalities(c: dict) -> tuple[list[str], str]:
    """(the modalities a resolved config trains on, the dataset's task), from the dataset's
    declared layout -- no data is read."""
    entry = DATASETS.get(c["data"]["name"])
    layout = entry.meta["layout"](plugin_params(c["data"], entry.params))
    return list(c["data"].get("modalities") or layout.modalities), layout.task


def _cross_checks(c: dict) -> None:
    entry = DATASETS.get(c["data"]["name"])
    have = entry.meta["layout"](plugin_params(c["data"], entry.params))
    mods = c["data"].get("modalities")
    if mods is not None:
        if len(mods) < 1:
            raise ConfigError("needs at least one modality", key="data.modalities",
                              hint=f"the data has {', '.join(have.modalities)}")
        for m in mods:
            if m not in have.modalities:
                raise ConfigError(f"dataset {c['data']['name']} has no modality {m!r} (has: "
                                  f"{', '.join(have.modalities)})", key="data.modalities",
                                  hint=f"nearest: {nearest(m, have.modalities)!r}")
        dup = sorted({m for m in mods if mods.count(m) > 1})
        if dup:
            raise ConfigError(f"lists {dup[0]!r} twice", key="data.modalities")
    if c["data"].get("pipeline") == "cache" and entry.meta.get("in_memory"):
        raise ConfigError(f"dataset {entry.name} is built in memory and has no tensor cache", key="data.pipeline",
                          hint="use data.pipeline=files (the cache is for cremad, ave and ks)")
    mods = list(mods or have.modalities)
    method = METHODS.get(c["method"]["name"])
    if have.task not in method.obj.tasks:
        raise ConfigError(f"method {method.name} handles {' and '.join(method.obj.tasks)} targets; dataset "
                          f"{c['data']['name']} here has a {have.task} target", key="method.name")
    lo, hi = method.meta.get("min_modalities", 1), method.meta.get("max_modalities")
    if len(mods) < lo or (hi is not None and len(mods) > hi):
        need = f"exactly {lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
        raise ConfigError(f"method {method.name} needs {need} modalities; this trial has {len(mods)} "
                          f"({', '.join(mods)})", key="data.modalities" if c["data"].get("modalities") else "method.name")
    method.obj.check_config(plugin_params(c["method"], method.params), c, mods)
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


# Limits on the YAML files raygap reads (grids, profiles, trial configs). The shipped grids
# are a few KB with a nesting depth under 8; these bounds turn hostile or broken files into
# one line within a second instead of a traceback or minutes of parsing.
MAX_FILE_BYTES = 1 << 20          # 1 MiB
MAX_DEPTH = 32                    # nesting levels of mappings / lists
MAX_VALUES = 200_000              # values after YAML aliases are expanded


class _SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys and nesting deeper than MAX_DEPTH
    (PyYAML's composer is recursive: a 5,000-deep file would end in a RecursionError)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_mapping_no_duplicates(loader: _SafeLoader, node):
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":       # `<<: *base` may be overridden
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "a mapping key must be a plain value",
                                                    key_node.start_mark) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=True)


_SafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_no_duplicates)

_BOMS = [(b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
         (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16")]


def _decode(data: bytes, file: str) -> str:
    for bom, enc in _BOMS:
        if data.startswith(bom):
            raise ConfigError(f"is {enc} text; raygap reads UTF-8", file=file, hint="save the file as UTF-8")
    if b"\x00" in data:
        raise ConfigError("contains NUL bytes: not a text file (or UTF-16 without a byte-order mark)",
                          file=file, hint="give a UTF-8 YAML file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError(f"not UTF-8 text: byte 0x{data[e.start]:02x} at line {line}, column {col}", file=file,
                          hint="save the file as UTF-8") from None


def _check_size_and_depth(doc, file: str) -> None:
    """Walk the loaded document without recursion: at most MAX_VALUES values (aliases
    expanded) and MAX_DEPTH levels."""
    stack = [(doc, 1)]
    n = 0
    while stack:
        obj, depth = stack.pop()
        n += 1
        if n > MAX_VALUES:
            raise ConfigError(f"holds more than {MAX_VALUES} values once YAML aliases are expanded", file=file)
        if isinstance(obj, (dict, list)):
            if depth > MAX_DEPTH:
                raise ConfigError(f"nested deeper than {MAX_DEPTH} levels (through YAML aliases)", file=file)
            stack.extend((v, depth + 1) for v in (obj.values() if isinstance(obj, dict) else obj))


def read_yaml(path: str | Path) -> Any:
    """Read one YAML file as raygap's inputs allow: a regular UTF-8 file of at most
    MAX_FILE_BYTES, one document, no duplicate keys, nesting at most MAX_DEPTH deep.
    Any problem is one :class:`ConfigError` line naming the file."""
    p = Path(path)
    file = str(p)
    if "\x00" in file:
        raise ConfigError("a file name cannot hold a NUL character", file=file.replace("\x00", "\\0"))
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ConfigError("no such file", file=file) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", file=file) from None
    import stat as _stat
    if not _stat.S_ISREG(st.st_mode):
        raise ConfigError("not a regular file", file=file, hint="give a YAML file")
    if st.st_size > MAX_FILE_BYTES:
        raise ConfigError(f"is {st.st_size / 2**20:.1f} MiB; raygap reads YAML files of at most "
                          f"{MAX_FILE_BYTES >> 20} MiB", file=file,
                          hint="a grid lists rows, columns and seeds; use `sweep` for long value lists")
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", file=file) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"is larger than {MAX_FILE_BYTES >> 20} MiB", file=file)
    text = _decode(data, file)
    try:
        doc = yaml.load(text, Loader=_SafeLoader)  # noqa: S506 -- a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}invalid YAML: {problem}", file=file) from None
    except RecursionError:
        raise ConfigError(f"invalid YAML: nested too deeply (at most {MAX_DEPTH} levels)", file=file) from None
    _check_size_and_depth(doc, file)
    return doc


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
