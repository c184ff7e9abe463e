"""Typed, validated trial configs.

A trial config is one YAML mapping with the sections ``seed``, ``data``, ``model``,
``method``, ``optim``, ``train`` and ``resources``. Each section is described by a
dataclass below; ``data`` and ``method`` also accept the keys of the chosen dataset's
or method's own params dataclass (from the registries), flat in the same mapping::

    data:   {name: avdigits, visual_corrupt: 0.3}
    method: {name: gap_adaptive, rho: 0.95}

Field metadata drives validation (:mod:`raygap.validate`): ``range=(lo, hi)`` (inclusive),
``choices=[...]``, ``registry=<Registry>`` (choices are its names), ``help``. Unknown keys are
rejected with the nearest valid key; every error is a :class:`ConfigError` (one line, exit 2).
A file is read by :func:`raygap.safe_yaml.read_yaml`, ``--set`` items by
:func:`raygap.dotted.parse_set`.

``load_config`` / ``resolve`` return a :class:`TrialConfig`: the fully resolved nested
dict (all defaults filled in) plus attribute access per section. Its ``key()`` is the
hash that identifies a trial (resources excluded).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .version import RESULTS_VERSION
from .data.base import DataCommon
from .data.splits import split_digest
from .dotted import flatten, get_dotted, parse_set, set_dotted
from .errors import ConfigError, nearest
from .params import F
from .plugins import KEY as PLUGINS_KEY, load_all, load_plugins, plugin_list
from .registry import BACKBONES, DATASETS, FUSIONS, METHODS
from .safe_yaml import read_yaml
from .validate import coerce, field_default, plugin_params, validate_params


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
                              "stage (records whose stage is not 'warmup'; docs/method.md); chosen when a table "
                              "is made, from the stored history: not part of the trial key")
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
    compile: bool = F(False, help="torch.compile each encoder and the fusion head for two batch shapes: "
                                  "batch_size rows in train mode, eval_batch_size rows in eval mode; other sizes "
                                  "(last batches, subsets) run eagerly, nothing padded or dropped; a module needing "
                                  "more graphs raises (minutes of compilation per trial; on the CPU a C++ compiler)")


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
# train.select_from: which epochs a table may report, chosen at export from the stored history
# (raygap.selection): what the trial computes does not depend on it
NOT_HASHED_KEYS = {"train": {"checkpoint_every", "channels_last", "compile", "select_from"}, "data": {"preload"}}
# keys read only when a table is made: outside a shared warm-up's key too (two rows selecting
# from different stages of one training share its warm-up)
EXPORT_ONLY_KEYS = {"train": {"select_from"}}
# keys added after results were stored, hashed only when set away from the value that reproduces
# those results (so a stored trial keeps its identity): {section: {key: (that value, keys that only
# matter when it is changed)}}
HASHED_UNLESS = {"data": {"pipeline": ("files", ("cache_side",))}}


# ----------------------------------------------------------------------------- config
class Section(types.SimpleNamespace):
    def to_dict(self) -> dict:
        return dict(vars(self))


class TrialConfig:
    """A fully resolved, validated trial config."""

    def __init__(self, resolved: dict, _same_but_seed: "TrialConfig | None" = None):
        self._d = resolved
        self.seed: int = resolved["seed"]
        self._flat: dict | None = None              # flatten(self._d), made once (see flat)
        self._sibling = _same_but_seed              # a config equal to this one but for the seed
        for s in SECTIONS:
            setattr(self, s, Section(**resolved[s]))

    def to_dict(self) -> dict:
        return copy.deepcopy(self._d)

    def flat(self) -> dict:
        """The resolved config as dotted keys -> values (``train.epochs``), as ``flatten(to_dict())``
        gives, without copying the whole config first (lists are copied)."""
        if self._flat is None:
            self._flat = ({**self._sibling._flat_once(), "seed": self.seed} if self._sibling is not None
                          else flatten(self._d))
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._flat.items()}

    def __getstate__(self):          # pickled (to a Ray worker): the config itself, not the caches
        return {k: v for k, v in vars(self).items() if k not in ("_flat", "_sibling")}

    def __setstate__(self, state):
        vars(self).update(state, _flat=None, _sibling=None)

    def _flat_once(self) -> dict:
        if self._flat is None:
            self.flat()
        return self._flat

    def with_seed(self, seed) -> "TrialConfig":
        """This config with another seed (checked as :func:`resolve` checks it), every other
        value already validated: a grid's seeds of one cell resolve once, not once each."""
        return TrialConfig({**_plain_copy(self._d), "seed": _seed(seed)}, _same_but_seed=self)

    def part_json(self, *sections: str) -> str:
        """These sections as one canonical JSON string (sorted keys), copying nothing."""
        return json.dumps([self._d[s] for s in sections], sort_keys=True, default=str)

    def part(self, *sections: str) -> dict:
        """A copy of only these sections of :meth:`to_dict` (a 10,000-cell grid copies much less)."""
        return {s: copy.deepcopy(self._d[s]) for s in sections}

    def hashed_part(self) -> dict:
        out = {k: ({kk: vv for kk, vv in v.items() if kk not in NOT_HASHED_KEYS[k]} if k in NOT_HASHED_KEYS else v)
               for k, v in self._d.items() if k not in NOT_HASHED}
        for section, keys in HASHED_UNLESS.items():
            for key, (old, riders) in keys.items():
                if out[section].get(key, old) == old:
                    out[section] = {k: v for k, v in out[section].items() if k != key and k not in riders}
        return out

    def key(self, split: Any = ...) -> str:
        """Identity of the trial: hash of the resolved config (resources excluded), the
        results version of the code (bumped by changes that alter results) and, for a file
        dataset whose split lists are found here, their digest (:mod:`raygap.data.splits`;
        ``split``: that digest given, None for none)."""
        method_version = METHODS.get(self._d["method"]["name"]).meta.get("version", 1)
        if split is ...:
            split = split_digest(self._d["data"]["name"], self._d["data"])
        payload = {"config": self.hashed_part(), "results_version": RESULTS_VERSION, "method_version": method_version}
        if split is not None:
            payload["split"] = split
        payload = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def warmup(self) -> tuple[str, int] | None:
        """``(warm-up key, W)`` when the method declares a warm-up stage other trials may share
        (``Method.shared_warmup``): the key hashes everything the first W epochs depend on --
        the whole config outside ``method:`` (resources too: a CPU trial's threads follow
        them) but the export-only keys, the method's name, version and the keys it names. None: nothing to share."""
        name = self._d["method"]["name"]
        entry = METHODS.get(name)
        share = entry.obj.shared_warmup(self.params("method"))
        if share is None:
            return None
        W, keys = share
        rest = {k: ({kk: vv for kk, vv in v.items() if kk not in EXPORT_ONLY_KEYS[k]} if k in EXPORT_ONLY_KEYS else v)
                for k, v in self._d.items() if k != "method"}
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
    load_all()
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"a trial config must be a mapping, got {type(raw).__name__}")
    for k in raw:
        if k not in TOP_LEVEL:
            raise ConfigError("unknown key", key=str(k), hint=f"nearest valid key: {nearest(k, TOP_LEVEL)}")
    out: dict[str, Any] = {"seed": _seed(raw.get("seed", 0))}
    for s, cls in SECTIONS.items():
        vals = {} if raw.get(s) is None else raw[s]        # a bare `train:` is YAML's null: all defaults
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


def _plain_copy(o):
    """A deep copy of a resolved config's values (dicts, lists, tuples, scalars), several times
    faster than ``copy.deepcopy``; anything else is deep-copied."""
    if isinstance(o, dict):
        return {k: _plain_copy(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_plain_copy(v) for v in o]
    if o is None or isinstance(o, (str, int, float, bool)):
        return o
    return copy.deepcopy(o)


def _seed(value) -> int:
    seed = coerce(value, int, "seed")
    if not (0 <= seed < 2**31):
        raise ConfigError(f"{seed} is out of range [0, 2**31)", key="seed")
    return seed


def default_of(key: str, raw: dict | None = None):
    """The default a trial gets for ``key`` when no layer sets it: the schema's
    (``method.name`` -> ``concat``, ``data.name`` -> ``avdigits``) or, for a key of a dataset's
    or method's own params, that of the dataset / method the raw (unresolved) trial ``raw``
    names (``method.gap`` of ``gap_adaptive`` -> ``prob``); None where there is none (``seed``,
    a typo, a key the named plug-in lacks)."""
    section, _, name = key.partition(".")
    if section not in SECTIONS:
        return None
    classes = [SECTIONS[section]]
    if section in PLUGIN_REGISTRY and raw is not None:
        plugin = get_dotted(raw, f"{section}.name") or default_of(f"{section}.name")
        if isinstance(plugin, str) and plugin in PLUGIN_REGISTRY[section]:
            classes.insert(0, PLUGIN_REGISTRY[section].get(plugin).params)     # its keys win, as in resolve
    for cls in filter(None, classes):
        f = {f.name: f for f in dataclasses.fields(cls)}.get(name)
        if f is not None:
            return field_default(f)
    return None


def check_task(method: str, dataset: str, task: str) -> None:
    """A method is defined for some targets only (``Method.tasks``): ConfigError (on
    ``method.name``) when ``dataset``'s ``task`` is not one of them. Checked when a config is
    validated (from the dataset's declared layout) and again when a trial has its data."""
    tasks = METHODS.get(method).obj.tasks
    if task not in tasks:
        raise ConfigError(f"method {method} handles {' and '.join(tasks)} targets; dataset "
                          f"{dataset} here has a {task} target", key="method.name")


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
    check_task(method.name, c["data"]["name"], have.task)
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


def load_config(path: str | Path, sets: list[str] | None = None) -> TrialConfig:
    """A trial config file (with ``--set`` items); its ``plugins:`` are imported first."""
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError("a trial config must be a mapping", file=str(path))
    load_plugins(plugin_list(raw.pop(PLUGINS_KEY, None), str(path)), str(path))
    try:
        for k, v in parse_set(sets):
            set_dotted(raw, k, v)
        return resolve(raw)
    except ConfigError as e:
        raise e.with_file(str(path)) from None
