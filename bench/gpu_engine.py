"""(b) / (c) of bench/gpu_throughput.py: the real loop on a generated CREMA-D layout.

``make_cremad_layout`` writes real media at CREMA-D's sizes (480x360 frames, made with ffmpeg,
or numpy/PIL where ffmpeg is missing; kept between runs) and ``raygap cache`` builds its
tensor cache. Then, as a paper trial's process: ``prepare_process``, ``load_data`` (timed: the
layout's screening and the cache's fingerprint check, per clip) and ``fit`` for a few epochs of
the paper profile's concat trial, once with ``data.pipeline: cache`` (b) and once with
``files`` (c: ``--workers`` DataLoader processes decoding every item); training samples/s
of the epochs after the first (its first kernel launches and allocator growth are not
counted). (b0): the cache split's training batches alone, as the loop draws them.
The layout is also what scripts/gpu_check.sh trains on afterwards.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from gpu_measure import sync, threads_for
from gpu_replay import Stop


def make_layout(root: Path, clips_per_class: int, workers: int, smoke: bool, image_size: int) -> Path:
    from raygap.data import cache as tc
    from raygap.data.base import DataCommon
    from raygap.data.synth import make_cremad_layout
    from raygap.errors import DataError
    from raygap.registry import DATASETS

    make_cremad_layout(root, clips_per_class, frame_size=(64, 48) if smoke else (480, 360), seconds=2.5,
                       workers=4, allow_without_ffmpeg=True)
    entry = DATASETS.get("cremad")
    try:
        entry.obj(entry.params(image_size=image_size), DataCommon(root=str(root), pipeline="cache"))
    except DataError:
        tc.build_dataset("cremad", entry.params(image_size=image_size), str(root), workers=max(1, workers),
                         log=lambda s: None)
    return root


def batches_alone(split, batch: int, device: torch.device) -> float:
    """Samples/s of the cache split's training batches (order, gather, crop, flip, resize,
    normalise on the device) without the model, placed where fit() placed them: the first
    pass warms up, three are timed."""
    from raygap.trial import iterate

    gen = torch.Generator()
    n, t0 = 0, 0.0
    for rep in range(4):
        if rep == 1:
            sync(device)
            t0, n = time.perf_counter(), 0
        gen.manual_seed(rep)
        for b in iterate(split, batch, shuffle=True, generator=gen):
            n += len(b["label"])
    sync(device)
    return n / (time.perf_counter() - t0)


def engine(cfg, pipeline: str, root: Path, device: torch.device, epochs: int, workers: int,
           gpu_share: float) -> dict:
    """Training samples/s of fit()'s epochs 1.. (of ``epochs``) with ``pipeline``, the trial
    holding ``gpu_share`` of the device; seconds of load_data per clip; (cache) the batches
    alone, after fit(), where it placed them."""
    from raygap.config import resolve
    from raygap.trial import fit, load_data, prepare_process

    d = cfg.to_dict()
    cfg = resolve({**d, "data": {**d["data"], "root": str(root), "pipeline": pipeline},
                   "train": {**d["train"], "num_workers": workers if pipeline == "files" else 0, "checkpoint": False}})
    prepare_process(cfg, threads_for(cfg))
    t0 = time.perf_counter()
    bundle = load_data(cfg)
    load_s = time.perf_counter() - t0
    clips = len(bundle.train) + len(bundle.val) + len(bundle.test)
    out = {"load_per_clip": load_s / clips, "clips": clips}
    hist = []

    def report(record, ckpt_dir):
        hist.append(record)
        if record["epoch"] >= epochs - 1:
            raise Stop

    try:
        fit(cfg, bundle, device=device, report=report, final_checkpoint=False, gpu_share=gpu_share)
    except Stop:
        pass
    if pipeline == "cache":
        out["alone"] = batches_alone(bundle.train, cfg.train.batch_size, device)
        out["placed"] = "resident" if bundle.train.resident is not None else "streamed"
    hist = hist[1:]
    out["rate"] = sum(h["train_n"] for h in hist) / sum(h["train_seconds"] for h in hist)
    return out
