"""The verbs that read a grid's results from the store: ``raygap status`` (what is done,
running, failed, left), ``raygap export`` (the tables and figures again) and ``raygap report``
(report.md: ours beside the paper's numbers)."""
from __future__ import annotations

import sys
from pathlib import Path

from .. import interrupts
from ..errors import ConfigError
from .grids import FiguresFailed, draw_figures, grid_for_reading, nothing_ran, results_root, table_folder


def cmd_status(args) -> int:
    from ..status import stale_lines, stale_trials, status_text

    grid, store = grid_for_reading(args)
    print(status_text(grid, store))
    for line in stale_lines(stale_trials(grid, store)):
        print(f"raygap: {line}", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from ..export import ExportRefused, write_tables
    from ..render import FORMATS
    from ..table import read_table

    grid, store = grid_for_reading(args)
    nothing_ran(args, grid, store)
    formats = (args.format,) if args.format else FORMATS
    table_dir = table_folder(args, grid)
    with interrupts.protected("export"):
        table = read_table(grid, store, table_dir)
        try:
            paths = write_tables(table, table_dir, formats=formats, force=args.force)
        except ExportRefused as e:
            raise ConfigError(str(e), file=args.grid) from None
        paths["figures"] = table_dir / "figures"
        figures = draw_figures(table, paths["figures"])
        if args.storage:               # the tables after every export, as `run --storage` does
            from ..store.mirror import Mirror

            Mirror(args.storage, results_root(args)).push_tables(paths.values())
    for kind, path in paths.items():
        if args.format and kind == f"table.{args.format}":
            print(Path(path).read_text(encoding="utf-8"))
    print("written: " + ", ".join(str(p) for p in paths.values()), file=sys.stderr if args.format else sys.stdout)
    return 1 if isinstance(figures, FiguresFailed) else 0


def cmd_report(args) -> int:
    from ..reproduction import reproduction_report
    from ..table import read_table

    grid, store = grid_for_reading(args)
    nothing_ran(args, grid, store)
    table_dir = table_folder(args, grid)
    with interrupts.protected("export"):
        table = read_table(grid, store, table_dir)
        figures = draw_figures(table, table_dir / "figures")
        path = reproduction_report(table, table_dir, figures)
    print(f"written: {path}")
    return 1 if isinstance(figures, FiguresFailed) else 0
