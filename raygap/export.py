"""``raygap export``: a grid's tables from the store, read once and written in every format.

``results/<grid>/<variant>/`` gets (every file written atomically and never through a link,
``raygap.atomic``; ``<variant>`` is the profile's name, ``noprofile`` without one, plus
``+set-<hash>`` with ``--set`` items, so tables of different settings never share files):

* ``trials.csv`` -- one line per cell membership (a trial shared by two cells appears
  twice): ``label``, the column values (one column per column key, e.g. ``data.name``),
  ``seed``, ``hash``, ``status`` (done / failed / running / interrupted / pending / new),
  ``error``, ``attempts``, ``wall_seconds``, ``device`` (``cpu``, ``cuda:0 (<GPU name>)``),
  every config key flattened (``config.method.rho``) and
  every final metric (``metric.acc``), raw (fractions, not percent).
* ``table.csv``, ``table.md``, ``table.tex`` -- rows in grid order x (column value x
  metric), each cell ``mean ± std (n=k)`` over the seeds whose trial is done
  (``raygap.cells``; the formats: ``raygap.render``).
* with a grid ``reference`` row: ``significance.csv`` and a section under the Markdown and
  LaTeX tables -- each other row minus the reference, seed by seed, with a paired t-test and
  Benjamini-Hochberg adjusted p-values (``raygap.significance``).
* ``table.json`` -- the same cells as numbers (values per seed, mean, std, n), how many
  cell memberships were done when it was written, and the paired comparisons with a digest of
  their inputs (an export whose inputs are the same reuses them: scipy.stats is not imported).
  An export never replaces these files with a table holding fewer done cells
  (:class:`ExportRefused`) unless forced.

The records are read from the store once per export (:func:`raygap.table.read_table`); every
file, and the figures drawn after, come from that one :class:`~raygap.table.Table`.
"""
from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

from .atomic import atomic_write
from .render import FORMATS, RENDERERS
from .table import MANIFEST, Table, read_table

GUARDED = ("trials.csv", "table.csv", "table.md", "table.tex", MANIFEST)


class ExportRefused(Exception):
    """The table on disk holds more done cells than the one an export would write."""


def cell_rows(grid, records: dict[str, dict]) -> list[dict[str, Any]]:
    """One dict per cell membership of ``grid`` (grid order), as ``trials.csv`` has it: label,
    the column values, seed, hash, status, error, attempts, wall_seconds, device, ``config.*``
    (the trial's config flattened) and ``metric.*`` (its final metrics). ``records``: key ->
    stored record (``Store.records``); a key without one is ``new``. Also the rows of
    :func:`raygap.dataframes.results`."""
    rows = []
    for t in grid.trials:
        rec = records.get(t.key) or {}
        row: dict[str, Any] = {"label": t.label, **{k: v for k, v in t.column.items()}, "seed": t.seed,
                               "hash": t.key, "status": rec.get("status", "new"), "error": rec.get("error") or "",
                               "attempts": rec.get("attempts", 0), "wall_seconds": rec.get("wall_seconds"),
                               "device": (rec.get("info") or {}).get("device", "")}
        row.update({f"config.{k}": v for k, v in t.config.flat().items()})
        row.update({f"metric.{k}": v for k, v in sorted((rec.get("metrics") or {}).items())})
        rows.append(row)
    return rows


def trials_csv(table: Table) -> str:
    rows = cell_rows(table.grid, table.records)
    fields: list[str] = []
    seen: set[str] = set()
    for r in rows:
        for k in r:
            if k not in seen:
                seen.add(k)
                fields.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def table_json(table: Table) -> dict:
    grid, combos = table.grid, table.combos
    return {
        "grid": grid.name, "variant": grid.variant, "profile": grid.profile, "sets": list(grid.sets),
        "grid_file": str(grid.path), "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "done": table.done, "cells": len(grid.trials), "metrics": list(grid.metrics),
        "rows": list(grid.row_labels), "columns": combos,
        "table": [{"row": label, "column": combos[ci], "metric": m, "values": c.values, "mean": c.mean,
                   "std": c.std, "done": c.done, "of": c.total}
                  for (label, ci, m), c in table.cells.items()],
    }


def default_dir(grid) -> Path:
    return Path("results") / grid.name / grid.variant


def export_grid(grid, store, out_dir: str | Path | None = None,
                formats: tuple[str, ...] | list[str] = FORMATS, force: bool = False) -> dict[str, Path]:
    """Read the grid's records once and write its tables (:func:`write_tables`) into
    ``out_dir`` (default ``results/<grid name>/<variant>``). Returns file name -> path."""
    out_dir = Path(out_dir) if out_dir is not None else default_dir(grid)
    return write_tables(read_table(grid, store, out_dir), out_dir, formats, force)


def write_tables(table: Table, out_dir: str | Path | None = None,
                 formats: tuple[str, ...] | list[str] = FORMATS, force: bool = False) -> dict[str, Path]:
    """Write ``trials.csv``, ``table.json`` and the files of each of ``formats`` (a key of
    :data:`~raygap.render.RENDERERS`: csv, md, tex) into ``out_dir``. Returns file name -> path.

    Raises :class:`ExportRefused` (writing nothing) when the ``table.json`` already there
    counts more done cells than this export would hold, or when table files are there
    without a ``table.json`` to compare with -- unless ``force``."""
    bad = [f for f in formats if f not in RENDERERS]
    if bad:
        raise ValueError(f"unknown table format(s) {bad}: choose from {', '.join(RENDERERS)}")
    out_dir = Path(out_dir) if out_dir is not None else default_dir(table.grid)
    manifest = table_json(table)
    if not force:
        _check_not_emptier(out_dir, manifest)
    paths = {"trials.csv": atomic_write(out_dir / "trials.csv", trials_csv(table), root=out_dir)}
    comps = table.comparisons
    if comps.inputs:                    # kept with the numbers: a later export with the same inputs reuses them
        manifest["comparisons"] = {"inputs": comps.inputs, "rows": list(comps)}
    for fmt, render in RENDERERS.items():
        if fmt in formats:
            paths.update({name: atomic_write(out_dir / name, text, root=out_dir) for name, text in render(table).items()})
    paths[MANIFEST] = atomic_write(out_dir / MANIFEST, json.dumps(manifest, indent=1, default=str) + "\n", root=out_dir)
    return paths


def _check_not_emptier(out_dir: Path, manifest: dict) -> None:
    old_path = out_dir / MANIFEST
    if old_path.exists():
        try:
            old = json.loads(old_path.read_text(encoding="utf-8"))
            old_done = int(old["done"])
        except (OSError, ValueError, KeyError, TypeError, OverflowError):   # (OverflowError: done 1e999)
            raise ExportRefused(f"{old_path} is unreadable, so raygap cannot tell whether this export would hold "
                                "fewer results than the tables there; pass --force to replace them") from None
        if manifest["done"] < old_done:
            raise ExportRefused(f"kept the tables in {out_dir}: they hold {old_done} done cell(s), this export "
                                f"{manifest['done']} of {manifest['cells']}; pass --force to replace them")
        return
    there = [n for n in GUARDED if (out_dir / n).exists()]
    if there:
        raise ExportRefused(f"{out_dir / there[0]} exists without the {MANIFEST} raygap writes beside its tables, "
                            "so raygap cannot tell whether this export would hold fewer results; "
                            "pass --force to replace it")
