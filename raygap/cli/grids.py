"""What the grid verbs (``run``, ``status``, ``export``, ``report``) share: the grids a command
names (one or several: :func:`per_grid`) and the profile it reads, its results folder and trial
store, its table folder, one grid's export, and the figures step that must neither cost the
tables nor fail silently."""
from __future__ import annotations

import copy
import shlex
import sys
import time
from pathlib import Path

from .. import interrupts
from ..errors import ConfigError, StoreError

RESULTS = "results"             # the default --results folder


def results_root(args) -> Path:
    root = Path(args.results)
    if root.exists() and not root.is_dir():
        raise ConfigError("is a file, not a folder", key="--results", file=str(root))
    return root


def open_store(args, readonly: bool = False):
    """The results folder's trial store; one to read where there is none yet: an empty one
    (:class:`~raygap.store.EmptyStore`), nothing created."""
    from ..store import EmptyStore, Store

    db = results_root(args) / "store.sqlite"
    return EmptyStore(db) if readonly and not db.exists() else Store(db, readonly=readonly)


def per_grid(args) -> list:
    """One copy of the command's arguments per grid file it names (``args.grid``: the list), each
    with that one file as ``grid``: the single-grid code reads them unchanged."""
    out = []
    for path in args.grid if isinstance(args.grid, list) else [args.grid]:
        one = copy.copy(args)
        one.grid = path
        out.append(one)
    return out


_NOTED: set[str] = set()


def grid_of(args, profile=None, sets=None, use_args=True):
    """The grid the command names, expanded; a profile that is raygap's own while the grid's
    folder has a ``profiles/`` of its own without it is said on stderr (once)."""
    from ..grid import load_grid

    grid = load_grid(args.grid, profile=getattr(args, "profile", None) if use_args else profile,
                     sets=getattr(args, "set", None) if use_args else sets,
                     skip_missing=getattr(args, "skip_missing", False))
    if grid.profile_note and grid.profile_note not in _NOTED:
        _NOTED.add(grid.profile_note)
        print(f"raygap: {grid.profile_note}", file=sys.stderr)
    if grid.searches and hasattr(args, "results"):     # searched rows: their winners' cells, where stored
        from ..search import winners_from

        db = results_root(args) / "store.sqlite"
        if db.exists():
            store = open_store(args, readonly=True)
            try:
                winners_from(grid, store)
            finally:
                store.close()
    return grid


def grid_for_reading(args):
    """(grid, store) for status / export: the profile and --set given, else those the grid
    last ran with (said on stderr); a grid that never ran is one line (exit 2)."""
    if args.profile is not None or args.set:
        grid = grid_of(args)
        return grid, open_store(args, readonly=True)
    plain = grid_of(args)
    store = open_store(args, readonly=True)
    last = store.last_run(plain.name)
    if last is None:
        raise ConfigError(f"grid {plain.name!r} has never run with --results {args.results}, so there is no "
                          "profile to default to", file=args.grid,
                          hint=f"run it first (raygap run {args.grid} --profile demo) or pass --profile NAME")
    grid = grid_of(args, profile=last["profile"], sets=last["sets"] or None, use_args=False)
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(last["started"])) if last.get("started") else "?"
    what = f"profile {last['profile']}" if last["profile"] else "no profile (the grid's own settings)"
    sets = f" with --set {' '.join(last['sets'])}" if last["sets"] else ""
    print(f"raygap: {what}{sets}: the settings {plain.name} last ran with ({when}); pass --profile to choose",
          file=sys.stderr)
    return grid, store


def nothing_ran(args, grid, store) -> None:
    """``export`` / ``report`` where no trial store exists: one line naming it and the run to
    start (exit 2), before anything is written."""
    from ..store import EmptyStore

    if isinstance(store, EmptyStore):
        run = ["raygap", "run", args.grid, *(["--profile", args.profile] if args.profile else []),
               *[w for item in args.set or [] for w in ("--set", item)],
               *(["--results", args.results] if args.results != RESULTS else [])]
        raise StoreError(store.path, f"no trial of grid {grid.name!r} has run here (no trial store)",
                         f"run it first: {shlex.join(run)}")


def table_folder(args, grid, create: bool = True) -> Path:
    from ..atomic import results_dir

    try:
        return results_dir(results_root(args), grid.name, grid.variant, create=create)
    except StoreError as e:
        if Path(e.path).name == grid.name and "is a file" in e.problem:
            raise ConfigError(f"{grid.name!r} names {e.path}, which is a file, so the grid's tables cannot go there",
                              file=args.grid, key="name", hint=f"rename the grid (e.g. {grid.name}_grid)") from None
        raise


def export_one(args, grid, store, table_dir: Path, formats=None, force: bool = False, mirror=None):
    """``raygap run``'s export of one grid: its tables and figures from the store, read once, and
    copied to the storage's ``mirror`` when given (``raygap.store.mirror``). Returns (the line
    saying which tables were written, or why they were not replaced: an export holding fewer done
    cells than the tables there, ``raygap.export.ExportRefused``; the figures)."""
    from ..export import ExportRefused, write_tables
    from ..render import FORMATS
    from ..table import read_table

    with interrupts.protected("export"):
        table = read_table(grid, store, table_dir)
        check_links(table_dir)
        try:
            paths = write_tables(table, table_dir, formats=formats or FORMATS, force=force)
            written = "tables: " + ", ".join(str(p) for p in paths.values())
        except ExportRefused as e:
            paths, written = {}, f"tables not replaced: {e}"
        figures = draw_figures(table, table_dir / "figures")
        if mirror and paths:            # the tables (and figures) after every export
            mirror.push_tables([*paths.values(), table_dir / "figures"])
        return written, figures


def check_links(table_dir: Path) -> None:
    """Before an export writes anything: a link among the tables or the figures, or a figures
    folder leading out of the table folder, is one StoreError line (``raygap.atomic``)."""
    from ..atomic import refuse_links_in

    refuse_links_in(table_dir)
    refuse_links_in(table_dir, "figures")


class FiguresFailed(list):
    """No figures: drawing them raised (the tables are written already). Falsy, like no figures;
    the command exits 1 and says where the traceback is."""


def draw_figures(table, out_dir: Path) -> list:
    """The grid's figures. Drawing them must not cost the tables (written before), and must not
    fail silently either: an error is one line naming the file with its full traceback, and the
    command's exit code becomes 1 (``FiguresFailed``)."""
    import traceback

    from ..atomic import atomic_write
    from ..figures import grid_figures

    try:
        return grid_figures(table, out_dir)
    except (KeyboardInterrupt, StoreError):     # (a link where a figure goes: one line, exit 2)
        raise
    except Exception as e:  # noqa: BLE001 -- reported below and in the exit code, not swallowed
        tb = out_dir / "error.txt"
        atomic_write(tb, traceback.format_exc(), root=out_dir.parent)
        print(f"raygap: figures not drawn: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
              f"(traceback: {tb})", file=sys.stderr)
        return FiguresFailed()
