"""What one export computes, once: the grid's stored records (read from the store once), the
cells, the done count and the paired comparisons. The table files (``raygap.render``), the
figures (``raygap.figures``) and the report (``raygap.reproduction``) are all drawn from one
:class:`Table`, so the files of one export agree with each other even while a run writes to
the store.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

from .cells import is_done, table_cells
from .selection import as_selected
from .significance import Comparisons, paired_comparisons

MANIFEST = "table.json"         # the cells as numbers, the done count, the comparisons and their inputs


class Table:
    """A grid's results as one export shows them. ``records``: key -> stored record of the
    grid's trials (with metrics, history and info); ``combos``: the column combinations in
    table order; ``cells``: (row label, column index, metric) -> :class:`~raygap.cells.Cell`;
    ``comparisons``: computed when first asked for (scipy is imported only then, and only
    when ``known`` -- the comparisons an earlier export stored -- has other inputs)."""

    def __init__(self, grid, records: dict[str, dict], known: dict | None = None):
        self.grid, self.records, self._known = grid, records, known
        self.combos, self.cells = table_cells(grid, records)

    @property
    def done(self) -> int:
        """How many cell memberships (row x column x seed) of the grid are done."""
        return sum(1 for t in self.grid.trials if is_done(self.records.get(t.key)))

    def done_records(self) -> dict[str, dict]:
        """key -> record of the grid's done trials."""
        return {k: r for k, r in self.records.items() if is_done(r)}

    @functools.cached_property
    def comparisons(self) -> Comparisons:
        return paired_comparisons(self.grid, self.records, known=self._known)


def read_table(grid, store, out_dir: str | Path | None = None) -> Table:
    """Read the grid's records from ``store`` (once) into a :class:`Table`. ``out_dir``: the
    folder of the grid's tables, whose stored comparisons are reused when their inputs are the
    same."""
    known = stored_comparisons(out_dir) if out_dir is not None else None
    return Table(grid, grid_records(grid, store), known)


def grid_records(grid, store) -> dict[str, dict]:
    """key -> stored record of the grid's trials, each as its cell reads it: with the metrics
    of the epoch its ``train.select_from`` makes eligible (:func:`raygap.selection.as_selected`)."""
    raw = store.records(t.key for t in grid.trials)
    return {t.key: as_selected(raw[t.key], t.config.train) for t in grid.trials if t.key in raw}


def stored_comparisons(out_dir: str | Path) -> dict | None:
    """The comparisons (and their inputs' digest) the ``table.json`` in ``out_dir`` holds, if any."""
    try:
        old = json.loads((Path(out_dir) / MANIFEST).read_text(encoding="utf-8"))
        return old.get("comparisons") if isinstance(old, dict) else None
    except (OSError, ValueError):
        return None
