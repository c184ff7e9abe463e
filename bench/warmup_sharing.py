"""How many training epochs shared warm-up stages would save (issue 15, item 1), from the grid
expansion alone: nothing is trained.

Every gap_adaptive variant of Tables II-VII with the same data, model, optimizer, schedule,
seed and warm-up length trains an identical warm-up (the warm-up objective, Eq. 10: the
adaptive-stage keys -- alpha, beta, gamma, rho, the mixture, the gap, purification, the
optimizer reset... -- act only after the switch); the warm-up objective control trains the
same first W epochs. So a warm-up identity is the trial's config with the method reduced to
its warm-up length. Without sharing, a distinct trial trains all its epochs; with it, each
distinct warm-up is trained once and every member trains only what follows it.

Prints, per grid and for all tables together, the distinct trials, the epochs trained without
and with shared warm-ups, and the saving, for each profile.

    .venv/bin/python bench/warmup_sharing.py [--profiles demo,paper]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from raygap.grid import load_grid  # noqa: E402

GRIDS = ["table2", "table3", "table4", "table5", "table6", "table7"]
STAGED = {"gap_adaptive"}                 # methods with a warm-up stage (warmup_epochs)
WARMUP_ONLY = {"warmup_objective"}        # trains the warm-up objective for every epoch


def warmup_identity(cfg: dict, W: int) -> str:
    """The config a warm-up of length W depends on: everything but the method's own keys."""
    rest = {k: v for k, v in cfg.items() if k not in ("method", "resources")}
    return json.dumps({"warmup_epochs": W, **rest}, sort_keys=True, default=str)


def epochs(trials: dict) -> tuple[int, int]:
    """(epochs without sharing, epochs with shared warm-ups) over distinct trials."""
    plain = shared = 0
    groups: dict[str, int] = {}
    controls = []
    for cfg in trials.values():
        E = int(cfg["train"]["epochs"])
        plain += E
        name = cfg["method"]["name"]
        if name in STAGED:
            W = int(cfg["method"].get("warmup_epochs", 10))
            groups[warmup_identity(cfg, W)] = W
            shared += E - W
        elif name not in WARMUP_ONLY:
            shared += E
        else:
            controls.append(cfg)
    shared += sum(groups.values())                      # each distinct warm-up once
    for cfg in controls:                                # a control continues a warm-up of its own config
        E = int(cfg["train"]["epochs"])
        Ws = [W for W in {W for W in groups.values()} if warmup_identity(cfg, W) in groups]
        shared += E - max(Ws) if Ws else E
    return plain, shared


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default="demo,paper")
    args = ap.parse_args()
    for profile in args.profiles.split(","):
        every: dict = {}
        print(f"profile {profile}: grid, distinct trials, epochs without -> with shared warm-ups (saved)")
        for name in GRIDS:
            g = load_grid(ROOT / "grids" / f"{name}.yaml", profile=profile, skip_missing=True)
            trials = {k: t.config.to_dict() for k, t in g.distinct().items()}
            every.update(trials)
            a, b = epochs(trials)
            print(f"  {name:7s} {len(trials):4d}   {a:6d} -> {b:6d}   ({a - b} saved, {100 * (a - b) / a:.0f} %)")
        a, b = epochs(every)
        print(f"  all     {len(every):4d}   {a:6d} -> {b:6d}   ({a - b} saved, {100 * (a - b) / a:.0f} %)"
              "   (tables share trials: 'all' counts each once)")


if __name__ == "__main__":
    main()
