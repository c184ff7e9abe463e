"""Grid files -> fully resolved, validated trial specs (no Ray here).

Grid file (``grids/*.yaml``)
----------------------------
``name``          the grid's name (default: the file's stem); its tables go to
                  ``results/<name>/<profile>/``. 1-64 ASCII letters, digits, ``.``, ``_``,
                  ``-``, starting with a letter or digit; not ``ray`` or ``train`` (folders
                  raygap uses) and not the name of a file in the results folder
``description``   free text, printed in the exported tables
``base``          a trial config shared by every trial
``base_by``       optional: ``{dotted key: {value: overrides}}`` -- part of the base, applied
                  to the trials whose resolved key has that value (like a profile's
                  ``overlay_by``, one layer lower: a profile's overlay wins over it). Table IV
                  uses it for Adam's learning rate, which the paper does not give.
``rows``          label -> overrides (nested or dotted keys). A row may carry ``note: text``,
                  a footnote for that row in the exported tables (it is not a config key),
                  and ``by: {dotted key: {value: overrides}}``: overrides of this row for the
                  trials where the key has that value, e.g. a baseline's hyperparameter per
                  dataset: ``OGM-GE: {method: {name: ogm_ge}, by: {data.name: {ks: {method:
                  {alpha: 0.5}}}}}`` (applied over the row, under the column values)
``sweep``         dotted key -> list of values, expanded as a cartesian product into more
                  rows, after the ``rows``. A sweep row is labelled ``leaf=value`` with the
                  last part of the key (``rho=0.95``, ``purify_tau=0.5``), joined with
                  ``", "`` for several keys; the full dotted key is used where two swept keys
                  share a last part. A label that collides with a row's is an error.
``columns``       dotted key -> list of values, crossed with every row
                  (typically ``data.name: [cremad, ave, ks]``)
``seeds``         list of distinct non-negative integers; each (row, column) runs per seed
``metrics``       the metric names the tables show (``acc``, ``macro_f1``, ``data_pct``...);
                  each must be one some trial of the grid reports (checked at load)
``resources``     per trial, e.g. ``{cpu: 4, gpu: 0.5}``
``column_labels`` optional: column value -> header (``cremad: CREMA-D``)
``notes``         optional: row label -> footnote (the same as a row's ``note``)
``reference``     optional: the row every other row is compared with, seed by seed (paired
                  differences, 95 % intervals, adjusted p-values under the exported table)
``paper_results`` optional: the published numbers, ``{row label: {column value: {metric:
                  value}}}`` in the table's units (percent as printed); ``raygap report``
                  sets ours beside them. Labels, column values and metrics must be the grid's

Profiles (``grids/profiles/NAME.yaml``) overlay any grid:
``description``; ``overlay`` (merged onto every trial); ``overlay_by``
(``{dotted key: {value: overrides}}``: applied to the trials whose resolved value of that
key -- defaults included -- equals ``value``; needed because method- and dataset-specific
keys are rejected for other methods and datasets); ``columns``, ``seeds`` (replace the
grid's) and ``resources`` (merged over the grid's).

Merge order per trial::

    grid resources -> base -> matching base_by -> profile resources -> profile.overlay
      -> matching profile.overlay_by -> row -> matching row by -> column values -> --set

so rows and columns win over profiles, profiles over the base, ``--set`` over everything.
``--set seed=N`` replaces the seeds list with ``[N]``. A profile or ``--set`` never hides a
problem: the grid file is expanded and validated on its own first, so a bad value in it is
reported even where a profile would override it.
``base_by`` and ``overlay_by`` match against the trial as it would be with the row, column
and ``--set`` applied, so a row that switches ``method.name`` gets that method's overlay.

Every trial is validated with :func:`raygap.config.resolve` before anything runs; an
error is one :class:`ConfigError` line naming the file and the row / column / layer the
offending key came from, e.g.
``grids/x.yaml: rows.Full: method.rhoo: unknown key (nearest valid key: method.rho)``.

Two cells that resolve to the same config have the same key: they are one trial (both
memberships are kept in ``Grid.trials``; ``Grid.distinct()`` has it once).

Limits (each one ConfigError line, within seconds): the file is UTF-8 YAML of at most
1 MiB, nested at most 32 deep, without duplicate keys, at most 200,000 values once YAML
aliases are expanded (raygap.safe_yaml.read_yaml); a grid expands to at most 10,000 cells.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import TrialConfig, default_of, resolve, trial_modalities
from .dotted import deep_merge, flatten, get_dotted, parse_set, set_dotted
from .errors import ConfigError, nearest
from .metrics import metric_names
from .registry import METHODS
from .safe_yaml import read_yaml

GRID_KEYS = ["name", "description", "base", "base_by", "rows", "sweep", "columns", "seeds", "metrics", "resources", "reference", "paper_results",
             "column_labels", "notes"]
PROFILE_KEYS = ["description", "overlay", "overlay_by", "columns", "seeds", "resources"]
ROW_NOTE = "note"
ROW_BY = "by"
PROFILES_DIR = Path(__file__).resolve().parent.parent / "grids" / "profiles"

# A grid's and a profile's names become folder names (results/<grid>/<profile>/): plain
# ASCII, short, and not a folder raygap uses for something else.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RESERVED_NAMES = {"ray": "Tune's storage folder (results/ray)", "train": "raygap train's folder (results/train)"}
NO_PROFILE = "noprofile"          # the results folder of a grid run without a profile
MAX_CELLS = 10_000                # the paper's six tables hold 375 cells; a grid beyond this is a mistake


def check_name(name, what: str, file: str | None, key: str) -> str:
    """``name`` if it is safe as a folder name under results/, else one ConfigError line."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"expected a plain name, got {_short(name)}", file=file, key=key)
    shown = _short(name) if len(name) <= 60 else _short(name[:40]) + f" ({len(name)} characters)"
    if not SAFE_NAME.fullmatch(name):
        raise ConfigError(f"{shown} cannot name a folder (results/<{what}>/): use 1-64 ASCII letters, digits, "
                          "'.', '_' or '-', starting with a letter or digit", file=file, key=key,
                          hint=f"e.g. {re.sub(r'[^A-Za-z0-9._-]', '_', name.strip())[:64].lstrip('._-') or what}")
    if name in RESERVED_NAMES or (what == "profile" and name == NO_PROFILE):
        used = RESERVED_NAMES.get(name, "the folder of runs without a profile")
        raise ConfigError(f"{name!r} is reserved: results/{name} is {used}", file=file, key=key,
                          hint=f"e.g. {name}_grid")
    return name


@dataclass
class TrialSpec:
    """One cell membership: (row label, column values, seed) -> a resolved trial."""
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
    row_labels: list[str]               # as in the file, then sweep rows; skipped rows removed
    columns: dict[str, list]            # after the profile's replacement
    column_labels: dict
    seeds: list[int]
    notes: dict[str, str]               # row label -> footnote
    trials: list[TrialSpec] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (row label, reason)
    profile: str | None = None
    resources: dict = field(default_factory=dict)
    sets: list[str] = field(default_factory=list)       # the --set items, as given
    reference: str | None = None                        # the row the others are compared with
    paper: dict = field(default_factory=dict)           # paper_results: label -> column value -> metric -> number

    @property
    def variant(self) -> str:
        """The results sub-folder of this expansion: the profile's name (``noprofile``
        without one), plus ``+set-<hash>`` when ``--set`` items change the trials, so tables
        of different settings never share files."""
        v = self.profile or NO_PROFILE
        if self.sets:
            v += "+set-" + hashlib.sha256(json.dumps(sorted(self.sets)).encode()).hexdigest()[:8]
        return v

    @property
    def store_name(self) -> str:
        """The name the store records this expansion's cells under (``table3/demo``)."""
        return f"{self.name}/{self.variant}"

    def distinct(self) -> dict[str, TrialSpec]:
        """key -> the first cell that uses it (each distinct trial once, in grid order)."""
        out: dict[str, TrialSpec] = {}
        for t in self.trials:
            out.setdefault(t.key, t)
        return out

    def column_combos(self) -> list[dict]:
        """The column value combinations, in table order."""
        keys = list(self.columns)
        return [dict(zip(keys, c, strict=True)) for c in itertools.product(*(self.columns[k] for k in keys))]

    def cell(self, label: str, column: dict) -> list[TrialSpec]:
        """The trials (one per seed) of one table cell."""
        return [t for t in self.trials if t.label == label and t.column == column]

    def column_header(self, column: dict) -> str:
        return " / ".join(str(label_for(self.column_labels, v)) for v in column.values()) or "result"


def label_for(labels: dict, value) -> Any:
    if value in labels:
        return labels[value]
    return {str(k): v for k, v in labels.items()}.get(str(value), value)


# ----------------------------------------------------------------------------- helpers
def _resolved_value(raw: dict, dotted: str):
    """The value of ``dotted`` in a raw (unresolved) trial, falling back to the section
    default (``method.name`` -> ``concat``, ``data.name`` -> ``avdigits``...)."""
    v = get_dotted(raw, dotted)
    return default_of(dotted) if v is None else v


def _mapping(v, what: str, file: str, *, allow_none: bool = True) -> dict:
    if v is None and allow_none:
        return {}
    if not isinstance(v, dict):
        raise ConfigError(f"expected a mapping, got {_short(v)}", file=file, key=what)
    return v


def _list(v, what: str, file: str) -> list:
    if not isinstance(v, list):
        raise ConfigError(f"expected a list, got {_short(v)}", file=file, key=what,
                          hint=f"write {what}: [{v!r}]" if isinstance(v, (int, float, str)) else None)
    if not v:
        raise ConfigError("expected a non-empty list", file=file, key=what)
    return v


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _norm(layer: dict) -> dict:
    """A layer with dotted keys expanded (so it can be flattened to compare keys)."""
    return deep_merge({}, layer)


def _check_seeds(seeds, file: str, what: str = "seeds") -> list[int]:
    seeds = _list(seeds, what, file)
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not (0 <= s < 2**31):
            raise ConfigError(f"seeds must be integers in [0, 2**31), got {s!r}", file=file, key=what)
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise ConfigError(f"duplicate seeds {dup}", file=file, key=what)
    return list(seeds)


def _check_columns(columns: dict, file: str, what: str = "columns") -> dict[str, list]:
    out = {}
    for k, v in columns.items():
        vals = _list(v, f"{what}.{k}", file)
        for x in vals:
            if isinstance(x, (dict, list)):
                raise ConfigError(f"column values must be scalars, got {_short(x)}", file=file, key=f"{what}.{k}")
        if len({str(x) for x in vals}) != len(vals):
            raise ConfigError(f"duplicate values in {vals}", file=file, key=f"{what}.{k}")
        out[str(k)] = list(vals)
    return out


def load_profile(name: str, profiles_dir: Path | str | None = None) -> dict:
    """Read and check ``profiles_dir/NAME.yaml`` (default ``grids/profiles``)."""
    d = Path(profiles_dir or PROFILES_DIR)
    check_name(name, "profile", None, "--profile")
    path = d / f"{name}.yaml"
    if not path.exists():
        have = sorted(p.stem for p in d.glob("*.yaml"))
        raise ConfigError(f"no profile {name!r}", file=str(path), key="--profile",
                          hint=f"choices: {', '.join(have)}; nearest: {nearest(name, have)!r}" if have else None)
    file = str(path)
    doc = read_yaml(path)
    doc = {} if doc is None else doc
    if not isinstance(doc, dict):
        raise ConfigError("a profile must be a mapping", file=file)
    for k in doc:
        if k not in PROFILE_KEYS:
            raise ConfigError("unknown key", file=file, key=str(k),
                              hint=f"nearest valid key: {nearest(k, PROFILE_KEYS)}")
    out = {"_path": file, "description": str(doc.get("description") or "")}
    out["overlay"] = _mapping(doc.get("overlay"), "overlay", file)
    out["overlay_by"] = _by_value(doc.get("overlay_by"), "overlay_by", file)
    if doc.get("columns") is not None:
        out["columns"] = _check_columns(_mapping(doc["columns"], "columns", file), file)
    if doc.get("seeds") is not None:
        out["seeds"] = _check_seeds(doc["seeds"], file)
    out["resources"] = _mapping(doc.get("resources"), "resources", file)
    return out


def _by_value(doc, what: str, file: str) -> dict[str, dict[str, dict]]:
    """``{dotted key: {value: overrides}}`` checked, with the values as strings."""
    out: dict[str, dict[str, dict]] = {}
    for key, by_value in _mapping(doc, what, file).items():
        by_value = _mapping(by_value, f"{what}.{key}", file, allow_none=False)
        out[str(key)] = {str(v): _mapping(over, f"{what}.{key}.{v}", file) for v, over in by_value.items()}
    return out


def _paper_results(doc, rows: dict, columns: dict, metrics: list, file: str) -> dict:
    """``paper_results`` checked against the grid's rows, column values and metrics."""
    out: dict = {}
    values = {str(v) for vs in columns.values() for v in vs}
    for label, per_col in _mapping(doc, "paper_results", file).items():
        if str(label) not in rows:
            raise ConfigError(f"{label!r} is not a row", file=file, key="paper_results",
                              hint=f"nearest row: {nearest(str(label), rows)!r}")
        for col, per_metric in _mapping(per_col, f"paper_results.{label}", file).items():
            if str(col) not in values:
                raise ConfigError(f"{col!r} is not a column value", file=file, key=f"paper_results.{label}",
                                  hint=f"nearest: {nearest(str(col), values)!r}")
            for m, v in _mapping(per_metric, f"paper_results.{label}.{col}", file).items():
                if m not in metrics or not isinstance(v, (int, float)) or isinstance(v, bool):
                    raise ConfigError(f"{m}: {v!r} is not a number for one of the grid's metrics ({', '.join(metrics)})",
                                      file=file, key=f"paper_results.{label}.{col}")
                out.setdefault(str(label), {}).setdefault(str(col), {})[str(m)] = float(v)
    return out


def _sweep_rows(sweep: dict, file: str) -> dict[str, dict]:
    keys = [str(k) for k in sweep]
    if not keys:
        return {}
    for k in keys:
        _list(sweep[k], f"sweep.{k}", file)
    leaves = [k.split(".")[-1] for k in keys]
    names = [leaf if leaves.count(leaf) == 1 else k for k, leaf in zip(keys, leaves, strict=True)]
    rows = {}
    for combo in itertools.product(*(sweep[k] for k in keys)):
        label = ", ".join(f"{n}={v}" for n, v in zip(names, combo, strict=True))
        over: dict = {}
        for k, v in zip(keys, combo, strict=True):
            set_dotted(over, k, copy.deepcopy(v))
        rows[label] = over
    return rows


def _where(label: str, column: dict) -> str:
    col = ", ".join(f"{k}={v}" for k, v in column.items())
    return f"rows.{label}" + (f" [{col}]" if col else "")


def _blame(e: ConfigError, layers: list[tuple[str, str | None, dict]], label: str, column: dict,
           grid_file: str) -> ConfigError:
    """Point a trial's validation error at the layer that set the offending key."""
    source = None
    if e.key:
        for name, file, layer in reversed(layers):
            flat = flatten(_norm(layer)) if isinstance(layer, dict) else {}
            if e.key in flat or any(k.startswith(e.key + ".") for k in flat):
                source = (name, file)
                break
    cell = _where(label, column)
    if source is None or source[0] == "row":
        where, file = cell, grid_file
    elif source[0] == "columns":
        k = e.key if e.key in column else next(iter(column), "")
        where, file = f"columns.{k}={column.get(k)} (rows.{label})", grid_file
    elif source[0] == "--set":
        where, file = f"--set (for {grid_file} {cell})", None
    elif source[1] != grid_file:
        where, file = f"{source[0]} (for {grid_file} {cell})", source[1]
    else:
        where, file = f"{source[0]} ({cell})", grid_file
    err = ConfigError(e.problem, file=file, key=f"{where}: {e.key}" if e.key else where, hint=e.hint)
    return err


# ----------------------------------------------------------------------------- loading
def load_grid(path: str | Path, profile: str | None = None, sets: list[str] | None = None,
              skip_missing: bool = False, profiles_dir: Path | str | None = None) -> Grid:
    """Expand a grid file (with an optional profile and ``--set`` items) into validated trials.

    Raises :class:`ConfigError` (one line) on any problem with the file, the profile or
    any trial. The grid file is validated on its own first, so a bad value in it is
    reported even where the profile or ``--set`` would override it. Rows whose
    ``method.name`` is not registered fail, naming the missing methods, unless
    ``skip_missing``: then they are dropped and listed in ``grid.skipped``.
    """
    if profile is not None or sets:
        _expand(path, None, None, skip_missing, profiles_dir)
    return _expand(path, profile, sets, skip_missing, profiles_dir)


def _expand(path: str | Path, profile: str | None, sets: list[str] | None, skip_missing: bool,
            profiles_dir: Path | str | None) -> Grid:
    from .plugins import load_all

    load_all()
    file = str(path)
    doc = read_yaml(path)
    if not isinstance(doc, dict):
        raise ConfigError(f"a grid must be a mapping, got {_short(doc)}", file=file)
    for k in doc:
        if k not in GRID_KEYS:
            raise ConfigError("unknown key", file=file, key=str(k), hint=f"nearest valid key: {nearest(k, GRID_KEYS)}")
    name = check_name(doc.get("name") if doc.get("name") is not None else Path(path).stem, "grid", file, "name")
    description = doc.get("description") or ""
    if not isinstance(description, str):
        raise ConfigError(f"expected text, got {_short(description)}", file=file, key="description")
    base = _mapping(doc.get("base"), "base", file)
    base_by = _by_value(doc.get("base_by"), "base_by", file)

    # rows: explicit ones, then the sweep
    notes = {str(k): str(v) for k, v in _mapping(doc.get("notes"), "notes", file).items()}
    rows: dict[str, dict] = {}
    row_by: dict[str, dict[str, dict[str, dict]]] = {}
    for label, over in _mapping(doc.get("rows"), "rows", file).items():
        over = dict(_mapping(over, f"rows.{label}", file))
        label = str(label)
        if ROW_NOTE in over:
            notes[label] = str(over.pop(ROW_NOTE))
        if ROW_BY in over:
            row_by[label] = _by_value(over.pop(ROW_BY), f"rows.{label}.by", file)
        rows[label] = over
    sweep = _mapping(doc.get("sweep"), "sweep", file)
    n_sweep = math.prod(len(_list(v, f"sweep.{k}", file)) for k, v in sweep.items()) if sweep else 0
    if len(rows) + n_sweep > MAX_CELLS:
        raise ConfigError(f"{len(rows) + n_sweep} rows; a grid may expand to at most {MAX_CELLS} cells",
                          file=file, key="sweep" if n_sweep > len(rows) else "rows")
    for label, over in _sweep_rows(sweep, file).items():
        if label in rows:
            raise ConfigError(f"the sweep row {label!r} has the label of a row", file=file, key="sweep")
        rows[label] = over
    if not rows:
        raise ConfigError("the grid has no rows (give `rows` or `sweep`)", file=file, key="rows")
    for label in notes:
        if label not in rows:
            raise ConfigError(f"note for {label!r}, which is not a row", file=file, key="notes",
                              hint=f"nearest row: {nearest(label, rows)!r}")

    reference = doc.get("reference")
    if reference is not None and str(reference) not in rows:
        raise ConfigError(f"{reference!r} is not a row", file=file, key="reference",
                          hint=f"nearest row: {nearest(str(reference), rows)!r}")
    columns = _check_columns(_mapping(doc.get("columns"), "columns", file), file)
    file_columns = columns                   # (paper_results name the grid file's columns, not a profile's)
    seeds = _check_seeds(doc["seeds"], file) if "seeds" in doc else [0]
    metrics = _list(doc.get("metrics", ["acc"]), "metrics", file)
    if not all(isinstance(m, str) and m for m in metrics):
        raise ConfigError(f"metric names must be strings, got {metrics!r}", file=file, key="metrics")
    grid_resources = _mapping(doc.get("resources"), "resources", file)
    column_labels = _mapping(doc.get("column_labels"), "column_labels", file)

    prof = load_profile(profile, profiles_dir) if profile else {}
    pfile = prof.get("_path")
    if prof:
        columns = prof.get("columns", columns)
        seeds = prof.get("seeds", seeds)
    prof_resources = prof.get("resources", {})
    overlay = prof.get("overlay", {})
    overlay_by = prof.get("overlay_by", {})
    set_layer: dict = {}
    try:
        for k, v in parse_set(sets):
            if k == "seed":         # a grid's seeds are a list: --set seed=N runs seed N only
                seeds = _check_seeds([v], "--set", "seed")
                continue
            set_dotted(set_layer, k, v)
    except ConfigError as e:
        raise ConfigError(e.problem, key=f"--set: {e.key}" if e.key and e.key != "--set" else "--set",
                          hint=e.hint) from None
    n_cells = len(rows) * math.prod(len(v) for v in columns.values()) * len(seeds)
    if n_cells > MAX_CELLS:
        raise ConfigError(f"expands to {n_cells} cells (rows x columns x seeds); at most {MAX_CELLS} are allowed",
                          file=file, key="rows")

    grid = Grid(name=name, description=description, path=Path(path), metrics=[str(m) for m in metrics],
                row_labels=list(rows), columns=columns, column_labels=column_labels, seeds=seeds, notes=notes,
                profile=profile, resources={**grid_resources, **prof_resources}, sets=list(sets or []),
                reference=None if reference is None else str(reference),
                paper=_paper_results(doc.get("paper_results"), rows, file_columns, metrics, file))
    missing: dict[str, str] = {}
    for label, over in rows.items():
        for column in grid.column_combos():
            col_layer: dict = {}
            for k, v in column.items():
                set_dotted(col_layer, k, copy.deepcopy(v))
            top = [("row", file, over), ("columns", file, col_layer), ("--set", None, set_layer)]
            layers: list[tuple[str, str | None, dict]] = [
                ("resources", file, {"resources": grid_resources}), ("base", file, base)]
            try:
                layers += _matching(base_by, "base_by", file, layers, top)
                if prof:
                    layers += [("resources", pfile, {"resources": prof_resources}), ("overlay", pfile, overlay)]
                    layers += _matching(overlay_by, "overlay_by", pfile, layers, top)
                layers += [top[0], *_matching(row_by.get(label, {}), f"rows.{label}.by", file, layers, top), *top[1:]]
                raw = _merge(layers)
            except ConfigError as e:        # e.g. a dotted key through a non-section value
                raise _blame(e, layers, label, column, file) from None
            method = _resolved_value(raw, "method.name")
            if not isinstance(method, str) or method not in METHODS:
                missing.setdefault(label, str(method))
                continue
            for seed in seeds:
                raw["seed"] = seed
                try:
                    cfg = resolve(raw)
                    if cfg.train.device == "cuda" and cfg.resources.gpu <= 0:
                        raise ConfigError("cuda, but resources.gpu is 0: Ray shows a trial no GPU unless it asks "
                                          "for one", key="train.device",
                                          hint="set resources.gpu (e.g. 0.5) or train.device=auto")
                except ConfigError as e:
                    raise _blame(e, layers, label, column, file) from None
                grid.trials.append(TrialSpec(label, dict(column), seed, cfg, cfg.key(),
                                             dict(cfg.to_dict()["resources"])))
    if missing:
        methods = sorted(set(missing.values()))
        if not skip_missing:
            rows_used = ", ".join(f"{lab!r} ({m})" for lab, m in missing.items())
            typos = [f"{m!r} -> {close[0]!r}?" for m in methods
                     if (close := difflib.get_close_matches(m, METHODS.names(), n=1, cutoff=0.75))]
            raise ConfigError(f"methods not implemented, in rows {rows_used} "
                              f"(implemented: {', '.join(METHODS.names())}"
                              + (f"; did you mean {', '.join(typos)}" if typos else "") + ")",
                              file=file, key="rows", hint="pass --skip-missing to run the other rows")
        grid.skipped = [(lab, f"method {m!r} is not implemented") for lab, m in missing.items()]
        grid.row_labels = [r for r in grid.row_labels if r not in missing]
        if grid.reference in missing:
            grid.reference = None
    _check_metrics(grid, file)
    return grid


def _check_metrics(grid: Grid, file: str) -> None:
    """Every name in ``metrics:`` must be one some trial of the grid reports."""
    valid: set[str] = set()
    seen: set[str] = set()
    for t in grid.trials:
        c = t.config.to_dict()
        sig = json.dumps([c["data"], c["method"]["name"]], sort_keys=True, default=str)
        if sig in seen:
            continue
        seen.add(sig)
        mods, task = trial_modalities(c)
        valid |= metric_names(task, mods, tuple(METHODS.get(c["method"]["name"]).meta.get("reports", ())))
    for m in grid.metrics:
        if valid and m not in valid:
            raise ConfigError(f"no trial of this grid reports {m!r}", file=file, key="metrics",
                              hint=f"nearest: {nearest(m, sorted(valid))!r}")


def _matching(by: dict[str, dict[str, dict]], what: str, file: str | None, below: list, top: list) -> list:
    """The layers of ``by`` whose key has, in the trial (``below`` + ``top``), that value."""
    probe = _merge(below + top)
    out = []
    for key, by_value in by.items():
        val = _resolved_value(probe, key)
        if val is not None and str(val) in by_value:
            out.append((f"{what}.{key}.{val}", file, by_value[str(val)]))
    return out


def _merge(layers: list[tuple[str, str | None, dict]]) -> dict:
    out: dict = {}
    for _, _, layer in layers:
        out = deep_merge(out, layer)
    return out


def count_trials(grid_paths: list[str | Path], profile: str | None = None, skip_missing: bool = True,
                 profiles_dir: Path | str | None = None) -> tuple[int, int]:
    """(distinct trials over all the grids together, naive count: the sum of every grid's cells).

    With ``skip_missing=False`` rows of unimplemented methods must not exist (ConfigError);
    to count them anyway see :func:`count_cells_including_missing`."""
    keys: set[str] = set()
    naive = 0
    for p in grid_paths:
        g = load_grid(p, profile=profile, skip_missing=skip_missing, profiles_dir=profiles_dir)
        naive += len(g.trials)
        keys |= {t.key for t in g.trials}
    return len(keys), naive


def count_cells_including_missing(grid_paths: list[str | Path], profile: str | None = None,
                                  profiles_dir: Path | str | None = None) -> tuple[int, int]:
    """Like :func:`count_trials` but also counting the cells of skipped (unimplemented)
    rows: each is a distinct trial (different method names never share a key)."""
    distinct, naive = count_trials(grid_paths, profile, True, profiles_dir)
    extra = 0
    for p in grid_paths:
        g = load_grid(p, profile=profile, skip_missing=True, profiles_dir=profiles_dir)
        extra += len(g.skipped) * len(g.column_combos()) * len(g.seeds)
    return distinct + extra, naive + extra
