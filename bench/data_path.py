"""Data path, per CPU core: the per-item file pipeline vs the tensor cache, at paper shapes.

On one generated CREMA-D layout (ffmpeg media at CREMA-D's sizes: 480x360 JPEG frames at
1 fps, 16 kHz mono WAVs of 2.5 s, resampled to 22050 Hz and turned into the 1x257x188 log
STFT on load; made under --root if absent, and its cache built there), one process with
one torch thread measures training batches of 64, one frame, 224x224:

  files      the DataLoader path (num_workers=0): WAV read, resample, STFT, JPEG decode,
             RandomResizedCrop, flip, normalise, per item -- what each DataLoader worker does
  cache/host what the host does per batch when the augmentation runs on the GPU: drawing the
             order and the crop boxes, gathering the rows from the memory-mapped cache (page
             cache warm) -- "streamed"; with the split uploaded to the device ("resident")
             only the order and the boxes remain
  cache/cpu  the whole cache path with the CPU as the device (gather + crop + flip + resize
             + normalise on the CPU): what a CPU-only trial gets

and prints the ratios last. Goals (issue 12): cache vs files >= 20x per core; host side of
the cache path >= 4000 samples/s (what one H100 trial consumes).

    PYTHONPATH=. python bench/data_path.py [--root results/bench/cremad-layout] [--clips-per-class 40]
    PYTHONPATH=. python bench/data_path.py --smoke      # tiny layout and sizes (tests/test_benches.py)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import raygap.data  # noqa: E402,F401  (registers the datasets)
from raygap.data import augment  # noqa: E402
from raygap.data import cache as tc  # noqa: E402
from raygap.data.base import DataCommon  # noqa: E402
from raygap.data.synth import make_cremad_layout  # noqa: E402
from raygap.errors import DataError  # noqa: E402
from raygap.registry import DATASETS  # noqa: E402
from raygap.trial import iterate  # noqa: E402


def timed(batches, seconds: float) -> float:
    """Samples/s of an iterator of batches, run until ``seconds`` have passed (at least 2 batches)."""
    it = iter(batches)
    next(it)                                           # warm-up batch
    n, t0 = 0, time.perf_counter()
    for k, b in enumerate(it):
        n += len(b["label"]) if isinstance(b, dict) and "label" in b else b
        if k >= 1 and time.perf_counter() - t0 > seconds:
            break
    return n / (time.perf_counter() - t0)


def cycle(split, batch: int, gen: torch.Generator):
    while True:
        yield from iterate(split, batch, shuffle=True, generator=gen)


def host_side(split: tc.CacheSplit, batch: int, gen: torch.Generator, streamed: bool):
    """What the host does per batch of the cache path when the device augments."""
    n = len(split)
    while True:
        order = torch.randperm(n, generator=gen)
        for s in range(0, n - batch + 1, batch):
            idx = order[s:s + batch]
            hw = split.hw[idx].reshape(-1, 2)
            augment.crop_theta(augment.crop_boxes(hw[:, 0], hw[:, 1], gen), hw[:, 0], hw[:, 1],
                               torch.rand(len(hw), generator=gen) < 0.5)
            if streamed:
                split.host_batch(idx)
            yield len(idx)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT / "results" / "bench" / "cremad-layout"))
    ap.add_argument("--clips-per-class", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=8.0, help="time per measurement")
    ap.add_argument("--smoke", action="store_true", help="tiny layout and sizes, seconds")
    args = ap.parse_args()
    torch.set_num_threads(1)
    frame, size, batch, per_class = (480, 360), 224, 64, args.clips_per_class
    if args.smoke:
        frame, size, batch, per_class, args.seconds = (64, 48), 32, 8, 4, 0.5
        args.root = args.root if "--root" in sys.argv else str(ROOT / "results" / "bench" / "cremad-layout-smoke")
    root = Path(args.root)
    t0 = time.perf_counter()
    make_cremad_layout(root, per_class, frame_size=frame, seconds=2.5, workers=4)
    entry = DATASETS.get("cremad")
    params = entry.params(image_size=size)
    try:
        bundle = entry.obj(params, DataCommon(root=str(root), pipeline="cache"))
    except DataError:                                   # absent or stale: (re)build it
        tc.build_dataset("cremad", params, str(root), workers=1 if args.smoke else 2, log=lambda s: None)
        bundle = entry.obj(params, DataCommon(root=str(root), pipeline="cache"))
    files = entry.obj(params, DataCommon(root=str(root)))
    print(f"layout: {root} ({len(files.train)} train clips, frames {frame[0]}x{frame[1]}, batch {batch}, "
          f"image {size}, 1 frame; ready in {time.perf_counter() - t0:.0f} s); one process, 1 torch thread")

    gen = torch.Generator().manual_seed(0)
    r_files = timed(cycle(files.train, batch, gen), args.seconds)
    print(f"files       {r_files:10.1f} samples/s per core (decode + STFT + augment per item)")
    split = bundle.train
    split.place(torch.device("cpu"))
    r_stream = timed(host_side(split, batch, gen, streamed=True), args.seconds)
    print(f"cache/host  {r_stream:10.1f} samples/s per core, streamed (order + crop boxes + gather from the mapped files)")
    r_res = timed(host_side(split, batch, gen, streamed=False), args.seconds)
    print(f"cache/host  {r_res:10.1f} samples/s per core, resident (order + crop boxes; pixels stay on the device)")
    r_cpu = timed(cycle(split, batch, gen), args.seconds)
    print(f"cache/cpu   {r_cpu:10.1f} samples/s per core (gather + augment on the CPU)")
    nbytes = split.nbytes() / len(split)
    print(f"cache bytes per training sample: {nbytes / 1e3:.0f} kB (audio fp16 + uint8 frame)")
    print(f"ratios: cache/host streamed vs files {r_stream / r_files:.1f}x (goal >= 20); "
          f"cache/host resident vs files {r_res / r_files:.1f}x; cache/cpu vs files {r_cpu / r_files:.1f}x; "
          f"host side streamed {r_stream:.0f} samples/s vs the 4000 one H100 trial consumes: {r_stream / 4000:.2f}x"
          + (" [smoke sizes: not meaningful]" if args.smoke else ""))


if __name__ == "__main__":
    main()
