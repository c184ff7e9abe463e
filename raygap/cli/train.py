"""``raygap train CONFIG``: one trial in this process (no Ray), in a trial directory that it
resumes from, after checking that the directory's checkpoint is this trial's and can continue
exactly on this device; ``--fresh`` discards only the files it writes there."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..errors import ConfigError, DataError
from ..removal import remove
from ..trialfiles import CHECKPOINT

TRAIN_FILES = (CHECKPOINT, f"{CHECKPOINT}.tmp", "result.json", "result.json.tmp", "config.json")


def cmd_train(args) -> int:
    from ..atomic import atomic_write
    from ..config import load_config
    from ..devices import cuda_problem
    from ..trial import run_trial

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
                remove(p, out)
                removed.append(p.name)
    return removed


def _check_trial_dir(out: Path, key: str, device: str = "auto") -> None:
    """Refuse a trial directory holding another trial's checkpoint or config, or a checkpoint that
    cannot continue exactly on the device this trial trains on (``train.device``) (exit 2)."""
    from .. import checkpoint
    from ..devices import device_kind

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


def _print_metrics(metrics: dict, modalities: list[str]) -> None:
    print(f"reported epoch {metrics['best_epoch']} (best validation {metrics.get('val_acc', float('nan')):.4f}); "
          f"last epoch {metrics['last_epoch']}")
    rows = [("fusion", "")] + [(m, f"_{m}") for m in modalities]
    print(f"{'':>8}  {'test acc':>8}  {'macro-F1':>8}  {'last acc':>8}")
    for name, sfx in rows:
        print(f"{name:>8}  {metrics.get('acc' + sfx, float('nan')):8.4f}  "
              f"{metrics.get('macro_f1' + sfx, float('nan')):8.4f}  {metrics.get('last_acc' + sfx, float('nan')):8.4f}")
