"""Epoch time of raygap's engine vs a minimal hand-written PyTorch loop, same model and data.

Both do, per epoch, a shuffled training pass and an evaluation of validation and test;
the engine also computes per-modality metrics, writes a checkpoint and a history record.
Runs alternate (engine, hand, engine, hand, ...) so machine noise hits both; the ratio of
medians is printed. Goal: engine / hand <= 1.05.

    .venv/bin/python bench/engine_overhead.py [--reps 3] [--epochs 3] [--config configs/demo.yaml]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as Fn

from raygap.config import load_config
from raygap.models import build_model
from raygap.trial import build_optimizer, configure_threads, fit, load_data


def hand_loop(cfg, bundle, epochs: int) -> tuple[list[float], list[float]]:
    torch.manual_seed(cfg.seed)
    model = build_model(bundle.modalities, bundle.num_classes, cfg.model)
    opt = build_optimizer(cfg.optim, model.parameters())
    mods = bundle.modality_names
    tr = bundle.train
    times, train_times = [], []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        g = torch.Generator().manual_seed(epoch)
        perm = torch.randperm(len(tr), generator=g)
        for s in range(0, len(perm), cfg.train.batch_size):
            idx = perm[s:s + cfg.train.batch_size]
            x = {m: tr.tensors[m][idx] for m in mods}
            loss = Fn.cross_entropy(model(x).fused, tr.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        train_times.append(time.perf_counter() - t0)
        model.eval()
        with torch.no_grad():
            for split in (bundle.val, bundle.test):
                correct = 0
                for s in range(0, len(split), cfg.train.eval_batch_size):
                    x = {m: split.tensors[m][s:s + cfg.train.eval_batch_size] for m in mods}
                    correct += (model(x).fused.argmax(1) == split.labels[s:s + cfg.train.eval_batch_size]).sum().item()
        times.append(time.perf_counter() - t0)
    return times, train_times


def engine(cfg, bundle, epochs: int) -> tuple[list[float], list[float]]:
    with tempfile.TemporaryDirectory() as d:
        res = fit(cfg, bundle, device=torch.device("cpu"), checkpoint_dir=d)
    return [h["epoch_seconds"] for h in res.history], [h["train_seconds"] for h in res.history]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    cfg = load_config(a.config, [f"train.epochs={a.epochs}", f"train.threads={a.threads}", "method.name=concat"])
    configure_threads(cfg)
    bundle = load_data(cfg)
    hand_loop(cfg, bundle, 1)     # warm-up (allocator, kernels, the optimizer's one-time imports)
    e_times, h_times, e_train, h_train = [], [], [], []
    for r in range(a.reps):
        e, et = engine(cfg, bundle, a.epochs)
        h, ht = hand_loop(cfg, bundle, a.epochs)
        e_times += e
        e_train += et
        h_times += h
        h_train += ht
    me, mh = statistics.median(e_times), statistics.median(h_times)
    print(f"model: {cfg.model.backbone} width {cfg.model.width}; data: {cfg.data.name} "
          f"({len(bundle.train)} train samples); batch {cfg.train.batch_size}; threads {a.threads}")
    print(f"engine epoch  median {me:.3f}s  (n={len(e_times)}, min {min(e_times):.3f}s)")
    print(f"hand   epoch  median {mh:.3f}s  (n={len(h_times)}, min {min(h_times):.3f}s)")
    print(f"ratio engine/hand (median) = {me / mh:.3f}   (min/min = {min(e_times) / min(h_times):.3f}; goal <= 1.05)")
    print(f"training pass only: engine {statistics.median(e_train):.3f}s, hand {statistics.median(h_train):.3f}s, "
          f"ratio {statistics.median(e_train) / statistics.median(h_train):.3f}")


if __name__ == "__main__":
    main()
