"""The command line: ``raygap VERB ...`` (also ``python -m raygap``).

Exit codes: 0 done; 1 a trial failed (one summary line says which and why);
2 bad input (one line naming the file, the key and the problem; no traceback).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from . import interrupts
from .errors import ConfigError, DataError, StoreError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2
        self.exit(2, f"raygap: {message}\n")


def _print_metrics(metrics: dict, modalities: list[str]) -> None:
    print(f"reported epoch {metrics['best_epoch']} (best validation {metrics.get('val_acc', float('nan')):.4f}); "
          f"last epoch {metrics['last_epoch']}")
    rows = [("fusion", "")] + [(m, f"_{m}") for m in modalities]
    print(f"{'':>8}  {'test acc':>8}  {'macro-F1':>8}  {'last acc':>8}")
    for name, sfx in rows:
        print(f"{name:>8}  {metrics.get('acc' + sfx, float('nan')):8.4f}  "
              f"{metrics.get('macro_f1' + sfx, float('nan')):8.4f}  {metrics.get('last_acc' + sfx, float('nan')):8.4f}")


RESULTS = "results"             # the default --results folder
TRAIN_FILES = ("checkpoint.pt", "checkpoint.pt.tmp", "result.json", "result.json.tmp", "config.json")


def cmd_train(args) -> int:
    from .config import load_config
    from .atomic import atomic_write
    from .trial import cuda_problem, run_trial

    cfg = load_config(args.config, args.set)
    if cfg.train.device == "cuda" and (problem := cuda_problem()):
        raise ConfigError(f"cuda, but {problem}", file=args.config, key="train.device",
                          hint="nearest valid choice: auto (the GPU if there is one, else the CPU) or cpu")
    key = cfg.key()
    out = Path(args.out or Path("results") / "train" / key).resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError("exists and is not a directory", key="--out", file=str(out))
    if args.fresh:
        removed = _remove_train_files(out)
        if removed:
            print(f"--fresh: removed {', '.join(removed)} from {out}", flush=True)
    else:
        _check_trial_dir(out, key, cfg.train.device)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create: {e.strerror or e}", key="--out", file=str(out)) from None
    atomic_write(out / "config.json", json.dumps({"key": key, **cfg.to_dict()}, indent=2))
    print(f"trial {key}  ->  {out}", flush=True)
    t0 = time.perf_counter()
    try:
        result = run_trial(cfg, checkpoint_dir=out, log=lambda s: print(s, flush=True))
    except (ConfigError, DataError, KeyboardInterrupt):
        raise
    except Exception as e:  # a failed trial: one summary line, exit 1; the checkpoint stays
        print(f"raygap: trial {key} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
              file=sys.stderr)
        return 1
    wall = time.perf_counter() - t0
    atomic_write(out / "result.json", json.dumps({"key": result.key, "metrics": result.metrics,
                                                  "history": result.history, "info": result.info,
                                                  "wall_seconds": wall}, indent=1, default=str))
    mods = cfg.data.modalities or [k[len("acc_"):] for k in result.metrics
                                   if k.startswith("acc_")]
    _print_metrics(result.metrics, mods)
    print(f"wall time {wall:.1f}s; result written to {out / 'result.json'}")
    return 0


def _remove_train_files(out: Path) -> list[str]:
    """``--fresh``: delete only the files raygap train writes in ``out`` (and their temp files)."""
    removed = []
    if not out.is_dir():
        return removed
    for p in sorted(out.iterdir()):
        if p.name in TRAIN_FILES or (p.name.startswith((".config.json.", ".result.json.")) and p.name.endswith(".tmp")):
            if p.is_file() or p.is_symlink():
                p.unlink()
                removed.append(p.name)
    return removed


def _check_trial_dir(out: Path, key: str, device: str = "auto") -> None:
    """Refuse a trial directory holding another trial's checkpoint or config, or a checkpoint that
    cannot continue exactly on the device this trial trains on (``train.device``) (exit 2)."""
    from . import checkpoint
    from .trial import CHECKPOINT, device_kind

    other = why = None
    cfg_path = out / "config.json"
    if cfg_path.is_file():
        try:
            other = json.loads(cfg_path.read_text(encoding="utf-8")).get("key")
        except (OSError, ValueError, AttributeError):
            other = "(unreadable config.json)"
    ck_path = out / CHECKPOINT
    if ck_path.is_file() and (other is None or other == key):
        try:
            ck = checkpoint.load(ck_path)         # (weights only: a file that would run code is refused)
        except Exception as e:  # noqa: BLE001 -- a truncated or foreign file
            raise ConfigError(f"its {CHECKPOINT} is not a raygap checkpoint that can be read safely "
                              f"({type(e).__name__}): truncated, another program's, or written by an older raygap "
                              "with objects torch's weights-only loader refuses", key="--out", file=str(out),
                              hint="pass --fresh to discard it, or choose another --out") from None
        other, why = ck.get("key") or "(unknown)", checkpoint.unusable_on(ck, kind := device_kind(device))
    if other is not None and other != key:
        raise ConfigError(f"holds trial {other}, not this config's trial {key}: resuming it would mix two trials",
                          key="--out", file=str(out), hint="pass --fresh to discard it, or choose another --out")
    if why is not None:
        raise ConfigError(f"its checkpoint cannot be resumed here: {why}", key="--out", file=str(out),
                          hint=f"pass --fresh to start over on {kind}, or resume it on a {ck['device']} machine")


def _results_root(args) -> Path:
    root = Path(args.results)
    if root.exists() and not root.is_dir():
        raise ConfigError("is a file, not a folder", key="--results", file=str(root))
    return root


def _store(args, readonly: bool = False):
    """The results folder's trial store; one to read where there is none yet: an empty one
    (:class:`~raygap.store.EmptyStore`), nothing created."""
    from .store import EmptyStore, Store

    db = _results_root(args) / "store.sqlite"
    return EmptyStore(db) if readonly and not db.exists() else Store(db, readonly=readonly)


def _grid(args, profile=None, sets=None, use_args=True):
    from .grid import load_grid

    return load_grid(args.grid, profile=getattr(args, "profile", None) if use_args else profile,
                     sets=getattr(args, "set", None) if use_args else sets,
                     skip_missing=getattr(args, "skip_missing", False))


def _grid_for_reading(args):
    """(grid, store) for status / export: the profile and --set given, else those the grid
    last ran with (said on stderr); a grid that never ran is one line (exit 2)."""
    if args.profile is not None or args.set:
        grid = _grid(args)
        return grid, _store(args, readonly=True)
    plain = _grid(args)
    store = _store(args, readonly=True)
    last = store.last_run(plain.name)
    if last is None:
        raise ConfigError(f"grid {plain.name!r} has never run with --results {args.results}, so there is no "
                          "profile to default to", file=args.grid,
                          hint=f"run it first (raygap run {args.grid} --profile demo) or pass --profile NAME")
    grid = _grid(args, profile=last["profile"], sets=last["sets"] or None, use_args=False)
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(last["started"])) if last.get("started") else "?"
    what = f"profile {last['profile']}" if last["profile"] else "no profile (the grid's own settings)"
    sets = f" with --set {' '.join(last['sets'])}" if last["sets"] else ""
    print(f"raygap: {what}{sets}: the settings {plain.name} last ran with ({when}); pass --profile to choose",
          file=sys.stderr)
    return grid, store


def _nothing_ran(args, grid, store) -> None:
    """``export`` / ``report`` where no trial store exists: one line naming it and the run to
    start (exit 2), before anything is written."""
    from .store import EmptyStore

    if isinstance(store, EmptyStore):
        run = ["raygap", "run", args.grid, *(["--profile", args.profile] if args.profile else []),
               *[w for item in args.set or [] for w in ("--set", item)],
               *(["--results", args.results] if args.results != RESULTS else [])]
        raise StoreError(store.path, f"no trial of grid {grid.name!r} has run here (no trial store)",
                         f"run it first: {shlex.join(run)}")


def _table_dir(args, grid, create: bool = True) -> Path:
    from .atomic import results_dir

    try:
        return results_dir(_results_root(args), grid.name, grid.variant, create=create)
    except StoreError as e:
        if Path(e.path).name == grid.name and "is a file" in e.problem:
            raise ConfigError(f"{grid.name!r} names {e.path}, which is a file, so the grid's tables cannot go there",
                              file=args.grid, key="name", hint=f"rename the grid (e.g. {grid.name}_grid)") from None
        raise


def _rerun_keys(args, grid, store=None) -> list[str]:
    from .status import stale_trials

    prefixes = [p.strip() for item in args.rerun or [] for p in item.split(",") if p.strip()]
    for p in prefixes:
        if p not in ("all", "stale") and not all(c in "0123456789abcdef" for c in p):
            raise ConfigError(f"{p!r} is not a trial hash (hex digits, as in --dry-run), 'all' or 'stale'",
                              key="--rerun", hint="e.g. --rerun 3fa2 --rerun all")
    stale = {k for ks in stale_trials(grid, store).values() for k in ks} if "stale" in prefixes and store else set()
    keys = sorted({s.key for s in grid.trials
                   if any(p == "all" or (p == "stale" and s.key in stale) or (p != "stale" and s.key.startswith(p))
                          for p in prefixes)})
    if prefixes == ["stale"] and not keys:
        print("--rerun stale: no stored trial of this grid ran with other code of its method", file=sys.stderr)
        return []
    if prefixes and not keys:
        raise ConfigError(f"--rerun {' '.join(prefixes)} matches no trial of this grid", file=args.grid,
                          hint="the hashes are listed by --dry-run")
    return keys


def cmd_run(args) -> int:
    from .export import ExportRefused, write_tables
    from .status import describe, stale_lines, stale_trials
    from .table import read_table

    grid = _grid(args)
    table_dir = _table_dir(args, grid, create=not args.dry_run)
    for label, reason in grid.skipped:
        print(f"skipped row {label!r}: {reason}")
    if args.dry_run:                    # reads only: no store is created, nothing is forgotten
        store = _store(args, readonly=True)
        keys = _rerun_keys(args, grid, store)
        print(describe(grid, store, rerun=set(keys)))
        for line in stale_lines(stale_trials(grid, store)):
            print(f"raygap: {line}", file=sys.stderr)
        if keys:
            print(f"--rerun: would forget {len(keys)} stored trial(s) and run them again (dry run: nothing changed)")
        return 0
    store = _store(args)
    keys = _rerun_keys(args, grid, store)
    for line in stale_lines({m: [k for k in ks if k not in keys] for m, ks in stale_trials(grid, store).items()
                             if any(k not in keys for k in ks)}):
        print(f"raygap: {line}", file=sys.stderr)
    if keys:
        n = store.forget(keys)
        print(f"--rerun: {n} stored trial(s) set aside (kept in the store's `forgotten` table) to run again")
    if not (args.address or os.environ.get("RAY_ADDRESS")):
        # Ray reads this when it is imported: an embedded instance then binds 127.0.0.1 only
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from .progress import Progress
    from .runner import run_grid, tracker_problem

    problem = tracker_problem(args.tracker)
    if problem:
        raise ConfigError(problem, key="--tracker")

    progress = Progress(verbosity=1 + args.verbose - args.quiet, every=args.progress_every)
    summary = run_grid(grid, store, address=args.address, storage=args.storage,
                       max_failures=args.max_failures, num_cpus=args.num_cpus,
                       log=lambda s: print(s, flush=True), progress=progress, tracker=args.tracker,
                       share_warmups=not args.no_shared_warmups)
    with interrupts.protected("export"):
        table = read_table(grid, store, table_dir)
        try:
            paths = write_tables(table, table_dir, force=args.force)
            written = "tables: " + ", ".join(str(p) for p in paths.values())
        except ExportRefused as e:
            written = f"tables not replaced: {e}"
        figures = _figures(table, table_dir / "figures")
    print(f"{summary.total} distinct trial(s): {summary.reused} reused from the store, "
          f"{summary.done} run now, {len(summary.failed)} failed; {summary.wall_seconds:.1f}s")
    print(written)
    if figures:
        drawn = getattr(figures, "drawn", len(figures))
        kept = f"; {len(figures) - drawn} unchanged, kept" if drawn < len(figures) else ""
        print(f"figures: {len(figures)} in {table_dir / 'figures'} ({drawn} drawn{kept})")
    if summary.unfinished:
        marked = (f" ({summary.marked_interrupted} marked interrupted in the store)"
                  if summary.marked_interrupted else "")
        print(f"raygap: interrupted ({summary.interrupted or 'SIGINT'}): {summary.unfinished} trial(s) not "
              f"finished{marked}; run the same command again to finish them (finished trials are kept)",
              file=sys.stderr)
    elif interrupts.interrupted():
        print(f"raygap: {interrupts.last_signal()} received after every trial had finished: the run is complete "
              "and its tables are written", file=sys.stderr)
    if summary.failed:
        print(f"raygap: {len(summary.failed)} trial(s) failed:", file=sys.stderr)
        for key, err in summary.failed.items():
            print(f"  {key}: {err}", file=sys.stderr)
    if isinstance(figures, FiguresFailed):
        return summary.exit_code or 1
    return summary.exit_code


class FiguresFailed(list):
    """No figures: drawing them raised (the tables are written already). Falsy, like no figures;
    the command exits 1 and says where the traceback is."""


def _figures(table, out_dir: Path) -> list:
    """The grid's figures. Drawing them must not cost the tables (written before), and must not
    fail silently either: an error is one line naming the file with its full traceback, and the
    command's exit code becomes 1 (``FiguresFailed``)."""
    import traceback

    from .atomic import atomic_write
    from .figures import grid_figures

    try:
        return grid_figures(table, out_dir)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 -- reported below and in the exit code, not swallowed
        tb = out_dir / "error.txt"
        atomic_write(tb, traceback.format_exc())
        print(f"raygap: figures not drawn: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
              f"(traceback: {tb})", file=sys.stderr)
        return FiguresFailed()


def cmd_status(args) -> int:
    from .status import stale_lines, stale_trials, status_text

    grid, store = _grid_for_reading(args)
    print(status_text(grid, store))
    for line in stale_lines(stale_trials(grid, store)):
        print(f"raygap: {line}", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from .export import ExportRefused, write_tables
    from .render import FORMATS
    from .table import read_table

    grid, store = _grid_for_reading(args)
    _nothing_ran(args, grid, store)
    formats = (args.format,) if args.format else FORMATS
    table_dir = _table_dir(args, grid)
    with interrupts.protected("export"):
        table = read_table(grid, store, table_dir)
        try:
            paths = write_tables(table, table_dir, formats=formats, force=args.force)
        except ExportRefused as e:
            raise ConfigError(str(e), file=args.grid) from None
        paths["figures"] = table_dir / "figures"
        figures = _figures(table, paths["figures"])
    for kind, path in paths.items():
        if args.format and kind == f"table.{args.format}":
            print(Path(path).read_text(encoding="utf-8"))
    print("written: " + ", ".join(str(p) for p in paths.values()), file=sys.stderr if args.format else sys.stdout)
    return 1 if isinstance(figures, FiguresFailed) else 0


def cmd_report(args) -> int:
    from .reproduction import reproduction_report
    from .table import read_table

    grid, store = _grid_for_reading(args)
    _nothing_ran(args, grid, store)
    table_dir = _table_dir(args, grid)
    with interrupts.protected("export"):
        table = read_table(grid, store, table_dir)
        figures = _figures(table, table_dir / "figures")
        path = reproduction_report(table, table_dir, figures)
    print(f"written: {path}")
    return 1 if isinstance(figures, FiguresFailed) else 0


def cmd_prepare(args) -> int:
    from .data.prepare import main_prepare

    opts = {}
    for kv in args.option or []:
        if "=" not in kv:
            raise ConfigError(f"--option expects KEY=VALUE, got {kv!r}", key="--option")
        k, v = kv.split("=", 1)
        opts[k] = v
    return main_prepare(args.dataset, args.raw_dir, args.out_dir, opts)


def version_line() -> str:
    """``raygap X (torch Y, ray Z; Python W)``: read from package metadata, nothing imported."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    parts = []
    for pkg in ("torch", "ray"):
        try:
            parts.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            parts.append(f"{pkg} not installed")
    return f"raygap {__version__} ({', '.join(parts)}; Python {sys.version.split()[0]})"


class _Version(argparse.Action):
    """``--version``, read only when asked (package metadata lookups cost a little)."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line())
        parser.exit(0)


def _summary(text: str, limit: int = 110, sentence: bool = True) -> str:
    """The first paragraph of a docstring (its first sentence when ``sentence``), at most
    ``limit`` characters."""
    para = []
    for line in (text or "").strip().splitlines():
        if not line.strip():
            break
        para.append(line.strip())
    out = " ".join(para)
    cut = out.find(". ") if sentence else -1
    out = out[:cut + 1] if cut > 0 else out
    return out if len(out) <= limit else out[:limit - 1].rstrip() + "…"


def cmd_list(args) -> int:
    """One line per method, dataset, mixture, grid or profile: name and description."""
    rows: list[tuple[str, str]] = []
    if args.what in ("methods", "datasets", "mixtures"):
        from . import data, methods, mixtures  # noqa: F401  (register every plug-in)
        from .registry import DATASETS, METHODS, MIXTURES

        reg = {"methods": METHODS, "datasets": DATASETS, "mixtures": MIXTURES}[args.what]
        for name in reg.names():
            e = reg.get(name)
            extra = []
            if args.what == "methods":
                extra.append(f"v{e.meta.get('version', 1)}")
                if e.meta.get("min_modalities", 1) > 1:
                    extra.append(f">= {e.meta['min_modalities']} modalities")
            if args.what == "datasets":
                extra.append("in memory" if e.meta.get("in_memory") else "files / cache")
            rows.append((name, _summary(e.doc) + (f" [{', '.join(extra)}]" if extra else "")))
    else:
        from .safe_yaml import read_yaml
        from .gridfile import PROFILES_DIR

        folder = PROFILES_DIR if args.what == "profiles" else PROFILES_DIR.parent
        for path in sorted(folder.glob("*.yaml")):
            try:
                doc = read_yaml(path) or {}
                desc = str(doc.get("description") or "") if isinstance(doc, dict) else ""
            except ConfigError as e:
                desc = f"(unreadable: {e.line()})"
            shown = path.stem
            if args.what == "grids":
                shown = os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)
            rows.append((shown, _summary(desc, 150, sentence=False)))
    width = max((len(n) for n, _ in rows), default=0)
    for name, desc in rows:
        print(f"{name:<{width}}  {desc}")
    return 0


def cmd_cache(args) -> int:
    import yaml

    from .validate import validate_params
    from .data.cache import build_dataset
    from .registry import DATASETS

    if args.dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {args.dataset!r}", key="dataset",
                          hint=f"nearest: {DATASETS.nearest(args.dataset)!r}")
    entry = DATASETS.get(args.dataset)
    if entry.meta.get("in_memory"):
        raise ConfigError(f"dataset {args.dataset} is built in memory and has no tensor cache", key="dataset",
                          hint="the cache is for cremad, ave and ks")
    opts = {}
    for kv in args.option or []:
        if "=" not in kv:
            raise ConfigError(f"--option expects KEY=VALUE, got {kv!r}", key="--option")
        k, v = kv.split("=", 1)
        opts[k] = yaml.safe_load(v)
    params = entry.params(**validate_params(entry.params, opts, "--option"))
    for n in args.frames or []:
        if not 1 <= n <= 64:
            raise ConfigError(f"{n} is out of range [1, 64]", key="--frames")
    if not 0 <= args.side <= 4096:
        raise ConfigError(f"{args.side} is out of range [0, 4096]", key="--side")
    build_dataset(args.dataset, params, args.root, frames=args.frames or (), side=args.side,
                  workers=max(1, args.workers), log=lambda s: print(s, flush=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .render import FORMATS

    p = _Parser(prog="raygap", description=__doc__.splitlines()[0])
    p.add_argument("--version", action=_Version, nargs=0, help="print raygap's, torch's and Ray's versions and exit")
    sub = p.add_subparsers(dest="verb", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="run one trial in this process (no Ray)")
    t.add_argument("config")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (dotted)")
    t.add_argument("--out", help="trial directory (default results/train/<hash>); resumes from its checkpoint")
    t.add_argument("--fresh", action="store_true", help="discard an existing checkpoint in the trial directory")
    t.set_defaults(func=cmd_train)

    def grid_args(sp, profile=True):
        sp.add_argument("grid")
        if profile:
            sp.add_argument("--profile", help="overlay grids/profiles/NAME.yaml (demo, paper)")
            sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a trial key in every trial")
            sp.add_argument("--skip-missing", action="store_true",
                            help="drop rows whose method is not implemented (they are listed, never silently)")
        sp.add_argument("--results", default=RESULTS, help="results directory (store.sqlite, tables)")
        if profile:
            sp.add_argument("--force", action="store_true",
                            help="replace tables on disk even with a table holding fewer done cells")

    r = sub.add_parser("run", help="run a grid's missing trials as Ray Tune trials and export its table")
    grid_args(r)
    r.add_argument("--address", help="join an existing Ray cluster (else $RAY_ADDRESS, else an embedded local one)")
    r.add_argument("--storage", help="Tune storage: a local path, s3://, gs:// or a shared filesystem")
    r.add_argument("--dry-run", action="store_true", help="print the trials, their hashes and which are done")
    r.add_argument("--rerun", action="append", metavar="HASH",
                   help="run these stored trials again (a hash prefix from --dry-run, 'all', or 'stale': those "
                        "whose method's code changed since they ran; repeat the option "
                        "or separate with commas); their old rows are kept in the store's `forgotten` table")
    r.add_argument("--max-failures", type=int, default=1, help="Tune retries of a trial whose worker died")
    r.add_argument("--no-shared-warmups", action="store_true",
                   help="every trial trains its own warm-up (default: trials with the same warm-up share one; "
                        "the results are the same either way)")
    r.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray instance (default: all)")
    r.add_argument("--tracker", choices=["none", "tensorboard", "mlflow", "wandb"], default="none",
                   help="also log every epoch through Ray Tune's logger callback (TensorBoard event files in each "
                        "trial folder, MLflow or W&B runs); mlflow and wandb are optional extras")
    r.add_argument("-q", "--quiet", action="count", default=0, help="only failures and the end")
    r.add_argument("-v", "--verbose", action="count", default=0, help="also a line per trial epoch")
    r.add_argument("--progress-every", type=float, default=60.0, metavar="S",
                   help="without a terminal: print the grid line (done, left, ETA) every S seconds (default 60)")
    r.set_defaults(func=cmd_run)

    stt = sub.add_parser("status", help="what is done, running, failed, left")
    grid_args(stt)
    stt.set_defaults(func=cmd_status)

    ex = sub.add_parser("export", help="write the paper-layout table again from the store")
    grid_args(ex)
    ex.add_argument("--format", choices=FORMATS, help="print this format (default: write all)")
    ex.set_defaults(func=cmd_export)

    rp = sub.add_parser("report", help="write report.md: ours beside the paper's numbers, significance, figures, settings")
    grid_args(rp)
    rp.set_defaults(func=cmd_report)

    pr = sub.add_parser("prepare", help="build a dataset's layout from the public downloads")
    pr.add_argument("dataset")
    pr.add_argument("raw_dir")
    pr.add_argument("out_dir")
    pr.add_argument("--option", action="append", metavar="KEY=VALUE", help="dataset-specific option")
    pr.set_defaults(func=cmd_prepare)

    ls = sub.add_parser("list", help="what raygap ships: methods, datasets, mixtures, grids, profiles")
    ls.add_argument("what", choices=["methods", "datasets", "mixtures", "grids", "profiles"])
    ls.set_defaults(func=cmd_list)

    ca = sub.add_parser("cache", help="decode a prepared dataset into the tensor cache (data.pipeline: cache)")
    ca.add_argument("dataset")
    ca.add_argument("--root", help="the prepared layout (default: $RAYGAP_DATA/DATASET)")
    ca.add_argument("--frames", type=int, nargs="+", metavar="N",
                    help="frames per clip, one cache each (default: the dataset's num_frames)")
    ca.add_argument("--side", type=int, default=0, help="side of the cached frames (default 0: the image size)")
    ca.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding processes")
    ca.add_argument("--option", action="append", metavar="KEY=VALUE",
                    help="a data key of the dataset that changes what is cached (e.g. sample_rate=22050 for ave)")
    ca.set_defaults(func=cmd_cache)
    return p


def main(argv: list[str] | None = None) -> int:
    interrupts.install()        # SIGINT, SIGTERM and SIGHUP stop every verb the same way
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"raygap: error: {e.line()}", file=sys.stderr)
        return 2
    except DataError as e:
        print(f"raygap: data error: {e}", file=sys.stderr)
        return 2
    except StoreError as e:
        print(f"raygap: results error: {e.line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"raygap: interrupted ({interrupts.last_signal() or 'SIGINT'})", file=sys.stderr)
        return 130


def entry() -> None:
    """The ``raygap`` console script and ``python -m raygap``: :func:`main`, then exit.

    Once Ray has been imported, the process ends with ``os._exit`` after flushing: raygap
    has shut Ray down by then, and a Ray start-up cut short by a signal leaves C++ threads
    whose destructors abort the interpreter's normal exit ("terminate called without an
    active exception", exit -6) -- which would replace raygap's exit code."""
    code = main()
    if "ray" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
