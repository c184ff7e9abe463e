"""A grid's (or a whole store's) results as pandas DataFrames, for a notebook:
:func:`results` (also ``raygap.results``).

Two frames, the way Ray Tune's ``ResultGrid.get_dataframe()`` and each result's
``metrics_dataframe`` give them:

* ``trials`` -- one row per cell of the grid (row label x column x seed; a trial that two
  cells share is in both, as in ``trials.csv``), with exactly the columns of the ``trials.csv``
  that ``raygap export`` writes, in its order: ``label``, the column values (one per column
  key, e.g. ``data.name``), ``seed``, ``hash`` (the trial's key), ``status``, ``error``,
  ``attempts``, ``wall_seconds``, ``device``, the config flattened under dotted names
  (``config.optim.lr``) and the final metrics (``metric.acc``, fractions, not percent). Read
  from a store instead of a grid: a first column ``grid`` (``table2/demo``: the grid and the
  results folder's variant), one row per cell of every grid registered there, then one row
  (``grid`` and ``label`` empty) per stored trial that no registered cell uses; the config is
  the one stored with the trial.
* ``history`` -- long form: one row per trial and epoch, ``hash`` and ``epoch`` first, then
  every per-epoch value the trial recorded (``train_loss``, ``val_acc``, ``test_acc``, ``lr``,
  ...; nested values under dotted names). Every trial with a stored history, whatever its status
  (a running or interrupted trial's epochs so far); once per trial, so join on ``hash``.

``status`` is as stored (as in ``trials.csv``); ``raygap status`` also tells a running trial
whose driver is gone (interrupted) or whose heartbeat stopped (stale).

The store is opened read-only and never created: a missing one is a
:class:`~raygap.errors.StoreError`; a bad grid, profile or ``--set`` item a
:class:`~raygap.errors.ConfigError`. Neither Ray nor torch is imported.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from .dotted import flatten
from .errors import ConfigError, StoreError
from .export import cell_rows
from .grid import Grid, load_grid
from .gridfile import NO_PROFILE
from .search import winners_from
from .store import Store
from .table import grid_records

RESULTS = "results"          # the CLI's default --results folder
GRID_SUFFIXES = (".yaml", ".yml")


class Results(NamedTuple):
    """What :func:`results` returns: ``trials, history = raygap.results(...)``."""
    trials: Any          # pandas.DataFrame
    history: Any         # pandas.DataFrame


def results(source: str | Path | Grid, profile: str | None = None, sets: list[str] | None = None,
            results_dir: str | Path = RESULTS) -> Results:
    """The results of a grid, or of every trial in a store, as two pandas DataFrames
    (:class:`Results`: ``trials`` and ``history``; the module's docstring says their columns).

    ``source``:

    * a grid file (``.yaml``/``.yml``): its cells under ``profile`` and ``sets`` (``--set`` items,
      e.g. ``["train.epochs=3"]``), read from ``results_dir/store.sqlite`` (the CLI's
      ``--results``, default ``results`` relative to the working directory). With neither
      ``profile`` nor ``sets``: the settings the grid last ran with there, as ``raygap status``
      and ``raygap export`` do; ``profile="noprofile"`` is the grid's own settings.
    * a :class:`~raygap.grid.Grid` (``raygap.grid.load_grid``): its cells, read from
      ``results_dir``.
    * a store: its ``store.sqlite`` or the results folder that holds it: every trial in it.
    """
    import pandas as pd

    if isinstance(source, Grid) or Path(source).suffix.lower() in GRID_SUFFIXES:
        with _open(Path(results_dir) / "store.sqlite") as store:
            grid = source if isinstance(source, Grid) else _grid(Path(source), profile, sets, store)
            winners_from(grid, store)          # a searched row's cells: its winner's, where stored
            records = grid_records(grid, store)
        rows = cell_rows(grid, records)
        hist_keys = list(dict.fromkeys(t.key for t in grid.trials))
    else:
        if profile is not None or sets:
            raise ConfigError("profile and sets choose a grid's settings; a store holds every trial",
                              file=str(source), hint="pass a grid file (GRID.yaml) to read one grid's cells")
        path = Path(source)
        with _open(path if path.is_file() or path.suffix == ".sqlite" else path / "store.sqlite") as store:
            records = store.all_records()
            memberships = [(g, m) for g in store.grids() for m in store.memberships(g)]
        rows = _store_rows(memberships, records)
        hist_keys = list(records)
    history = [{"hash": k, **flatten(h)} for k in hist_keys
               for h in (records.get(k) or {}).get("history") or [] if isinstance(h, dict)]
    trials = pd.DataFrame(rows)
    return Results(trials, pd.DataFrame(history, columns=None if history else ["hash", "epoch"]))


def _open(store_path: Path) -> Store:
    """The store, read-only; where there is none, one line saying so (nothing is created)."""
    if not store_path.exists():
        raise StoreError(store_path, "no trial store here (nothing has run with this results folder)",
                         "run the grid first (raygap run GRID.yaml --profile demo), or pass results_dir= "
                         "the --results folder it ran with")
    return Store(store_path, readonly=True)


def _grid(path: Path, profile: str | None, sets: list[str] | None, store: Store) -> Grid:
    if profile == NO_PROFILE:
        return load_grid(path, profile=None, sets=sets)
    if profile is not None or sets:
        return load_grid(path, profile=profile, sets=sets)
    plain = load_grid(path)
    last = store.last_run(plain.name)
    if last is None:
        raise ConfigError(f"grid {plain.name!r} has never run with the results folder {store.path.parent}, so "
                          "there is no profile to default to", file=str(path),
                          hint="pass profile='demo' (or the one it ran with), or results_dir= the folder it ran in")
    return load_grid(path, profile=last["profile"], sets=last["sets"] or None)


def _store_rows(memberships: list[tuple[str, dict]], records: dict[str, dict]) -> list[dict[str, Any]]:
    """The ``trials`` rows of a whole store: each registered cell, then each trial no cell uses."""
    rows = [_store_row(records.get(m["key"]) or {"key": m["key"]}, grid=g, label=m["label"],
                       column=m.get("column") or {}, seed=m["seed"]) for g, m in memberships]
    used = {m["key"] for _, m in memberships}
    rows += [_store_row(rec, grid=None, label=None, column={}, seed=(rec.get("config") or {}).get("seed"))
             for k, rec in records.items() if k not in used]
    return rows


def _store_row(rec: dict, grid: str | None, label: str | None, column: dict, seed) -> dict[str, Any]:
    row: dict[str, Any] = {"grid": grid, "label": label, **column, "seed": seed, "hash": rec["key"],
                           "status": rec.get("status", "new"), "error": rec.get("error") or "",
                           "attempts": rec.get("attempts", 0), "wall_seconds": rec.get("wall_seconds"),
                           "device": (rec.get("info") or {}).get("device", "")}
    row.update({f"config.{k}": v for k, v in flatten(rec.get("config") or {}).items()})
    row.update({f"metric.{k}": v for k, v in sorted((rec.get("metrics") or {}).items())})
    return row


__all__ = ["Results", "results"]
