"""Epoch time of gap_adaptive (refit every epoch, both gap sources) vs concat, same data and model.

Epoch time includes the refit at the epoch's start (mixture fit, posteriors, and for
``gap_source: eval`` the extra forward pass over the training set). Runs alternate so
machine noise hits every variant; medians of the adaptive-stage epochs are compared.
Goal: gap_adaptive / concat <= 1.05 with refits included.

    .venv/bin/python bench/gap_adaptive_cost.py [--reps 3] [--epochs 4] [--config configs/demo.yaml]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

from raygap.config import load_config
from raygap.trial import configure_threads, fit, load_data


def epochs_of(cfg, bundle, stage: str | None) -> list[float]:
    with tempfile.TemporaryDirectory() as d:
        res = fit(cfg, bundle, device=torch.device("cpu"), checkpoint_dir=d)
    return [h["epoch_seconds"] for h in res.history if stage is None or h.get("stage") == stage]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mixture", default="gmm")
    a = ap.parse_args()
    common = [f"train.epochs={a.epochs}", f"train.threads={a.threads}"]
    cfgs = {
        "concat": load_config(a.config, common + ["method.name=concat"]),
        "gap_adaptive (gap_source=train)": load_config(a.config, common + [
            "method.name=gap_adaptive", "method.warmup_epochs=1", "method.gap_source=train",
            f"method.mixture={a.mixture}", "method.refit_every=1"]),
        "gap_adaptive (gap_source=eval)": load_config(a.config, common + [
            "method.name=gap_adaptive", "method.warmup_epochs=1", "method.gap_source=eval",
            f"method.mixture={a.mixture}", "method.refit_every=1"]),
    }
    configure_threads(cfgs["concat"])
    bundle = load_data(cfgs["concat"])
    epochs_of(cfgs["concat"], bundle, None)        # warm-up: one-time imports and allocator
    times = {k: [] for k in cfgs}
    for _ in range(a.reps):
        for name, cfg in cfgs.items():
            times[name] += epochs_of(cfg, bundle, None if name == "concat" else "adaptive")
    base = statistics.median(times["concat"])
    print(f"data {cfgs['concat'].data.name} ({len(bundle.train)} train), model {cfgs['concat'].model.backbone} "
          f"width {cfgs['concat'].model.width}, mixture {a.mixture}, refit every epoch, threads {a.threads}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:34s} median epoch {m:.3f}s (n={len(ts)})  ratio vs concat {m / base:.3f}")
    print("goal: <= 1.05 with refits included")


if __name__ == "__main__":
    main()
