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
