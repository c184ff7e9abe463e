"""The verbs that read a grid's results from the store: ``raygap status`` (what is done,
running, failed, left), ``raygap export`` (the tables and figures again) and ``raygap report``
(report.md: ours beside the paper's numbers). Each takes several grids too: every one is read
(and checked) before anything is written; ``report`` then writes one file over them all."""
from __future__ import annotations

import sys
from pathlib import Path

from .. import interrupts
from ..errors import ConfigError
from .grids import FiguresFailed, check_links, draw_figures, grid_for_reading, nothing_ran, per_grid, results_root, table_folder


def _read_all(args, need_store: bool = False) -> list[tuple]:
    """(args of one grid, grid, store) for every grid named, each checked before any is used:
    grids given twice or sharing a results folder, and (``need_store``) no trial store, are one
    line (exit 2) naming the grid file."""
    from ..gridset import check_apart

    out = [(a, *grid_for_reading(a)) for a in per_grid(args)]
    check_apart([g for _, g, _ in out])
    if need_store:
        for a, g, store in out:
            nothing_ran(a, g, store)
    return out


def cmd_status(args) -> int:
    from ..gridset import GridSet
    from ..status import stale_lines, stale_trials, status_text, union_status

    from ..store import Watch

    read = _read_all(args)
    # what this user's earlier `status` saw of each claim's heartbeat, on this machine's monotonic clock:
    # a claim whose heartbeat has not moved for its lease since is stale
    watch = Watch.for_store(read[0][2].path)
    for _, grid, store in read:
        print(status_text(grid, store, watch))
        for line in stale_lines(stale_trials(grid, store)):
            print(f"raygap: {line}", file=sys.stderr)
    if len(read) > 1:
        print(union_status(GridSet([g for _, g, _ in read]), read[0][2], watch))
    watch.save()
    return 0


def cmd_export(args) -> int:
    from ..export import ExportRefused, write_tables
    from ..render import FORMATS
    from ..table import read_table

    read = [(a, g, store, table_folder(a, g)) for a, g, store in _read_all(args, need_store=True)]
    for *_, table_dir in read:                 # a link where a table or figure goes: nothing written
        check_links(table_dir)
    formats = (args.format,) if args.format else FORMATS
    code = 0
    for a, grid, store, table_dir in read:
        with interrupts.protected("export"):
            table = read_table(grid, store, table_dir)
            try:
                paths = write_tables(table, table_dir, formats=formats, force=args.force)
            except ExportRefused as e:
                if len(read) == 1:
                    raise ConfigError(str(e), file=a.grid) from None
                print(f"raygap: error: {ConfigError(str(e), file=a.grid).line()}", file=sys.stderr)
                code = 2                # the other grids' tables are still written
                continue
            paths["figures"] = table_dir / "figures"
            figures = draw_figures(table, paths["figures"])
            if args.storage:           # the tables after every export, as `run --storage` does
                from ..store.mirror import Mirror

                Mirror(args.storage, results_root(a)).push_tables(paths.values())
        for kind, path in paths.items():
            if args.format and kind == f"table.{args.format}":
                print(Path(path).read_text(encoding="utf-8"))
        print("written: " + ", ".join(str(p) for p in paths.values()), file=sys.stderr if args.format else sys.stdout)
        if isinstance(figures, FiguresFailed):
            code = code or 1
    return code


def cmd_report(args) -> int:
    from ..reproduction import paper_report, report_names, reproduction_report
    from ..table import read_table

    read = [(a, g, store, table_folder(a, g)) for a, g, store in _read_all(args, need_store=True)]
    for *_, table_dir in read:                 # a link where a figure or the report goes: nothing written
        check_links(table_dir)
    if len(read) > 1:
        from ..atomic import refuse_link

        for name in report_names({g.variant for _, g, _, _ in read}):
            refuse_link(results_root(args) / name)
    tables = []
    with interrupts.protected("export"):
        for _, grid, store, table_dir in read:
            table = read_table(grid, store, table_dir)
            tables.append((table, table_dir, draw_figures(table, table_dir / "figures")))
        if len(tables) == 1:
            path = reproduction_report(*tables[0])
        else:
            path = paper_report(tables, results_root(args))
    print(f"written: {path}")
    return 1 if any(isinstance(f, FiguresFailed) for _, _, f in tables) else 0
