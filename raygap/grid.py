"""Grid files -> fully resolved, validated trial configs.

A grid (``grids/*.yaml``) has ``name``, ``description``, ``base`` (a trial config shared
by every trial), ``rows`` (label -> overrides), ``sweep`` (key -> values, expanded as a
cartesian product into more rows labelled ``key=value, ...`` with the last part of the
key), ``columns`` (key -> values, crossed with every row), ``seeds``, ``metrics``,
``resources``, and optional ``column_labels`` (value -> header) and ``notes``
(row label -> footnote).

Profiles (``grids/profiles/NAME.yaml``) overlay every grid: ``overlay`` (merged onto
every trial), ``overlay_by`` (``{dotted key: {value: overrides}}``, applied to the trials
whose resolved value of that key matches -- method-specific keys are only valid for
their method), and ``columns`` / ``seeds`` / ``resources`` (replacing the grid's).

Merge order per trial: base -> profile.overlay -> matching profile.overlay_by -> row ->
column values -> ``--set``. Rows and columns win over profiles, ``--set`` over all.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import TrialConfig, deep_merge, nearest, parse_set, read_yaml, resolve, set_dotted
from .errors import ConfigError
from .registry import METHODS

GRID_KEYS = ["name", "description", "base", "rows", "sweep", "columns", "seeds", "metrics", "resources",
             "column_labels", "notes"]
PROFILE_KEYS = ["description", "overlay", "overlay_by", "columns", "seeds", "resources"]
PROFILES_DIR = Path(__file__).resolve().parent.parent / "grids" / "profiles"


@dataclass
class TrialSpec:
    label: str
    column: dict[str, Any]
    seed: int
    config: TrialConfig
    key: str
    resources: dict


@dataclass
class Grid:
    name: str
    description: str
    path: Path
    metrics: list[str]
    row_labels: list[str]
    columns: dict[str, list]
    column_labels: dict
    seeds: list[int]
    notes: dict[str, str]
    trials: list[TrialSpec] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    profile: str | None = None

    def distinct(self) -> dict[str, TrialSpec]:
        out: dict[str, TrialSpec] = {}
        for t in self.trials:
            out.setdefault(t.key, t)
        return out


def _get(d: dict, dotted: str):
    cur: Any = d
    for p in dotted.split("."):
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return cur


def _mapping(v, what: str, file: str) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ConfigError(f"expected a mapping, got {type(v).__name__}", file=file, key=what)
    return v


def _list(v, what: str, file: str) -> list:
    if not isinstance(v, list) or not v:
        raise ConfigError(f"expected a non-empty list, got {v!r}", file=file, key=what)
    return v


def load_profile(name: str, profiles_dir: Path | None = None) -> dict:
    d = Path(profiles_dir or PROFILES_DIR)
    path = d / f"{name}.yaml"
    if not path.exists():
        have = sorted(p.stem for p in d.glob("*.yaml"))
        raise ConfigError(f"no profile {name!r}", file=str(path), key="--profile",
                          hint=f"choices: {', '.join(have)}; nearest: {nearest(name, have)!r}" if have else None)
    doc = read_yaml(path) or {}
    if not isinstance(doc, dict):
        raise ConfigError("a profile must be a mapping", file=str(path))
    for k in doc:
        if k not in PROFILE_KEYS:
            raise ConfigError("unknown key", file=str(path), key=str(k),
                              hint=f"nearest valid key: {nearest(k, PROFILE_KEYS)}")
    doc["_path"] = str(path)
    return doc


def _sweep_rows(sweep: dict, file: str) -> dict[str, dict]:
    keys = list(sweep)
    if not keys:
        return {}
    for k in keys:
        _list(sweep[k], f"sweep.{k}", file)
    rows = {}
    for combo in itertools.product(*(sweep[k] for k in keys)):
        label = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, combo, strict=True))
        over: dict = {}
        for k, v in zip(keys, combo, strict=True):
            set_dotted(over, k, v)
        rows[label] = over
    return rows


def load_grid(path: str | Path, profile: str | None = None, sets: list[str] | None = None,
              skip_missing: bool = False, profiles_dir: Path | None = None) -> Grid:
    from .plugins import load_all

    load_all()
    file = str(path)
    doc = read_yaml(path)
    if not isinstance(doc, dict):
        raise ConfigError("a grid must be a mapping", file=file)
    for k in doc:
        if k not in GRID_KEYS:
            raise ConfigError("unknown key", file=file, key=str(k), hint=f"nearest valid key: {nearest(k, GRID_KEYS)}")
    name = str(doc.get("name") or Path(path).stem)
    base = _mapping(doc.get("base"), "base", file)
    rows = dict(_mapping(doc.get("rows"), "rows", file))
    for label, over in rows.items():
        _mapping(over, f"rows.{label}", file)
    rows.update(_sweep_rows(_mapping(doc.get("sweep"), "sweep", file), file))
    if not rows:
        raise ConfigError("the grid has no rows (give `rows` or `sweep`)", file=file, key="rows")
    columns = _mapping(doc.get("columns"), "columns", file)
    seeds = doc.get("seeds", [0])
    resources = _mapping(doc.get("resources"), "resources", file)
    prof = load_profile(profile, profiles_dir) if profile else {}
    if prof:
        columns = _mapping(prof.get("columns"), "columns", prof["_path"]) or columns
        seeds = prof.get("seeds", seeds)
        resources = {**resources, **_mapping(prof.get("resources"), "resources", prof["_path"])}
    for k, v in columns.items():
        _list(v, f"columns.{k}", file)
    seeds = _list(seeds, "seeds", file)
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ConfigError(f"seeds must be non-negative integers, got {s!r}", file=file, key="seeds")
    metrics = doc.get("metrics", ["acc"])
    if not isinstance(metrics, list) or not metrics:
        raise ConfigError(f"expected a non-empty list, got {metrics!r}", file=file, key="metrics")
    overlay = _mapping(prof.get("overlay"), "overlay", prof.get("_path", file))
    overlay_by = _mapping(prof.get("overlay_by"), "overlay_by", prof.get("_path", file))
    set_items = parse_set(sets)

    grid = Grid(name=name, description=str(doc.get("description", "")), path=Path(path), metrics=list(metrics),
                row_labels=list(rows), columns=columns, column_labels=_mapping(doc.get("column_labels"), "column_labels", file),
                seeds=seeds, notes={str(k): str(v) for k, v in _mapping(doc.get("notes"), "notes", file).items()},
                profile=profile)
    col_keys = list(columns)
    col_values = list(itertools.product(*(columns[k] for k in col_keys))) if col_keys else [()]
    missing: dict[str, str] = {}
    for label, over in rows.items():
        for combo in col_values:
            column = dict(zip(col_keys, combo, strict=True))
            where = f"rows.{label}" + (f" [{', '.join(f'{k}={v}' for k, v in column.items())}]" if column else "")
            raw = deep_merge(deep_merge(base, overlay), {})
            probe = deep_merge(deep_merge(raw, over), {k: v for k, v in column.items()})
            for k, v in set_items:
                set_dotted(probe, k, v)
            for key, by_value in overlay_by.items():
                val = _get(probe, key)
                if val is not None and str(val) in {str(x) for x in _mapping(by_value, f"overlay_by.{key}", prof.get("_path", file))}:
                    match = {str(x): y for x, y in by_value.items()}[str(val)]
                    raw = deep_merge(raw, _mapping(match, f"overlay_by.{key}.{val}", prof.get("_path", file)))
            raw = deep_merge(raw, over)
            for k, v in column.items():
                set_dotted(raw, k, copy.deepcopy(v))
            for k, v in set_items:
                set_dotted(raw, k, v)
            raw["resources"] = {**resources, **(raw.get("resources") or {})}
            method = _get(raw, "method.name") or "concat"
            if method not in METHODS:
                missing[label] = method
                continue
            for seed in seeds:
                raw["seed"] = seed
                try:
                    cfg = resolve(raw)
                except ConfigError as e:
                    e.key = f"{where}: {e.key}" if e.key else where
                    raise e.with_file(file) from None
                grid.trials.append(TrialSpec(label, column, seed, cfg, cfg.key(), dict(cfg.to_dict()["resources"])))
    if missing:
        if not skip_missing:
            labels = ", ".join(f"{lab!r}" for lab in missing)
            raise ConfigError(f"rows {labels} use methods not implemented yet "
                              f"({', '.join(sorted(set(missing.values())))}; implemented: {', '.join(METHODS.names())})",
                              file=file, key="rows", hint="pass --skip-missing to run the other rows")
        grid.skipped = [(lab, f"method {m!r} is not implemented yet") for lab, m in missing.items()]
        grid.row_labels = [r for r in grid.row_labels if r not in missing]
    return grid


def describe(grid: Grid, store) -> str:
    """The --dry-run listing: every trial with its hash and stored status, then totals."""
    status = store.status_of([t.key for t in grid.trials])
    lines = [f"grid {grid.name}" + (f" (profile {grid.profile})" if grid.profile else "")]
    for t in grid.trials:
        col = ", ".join(f"{k}={v}" for k, v in t.column.items()) or "-"
        lines.append(f"  {t.key}  {status.get(t.key, 'new'):8s}  {t.label} | {col} | seed {t.seed}")
    distinct = grid.distinct()
    done = sum(1 for k in distinct if status.get(k) == "done")
    for label, reason in grid.skipped:
        lines.append(f"  skipped row {label!r}: {reason}")
    lines.append(f"{len(grid.trials)} cells, {len(distinct)} distinct trials: {done} already done (reused), "
                 f"{len(distinct) - done} to run")
    return "\n".join(lines)


def count_trials(paths: list[str | Path], profile: str | None = None, skip_missing: bool = True) -> tuple[int, int]:
    """(distinct trials over all the grids, naive count summing every grid's cells)."""
    keys, naive = set(), 0
    for p in paths:
        g = load_grid(p, profile=profile, skip_missing=skip_missing)
        naive += len(g.trials)
        keys |= {t.key for t in g.trials}
    return len(keys), naive
