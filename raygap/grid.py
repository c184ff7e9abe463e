"""Grid files -> fully resolved, validated trial specs (no Ray here).

Grid file (``grids/*.yaml``)
----------------------------
``name``          the grid's name (default: the file's stem); its tables go to
                  ``results/<name>/<profile>/``. 1-64 ASCII letters, digits, ``.``, ``_``,
                  ``-``, starting with a letter or digit; not ``ray`` or ``train`` (folders
                  raygap uses) and not the name of a file in the results folder
``description``   free text, printed in the exported tables
``plugins``       optional: plug-ins imported before anything is validated, each a module
                  name (importable on every node) or a ``.py`` file relative to this file
                  (shipped to every Ray node): ``[../my_method.py, mypkg.plugin]``
                  (:mod:`raygap.plugins`; ``raygap init`` writes a project that uses it)
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
                  {alpha: 0.5}}}}}`` (applied over the row, under the column values),
                  and ``search: {space, samples, searcher, scheduler, seeds}``: hyperparameters
                  tuned per column on the validation split instead of fixed values; the row's
                  cells are the winner trained on ``seeds`` (:mod:`raygap.search`),
                  and ``versus: <row label>``: a second row it is compared with seed by seed,
                  beside the ``reference`` (a tuned row and the same method's fixed row)
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

Profiles (``profiles/NAME.yaml`` beside the grid file, else raygap's own
``grids/profiles/NAME.yaml``: said when the grid's ``profiles/`` lacks it) overlay any grid:
``description``; ``overlay`` (merged onto every trial); ``overlay_by``
(``{dotted key: {value: overrides}}``: applied to the trials whose resolved value of that
key -- defaults included -- equals ``value``; needed because method- and dataset-specific
keys are rejected for other methods and datasets); ``columns``, ``seeds`` (replace the
grid's), ``resources`` (merged over the grid's) and ``search`` (laid over every row's
``search:`` block; its ``space`` replaces the keys a row searches: a demo's budget and scale).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import default_of, resolve, trial_modalities
from .dotted import deep_merge, flatten, get_dotted, parse_set, set_dotted
from .errors import ConfigError, nearest
from .gridfile import MAX_CELLS, NO_PROFILE, check_paper_results, check_seeds, load_profile, read_grid_file
from .metrics import metric_names
from .plugins import load_plugins
from .registry import METHODS
from .search import attach_searches, check_profile_search, parse_search
from .spec import TrialSpec


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
    versus: dict = field(default_factory=dict)          # row label -> a second row it is compared with
    paper: dict = field(default_factory=dict)           # paper_results: label -> column value -> metric -> number
    profiles_dir: Path | None = None                    # the profiles folder it was expanded with (None: the default)
    profile_note: str | None = None                     # the profile is raygap's own, the grid's folder has none
    searches: dict = field(default_factory=dict)        # row label -> its raygap.search.Search (cells: its winners)

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
    """The value of ``dotted`` in a raw (unresolved) trial, falling back to its default
    (``method.name`` -> ``concat``; ``method.gap`` of gap_adaptive -> ``prob``)."""
    v = get_dotted(raw, dotted)
    return default_of(dotted, raw) if v is None else v


def _norm(layer: dict) -> dict:
    """A layer with dotted keys expanded (so it can be flattened to compare keys)."""
    return deep_merge({}, layer)


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
    f = read_grid_file(path)
    load_plugins(f.plugins, f.file)             # (the built-ins and installed plug-ins first)
    file, rows, columns, seeds = f.file, f.rows, f.columns, f.seeds
    prof = load_profile(profile, profiles_dir, Path(file).parent) if profile else {}
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
                seeds = check_seeds([v], "--set", "seed")
                continue
            set_dotted(set_layer, k, v)
    except ConfigError as e:
        raise ConfigError(e.problem, key=f"--set: {e.key}" if e.key and e.key != "--set" else "--set",
                          hint=e.hint) from None
    n_cells = len(rows) * math.prod(len(v) for v in columns.values()) * len(seeds)
    if n_cells > MAX_CELLS:
        raise ConfigError(f"expands to {n_cells} cells (rows x columns x seeds); at most {MAX_CELLS} are allowed",
                          file=file, key="rows")

    grid = Grid(name=f.name, description=f.description, path=Path(path), metrics=[str(m) for m in f.metrics],
                row_labels=list(rows), columns=columns, column_labels=f.column_labels, seeds=seeds, notes=f.notes,
                profile=profile, resources={**f.resources, **prof_resources}, sets=list(sets or []),
                reference=f.reference, versus=dict(f.row_versus), profile_note=prof.get("_note"),   # paper_results name the grid file's columns, not a profile's:
                paper=check_paper_results(f.paper_results, rows, f.columns, f.metrics, file),
                profiles_dir=Path(profiles_dir) if profiles_dir else None)
    missing: dict[str, str] = {}
    psearch = check_profile_search(prof.get("search"), pfile) if prof else {}
    searches = {lab: parse_search(doc, lab, file, psearch, pfile, grid.metrics) for lab, doc in f.row_search.items()}
    for label, over in rows.items():
        for column in grid.column_combos():
            col_layer: dict = {}
            for k, v in column.items():
                set_dotted(col_layer, k, copy.deepcopy(v))
            top = [("row", file, over), ("columns", file, col_layer), ("--set", None, set_layer)]
            layers: list[tuple[str, str | None, dict]] = [
                ("resources", file, {"resources": f.resources}), ("base", file, f.base)]
            try:
                layers += _matching(f.base_by, "base_by", file, layers, top)
                if prof:
                    layers += [("resources", pfile, {"resources": prof_resources}), ("overlay", pfile, overlay)]
                    layers += _matching(overlay_by, "overlay_by", pfile, layers, top)
                layers += [top[0], *_matching(f.row_by.get(label, {}), f"rows.{label}.by", file, layers, top), *top[1:]]
                raw = _merge(layers)
            except ConfigError as e:        # e.g. a dotted key through a non-section value
                raise _blame(e, layers, label, column, file) from None
            method = _resolved_value(raw, "method.name")
            if not isinstance(method, str) or method not in METHODS:
                missing.setdefault(label, str(method))
                continue
            if label in searches:           # its cells are the search's winner (raygap.search.apply_winners)
                searches[label].bases.append((dict(column), raw))
                continue
            first = None                # the cell's config, validated once; its seeds differ in the seed only
            for seed in seeds:
                try:
                    if first is None:
                        raw["seed"] = seed
                        cfg = first = resolve(raw)
                        if cfg.train.device == "cuda" and cfg.resources.gpu <= 0:
                            raise ConfigError("cuda, but resources.gpu is 0: Ray shows a trial no GPU unless it "
                                              "asks for one", key="train.device",
                                              hint="set resources.gpu (e.g. 0.5) or train.device=auto")
                    else:
                        cfg = first.with_seed(seed)
                except ConfigError as e:
                    raise _blame(e, layers, label, column, file) from None
                grid.trials.append(TrialSpec(label, dict(column), seed, cfg, cfg.key(),
                                             cfg.part("resources")["resources"]))
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
        grid.versus = {a: b for a, b in grid.versus.items() if a not in missing and b not in missing}
    attach_searches(grid, {k: v for k, v in searches.items() if k not in missing}, file)
    _check_metrics(grid, file)
    _check_selection(grid, file)
    return grid


def _check_selection(grid: Grid, file: str) -> None:
    """Two cells of one grid that are one trial (``train.select_from`` is outside the key) must
    report the same epoch of it: a table holds one record per trial."""
    first: dict[str, TrialSpec] = {}
    for t in grid.trials:
        o = first.setdefault(t.key, t)
        if o.config.train.select_from != t.config.train.select_from:
            raise ConfigError(f"rows {o.label!r} and {t.label!r} are the same trial ({t.key}) but pick the reported "
                              f"epoch differently (train.select_from {o.config.train.select_from} vs "
                              f"{t.config.train.select_from}); one grid reports one epoch per trial",
                              file=file, key="train.select_from",
                              hint="put the other selection in a grid of its own (tables share trials)")


def _check_metrics(grid: Grid, file: str) -> None:
    """Every name in ``metrics:`` must be one some trial of the grid reports."""
    valid: set[str] = set()
    seen: set[str] = set()
    for t in grid.trials:
        sig = t.config.part_json("data", "method")
        if sig in seen:
            continue
        seen.add(sig)
        c = t.config.part("data", "method")
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
