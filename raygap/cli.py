"""The command line: ``raygap VERB ...`` (also ``python -m raygap``).

Exit codes: 0 done; 1 a trial failed (one summary line says which and why);
2 bad input (one line naming the file, the key and the problem; no traceback).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from .errors import ConfigError, DataError


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


def cmd_train(args) -> int:
    from .config import load_config
    from .trial import run_trial

    cfg = load_config(args.config, args.set)
    out = Path(args.out or Path("results") / "train" / cfg.key()).resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError("exists and is not a directory", key="--out", file=str(out))
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    print(f"trial {cfg.key()}  ->  {out}", flush=True)
    t0 = time.perf_counter()
    try:
        result = run_trial(cfg, checkpoint_dir=out, log=lambda s: print(s, flush=True))
    except (ConfigError, DataError):
        raise
    except Exception as e:  # a failed trial: one summary line, exit 1; the checkpoint stays
        print(f"raygap: trial {cfg.key()} failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    wall = time.perf_counter() - t0
    tmp = out / "result.json.tmp"
    tmp.write_text(json.dumps({"key": result.key, "metrics": result.metrics, "history": result.history,
                               "info": result.info, "wall_seconds": wall}, indent=1, default=str))
    tmp.replace(out / "result.json")
    mods = cfg.data.modalities or [k[len("acc_"):] for k in result.metrics
                                   if k.startswith("acc_")]
    _print_metrics(result.metrics, mods)
    print(f"wall time {wall:.1f}s; result written to {out / 'result.json'}")
    return 0


def _store(args):
    from .store import Store

    return Store(Path(args.results) / "store.sqlite")


def _grid(args):
    from .grid import load_grid

    return load_grid(args.grid, profile=getattr(args, "profile", None), sets=getattr(args, "set", None),
                     skip_missing=getattr(args, "skip_missing", False))


def cmd_run(args) -> int:
    from .export import export_grid
    from .grid import describe

    grid = _grid(args)
    store = _store(args)
    for label, reason in grid.skipped:
        print(f"skipped row {label!r}: {reason}")
    if args.rerun:
        keys = sorted({s.key for s in grid.trials if any(s.key.startswith(p) or p == "all" for p in args.rerun)})
        if not keys:
            raise ConfigError(f"--rerun {' '.join(args.rerun)} matches no trial of this grid", file=args.grid)
        store.forget(keys)
        print(f"--rerun: forgot {len(keys)} stored trial(s)")
    if args.dry_run:
        print(describe(grid, store))
        return 0
    from .runner import run_grid

    summary = run_grid(grid, store, address=args.address, storage=args.storage,
                       max_failures=args.max_failures, num_cpus=args.num_cpus,
                       log=lambda s: print(s, flush=True))
    paths = export_grid(grid, store, Path(args.results) / grid.name)
    figures = _figures(grid, store, Path(args.results) / grid.name / "figures")
    print(f"{summary.total} distinct trial(s): {summary.reused} reused from the store, "
          f"{summary.done} run now, {len(summary.failed)} failed; {summary.wall_seconds:.1f}s")
    print("tables: " + ", ".join(str(p) for p in paths.values()))
    if figures:
        print(f"figures: {len(figures)} in {Path(args.results) / grid.name / 'figures'}")
    if summary.unfinished:
        print(f"raygap: interrupted: {summary.unfinished} trial(s) not finished; run the same command "
              "again to finish them (finished trials are kept)", file=sys.stderr)
    if summary.failed:
        print(f"raygap: {len(summary.failed)} trial(s) failed:", file=sys.stderr)
        for key, err in summary.failed.items():
            print(f"  {key}: {err}", file=sys.stderr)
    return summary.exit_code


def _figures(grid, store, out_dir: Path) -> list:
    """The grid's figures; a figure that cannot be drawn costs one warning line, never the run."""
    from .report import grid_figures

    try:
        return grid_figures(grid, store, out_dir)
    except Exception as e:  # noqa: BLE001 -- the tables are written already; figures are extras
        print(f"raygap: figures not drawn: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
              file=sys.stderr)
        return []


def cmd_status(args) -> int:
    from .export import status_text

    print(status_text(_grid(args), _store(args)))
    return 0


def cmd_export(args) -> int:
    from .export import export_grid

    grid = _grid(args)
    formats = (args.format,) if args.format else ("csv", "md", "tex")
    store = _store(args)
    paths = export_grid(grid, store, Path(args.results) / grid.name, formats=formats)
    paths["figures"] = Path(args.results) / grid.name / "figures"
    _figures(grid, store, paths["figures"])
    for kind, path in paths.items():
        if args.format and kind == f"table.{args.format}":
            print(Path(path).read_text())
    print("written: " + ", ".join(str(p) for p in paths.values()), file=sys.stderr if args.format else sys.stdout)
    return 0


def cmd_prepare(args) -> int:
    from .data.prepare import main_prepare

    opts = {}
    for kv in args.option or []:
        if "=" not in kv:
            raise ConfigError(f"--option expects KEY=VALUE, got {kv!r}", key="--option")
        k, v = kv.split("=", 1)
        opts[k] = v
    return main_prepare(args.dataset, args.raw_dir, args.out_dir, opts)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="raygap", description=__doc__.splitlines()[0])
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
        sp.add_argument("--results", default="results", help="results directory (store.sqlite, tables)")

    r = sub.add_parser("run", help="run a grid's missing trials as Ray Tune trials and export its table")
    grid_args(r)
    r.add_argument("--address", help="join an existing Ray cluster (else $RAY_ADDRESS, else an embedded local one)")
    r.add_argument("--storage", help="Tune storage: a local path, s3://, gs:// or a shared filesystem")
    r.add_argument("--dry-run", action="store_true", help="print the trials, their hashes and which are done")
    r.add_argument("--rerun", nargs="+", metavar="HASH", help="forget these stored trials (hash prefixes, or 'all') and run them again")
    r.add_argument("--max-failures", type=int, default=1, help="Tune retries of a trial whose worker died")
    r.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray instance (default: all)")
    r.set_defaults(func=cmd_run)

    stt = sub.add_parser("status", help="what is done, running, failed, left")
    grid_args(stt)
    stt.set_defaults(func=cmd_status)

    ex = sub.add_parser("export", help="write the paper-layout table again from the store")
    grid_args(ex)
    ex.add_argument("--format", choices=["csv", "md", "tex"], help="print this format (default: write all)")
    ex.set_defaults(func=cmd_export)

    pr = sub.add_parser("prepare", help="build a dataset's layout from the public downloads")
    pr.add_argument("dataset")
    pr.add_argument("raw_dir")
    pr.add_argument("out_dir")
    pr.add_argument("--option", action="append", metavar="KEY=VALUE", help="dataset-specific option")
    pr.set_defaults(func=cmd_prepare)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"raygap: error: {e.line()}", file=sys.stderr)
        return 2
    except DataError as e:
        print(f"raygap: data error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raygap: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
