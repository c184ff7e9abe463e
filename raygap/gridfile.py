"""A grid file and a profile file, read and checked key by key (``docs/grids.md``; the format
is the docstring of :mod:`raygap.grid`, which expands what is read here into trials).

:func:`read_grid_file` returns a :class:`GridFile` whose every key has the shape the format
asks for (mappings, non-empty lists, distinct seeds and column values, row labels, a sweep
expanded into rows, names safe as folder names); :func:`load_profile` does the same for
``grids/profiles/NAME.yaml``. Nothing here resolves a trial: a key's *value* is checked when
:func:`raygap.config.resolve` validates each cell. Every problem is one
:class:`~raygap.errors.ConfigError` line naming the file and the key.
"""
from __future__ import annotations

import copy
import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .dotted import set_dotted
from .errors import ConfigError, nearest
from .plugins import KEY as PLUGINS_KEY, plugin_list
from .safe_yaml import read_yaml

# the keys a grid file and a profile may hold (their formats: the docstring of raygap.grid)
GRID_KEYS = ["name", "description", "plugins", "base", "base_by", "rows", "sweep", "columns", "seeds", "metrics", "resources", "reference", "paper_results",
             "column_labels", "notes"]
PROFILE_KEYS = ["description", "overlay", "overlay_by", "columns", "seeds", "resources", "search"]
ROW_NOTE = "note"
ROW_BY = "by"
ROW_SEARCH = "search"        # a row's hyperparameter search (raygap.search)
ROW_VERSUS = "versus"        # a second row this one is compared with, seed by seed (raygap.significance)
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


def check_seeds(seeds, file: str, what: str = "seeds") -> list[int]:
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


def profile_path(name: str, grid_dir: Path | str | None = None,
                 profiles_dir: Path | str | None = None) -> tuple[Path, str | None]:
    """Where profile ``name`` is read from, and a note when it is raygap's own although the grid
    is elsewhere: ``profiles_dir/NAME.yaml`` when given; else the grid's own
    ``profiles/NAME.yaml`` (``grids/profiles`` beside ``grids/mine.yaml`` in a project of one's
    own), falling back to raygap's :data:`PROFILES_DIR` (noted when the grid's folder has a
    ``profiles/`` without it). None of them holding it is one line listing the profiles there are."""
    check_name(name, "profile", None, "--profile")
    dirs = [Path(profiles_dir)] if profiles_dir else \
        [*([Path(grid_dir) / "profiles"] if grid_dir and (Path(grid_dir) / "profiles").resolve() != PROFILES_DIR
           else []), PROFILES_DIR]
    for i, d in enumerate(dirs):
        path = d / f"{name}.yaml"
        if path.exists():
            note = None if i == 0 or not dirs[0].is_dir() else \
                f"profile {name}: raygap's own ({path}); {dirs[0]} has no {name}.yaml"
            return path, note
    have = sorted({p.stem for d in dirs for p in d.glob("*.yaml")})
    raise ConfigError(f"no profile {name!r} in {' or '.join(str(d) for d in dirs)}", file=str(dirs[0] / f"{name}.yaml"),
                      key="--profile", hint=f"choices: {', '.join(have)}; nearest: {nearest(name, have)!r}" if have else None)


def load_profile(name: str, profiles_dir: Path | str | None = None, grid_dir: Path | str | None = None) -> dict:
    """Read and check the profile :func:`profile_path` finds (default ``grids/profiles``);
    ``_note`` says when it is raygap's own though the grid has a folder of its own."""
    path, note = profile_path(name, grid_dir, profiles_dir)
    file = str(path)
    doc = read_yaml(path)
    doc = {} if doc is None else doc
    if not isinstance(doc, dict):
        raise ConfigError("a profile must be a mapping", file=file)
    for k in doc:
        if k not in PROFILE_KEYS:
            raise ConfigError("unknown key", file=file, key=str(k),
                              hint=f"nearest valid key: {nearest(k, PROFILE_KEYS)}")
    out = {"_path": file, "_note": note, "description": str(doc.get("description") or "")}
    out["overlay"] = _mapping(doc.get("overlay"), "overlay", file)
    out["overlay_by"] = _by_value(doc.get("overlay_by"), "overlay_by", file)
    if doc.get("columns") is not None:
        out["columns"] = _check_columns(_mapping(doc["columns"], "columns", file), file)
    if doc.get("seeds") is not None:
        out["seeds"] = check_seeds(doc["seeds"], file)
    out["resources"] = _mapping(doc.get("resources"), "resources", file)
    out["search"] = doc.get("search")            # checked by raygap.search, laid over each row's block
    return out


def _by_value(doc, what: str, file: str) -> dict[str, dict[str, dict]]:
    """``{dotted key: {value: overrides}}`` checked, with the values as strings."""
    out: dict[str, dict[str, dict]] = {}
    for key, by_value in _mapping(doc, what, file).items():
        by_value = _mapping(by_value, f"{what}.{key}", file, allow_none=False)
        out[str(key)] = {str(v): _mapping(over, f"{what}.{key}.{v}", file) for v, over in by_value.items()}
    return out


def _one_line(label, key: str, file: str) -> str:
    """A row or column label as text on one line: a newline or other control character would break
    the Markdown table row and the LaTeX line it is printed in."""
    text = str(label)
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise ConfigError(f"the label {text!r} holds a newline or another control character", file=file, key=key,
                          hint=f"one line, e.g. {' '.join(''.join(ch if ord(ch) >= 32 and ord(ch) != 127 else ' ' for ch in text).split())!r}")
    return text


def check_paper_results(doc, rows: dict, columns: dict, metrics: list, file: str) -> dict:
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


@dataclass
class GridFile:
    """A grid file's keys, each checked for its shape (nothing is expanded or validated as a
    trial yet): what :func:`raygap.grid.load_grid` expands."""
    file: str
    name: str
    description: str
    base: dict
    base_by: dict[str, dict[str, dict]]                # dotted key -> value -> overrides
    rows: dict[str, dict]                              # label -> overrides: the file's rows, then the sweep's
    row_by: dict[str, dict[str, dict[str, dict]]]      # label -> its `by`
    row_search: dict[str, Any]                         # label -> its `search:` block, unchecked (raygap.search)
    row_versus: dict[str, str]                         # label -> the row it is also compared with (`versus:`)
    notes: dict[str, str]
    reference: str | None
    columns: dict[str, list]
    seeds: list[int]
    metrics: list
    resources: dict
    column_labels: dict
    paper_results: Any                                 # unchecked: check_paper_results, once the cells are counted
    plugins: list[str]                                 # module names or .py files (relative to the file), not loaded


def read_grid_file(path: str | Path) -> GridFile:
    """Read ``path`` and check each key's shape; the first problem is one ConfigError line."""
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
    row_search: dict[str, Any] = {}
    row_versus: dict[str, str] = {}
    for label, over in _mapping(doc.get("rows"), "rows", file).items():
        over = dict(_mapping(over, f"rows.{label}", file))
        label = _one_line(label, "rows", file)
        if ROW_NOTE in over:
            notes[label] = str(over.pop(ROW_NOTE))
        if ROW_BY in over:
            row_by[label] = _by_value(over.pop(ROW_BY), f"rows.{label}.by", file)
        if ROW_SEARCH in over:
            row_search[label] = over.pop(ROW_SEARCH)
        if ROW_VERSUS in over:
            row_versus[label] = _one_line(over.pop(ROW_VERSUS), f"rows.{label}.versus", file)
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
    for label, other in row_versus.items():
        if other not in rows or other == label:
            raise ConfigError(f"{other!r} is " + ("the row itself" if other == label else "not a row"),
                              file=file, key=f"rows.{label}.versus",
                              hint=f"nearest other row: {nearest(other, [r for r in rows if r != label])!r}")
    columns = _check_columns(_mapping(doc.get("columns"), "columns", file), file)
    seeds = check_seeds(doc["seeds"], file) if "seeds" in doc else [0]
    metrics = _list(doc.get("metrics", ["acc"]), "metrics", file)
    if not all(isinstance(m, str) and m for m in metrics):
        raise ConfigError(f"metric names must be strings, got {metrics!r}", file=file, key="metrics")
    grid_resources = _mapping(doc.get("resources"), "resources", file)
    column_labels = {k: _one_line(v, "column_labels", file)
                     for k, v in _mapping(doc.get("column_labels"), "column_labels", file).items()}
    return GridFile(file=file, name=name, description=description, base=base, base_by=base_by, rows=rows,
                    row_by=row_by, row_search=row_search, row_versus=row_versus, notes=notes, reference=None if reference is None else str(reference),
                    columns=columns, seeds=seeds, metrics=metrics, resources=grid_resources,
                    column_labels=column_labels, paper_results=doc.get("paper_results"),
                    plugins=plugin_list(doc.get(PLUGINS_KEY), file))
