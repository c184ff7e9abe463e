"""How many training epochs shared warm-up stages save (issue 15, item 1), from the grid
expansion alone: nothing is trained.

The warm-ups shared are the runner's own (``TrialConfig.warmup``, declared by each method's
``shared_warmup``): every gap_adaptive variant with the same config outside ``method:`` and
the same warm-up keys (warmup_epochs, gap, pair, gap_source) trains an identical warm-up, so
``raygap run`` trains it once and starts the others from its end. Without sharing, a
distinct trial trains all its epochs; with it, each group of trials with one warm-up trains
it once and every other member trains only what follows it. (The warm-up objective control
is not counted as sharing: its epoch records differ from gap_adaptive's warm-up records.)

Prints, per grid and for all tables together, the distinct trials, the warm-up groups
shared by two or more trials, and the epochs trained without and with shared warm-ups.

    .venv/bin/python bench/warmup_sharing.py [--profiles demo,paper]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from raygap.config import epochs_not_trained_again, warmup_groups  # noqa: E402
from raygap.grid import load_grid  # noqa: E402

GRIDS = ["table2", "table3", "table4", "table5", "table6", "table7"]


def epochs(trials: dict) -> tuple[int, int, int]:
    """(epochs without sharing, epochs with shared warm-ups, warm-ups shared) over distinct trials."""
    plain = sum(int(t.config.train.epochs) for t in trials.values())
    groups = warmup_groups(trials.values())
    return plain, plain - epochs_not_trained_again(groups), sum(1 for m in groups.values() if len(m) > 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default="demo,paper")
    args = ap.parse_args()
    for profile in args.profiles.split(","):
        every: dict = {}
        print(f"profile {profile}: grid, distinct trials, warm-ups shared, epochs without -> with shared warm-ups (saved)")
        for name in GRIDS:
            g = load_grid(ROOT / "grids" / f"{name}.yaml", profile=profile, skip_missing=True)
            trials = dict(g.distinct())
            every.update(trials)
            a, b, n = epochs(trials)
            print(f"  {name:7s} {len(trials):4d} {n:5d}   {a:6d} -> {b:6d}   ({a - b} saved, {100 * (a - b) / a:.0f} %)")
        a, b, n = epochs(every)
        print(f"  all     {len(every):4d} {n:5d}   {a:6d} -> {b:6d}   ({a - b} saved, {100 * (a - b) / a:.0f} %)"
              "   (tables share trials: 'all' counts each once)")


if __name__ == "__main__":
    main()
