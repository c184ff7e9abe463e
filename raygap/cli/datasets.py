"""The dataset verbs: ``raygap prepare`` (a dataset's layout from its public downloads) and
``raygap cache`` (a prepared layout decoded once into the tensor cache)."""
from __future__ import annotations

from ..dotted import key_values
from ..errors import ConfigError


def cmd_prepare(args) -> int:
    """0 when every clip is ready, 1 when some failed or lack source media (listed in
    OUT_DIR/prepare_failures.txt); bad input is one line from :func:`raygap.cli.main` (exit 2)."""
    from ..data.prepare import prepare

    report = prepare(args.dataset, args.raw_dir, args.out_dir, dict(key_values(args.option, "--option")),
                     force=args.force)
    return 1 if (report["failed"] or report["missing_source"]) else 0


def cmd_cache(args) -> int:
    import yaml

    from ..data.cache import build_dataset
    from ..registry import DATASETS
    from ..validate import validate_params

    if args.dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {args.dataset!r}", key="dataset",
                          hint=f"nearest: {DATASETS.nearest(args.dataset)!r}")
    entry = DATASETS.get(args.dataset)
    if entry.meta.get("in_memory"):
        raise ConfigError(f"dataset {args.dataset} is built in memory and has no tensor cache", key="dataset",
                          hint="the cache is for cremad, ave and ks")
    opts = {k: yaml.safe_load(v) for k, v in key_values(args.option, "--option")}
    params = entry.params(**validate_params(entry.params, opts, "--option"))
    for n in args.frames or []:
        if not 1 <= n <= 64:
            raise ConfigError(f"{n} is out of range [1, 64]", key="--frames")
    if not 0 <= args.side <= 4096:
        raise ConfigError(f"{args.side} is out of range [0, 4096]", key="--side")
    build_dataset(args.dataset, params, args.root, frames=args.frames or (), side=args.side,
                  workers=max(1, args.workers), log=lambda s: print(s, flush=True))
    return 0
