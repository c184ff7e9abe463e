"""Training throughput at the paper's shapes, and what it means for Tables II-VII on one node.

(a) The pure model step: two ResNet-18 encoders and the fusion head, SGD with momentum, on
    device-resident synthetic tensors of each paper dataset's shapes (CREMA-D's 1x257x188
    spectrogram, AVE's 1x257x1004, KS's 1x1024x128 fbank, and the grids' number of RGB frames at
    224), batch 64: training samples/s and evaluation (forward-only) samples/s, fp32 and bf16
    (autocast), channels-last on CUDA -- the ceiling any data pipeline can reach.
(d) Packing: 1, 2 and 4 trials as separate processes on the one device (what fractional
    `resources.gpu` does), each running (a) on CREMA-D's shape; their aggregate samples/s.
Then the projected wall time of every distinct paper-profile trial of grids/table2-7.yaml
(training samples x epochs, plus a forward pass over validation and test each epoch) on one
node of 8 such devices, from the best packed rate.

(b) An engine epoch with the tensor-cache pipeline: ``raygap.trial.run_trial`` (the real loop,
    concat method) for four epochs on a generated CREMA-D layout (480x360 frames, made with
    ffmpeg, or numpy/PIL where ffmpeg is missing; cached), training samples/s of epochs 2-4's
    training passes -- compared with (a) on the same shape: the pipeline's overhead.
(c) The same epoch with the file pipeline (DataLoader, ``--workers`` processes decoding).

Runs from the checkout without Ray (PYTHONPATH=.). `--smoke` runs it at reduced shapes on the
CPU in seconds (tests/test_benches.py runs that).

    PYTHONPATH=. python bench/gpu_throughput.py [--steps 30] [--packs 1,2,4] [--gpus 8] [--clips-per-class 200]
    PYTHONPATH=. python bench/gpu_throughput.py --smoke
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from raygap.config import resolve  # noqa: E402
from raygap.data.base import ModalitySpec  # noqa: E402
from raygap.models import build_model  # noqa: E402
from raygap.trial import build_optimizer  # noqa: E402

# facts about the datasets (docs/datasets.md, the official split files): training clips,
# validation + test clips evaluated every epoch, classes, audio feature shape
DATASETS = {
    "cremad": {"train": 6698 - 670, "eval": 670 + 744, "classes": 6, "audio": (1, 257, 188)},
    "ave": {"train": 3339, "eval": 402 + 402, "classes": 28, "audio": (1, 257, 1004)},
    "ks": {"train": 14799 - 1480, "eval": 1480 + 2597, "classes": 31, "audio": (1, 1024, 128)},
}
SMOKE = {"audio": (1, 32, 24), "image": 32, "backbone": "small", "batch": 8}


def make_step(dataset: str, frames: int, amp: str, device: torch.device, batch: int, smoke: bool):
    """A closure running one training step (and one for an evaluation forward) of the paper
    model on synthetic tensors that live on ``device``."""
    d = DATASETS[dataset]
    audio = SMOKE["audio"] if smoke else d["audio"]
    size = SMOKE["image"] if smoke else 224
    cfg = resolve({"model": {"backbone": SMOKE["backbone"] if smoke else "resnet18", "width": 8},
                   "optim": {"name": "sgd", "lr": 2e-3}})
    specs = [ModalitySpec("audio", "spectrogram", audio), ModalitySpec("visual", "frames", (frames, 3, size, size))]
    torch.manual_seed(0)
    model = build_model(specs, d["classes"], cfg.model).to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg.optim, model.parameters())
    x = {"audio": torch.randn(batch, *audio, device=device),
         "visual": torch.randn(batch, frames, 3, size, size, device=device),
         "label": torch.randint(0, d["classes"], (batch,), device=device)}
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp == "bf16" else None

    def train():
        with ctx() if ctx else _null():
            out = model(x)
            loss = torch.nn.functional.cross_entropy(out.fused.float(), x["label"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def evaluate():
        with ctx() if ctx else _null():
            model(x)

    return train, evaluate


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(fn, steps: int, batch: int, device: torch.device, warmup: int = 3) -> float:
    """Samples per second of ``fn`` over ``steps`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return steps * batch / (time.perf_counter() - t0)


def worker(args) -> None:
    """One packed trial: (a) on CREMA-D's shape; prints its rate as JSON."""
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, args.threads))
    train, _ = make_step("cremad", 1, args.amp, device, args.batch, args.smoke)
    for _ in range(3):
        train()
    sync(device)
    print("READY", flush=True)
    sys.stdin.readline()                       # all packed workers start measuring together
    print(json.dumps({"rate": rate(train, args.steps, args.batch, device, warmup=0)}), flush=True)


def packed(k: int, args) -> float:
    """Aggregate samples/s of ``k`` trials as separate processes on the one device."""
    cmd = [sys.executable, __file__, "--worker", "--device", args.device, "--amp", args.amp,
           "--steps", str(args.steps), "--batch", str(args.batch),
           "--threads", str(max(1, (os.cpu_count() or 1) // k))] + (["--smoke"] if args.smoke else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(k)]
    try:
        for p in procs:
            line = p.stdout.readline()
            if line.strip() != "READY":
                raise RuntimeError(f"packed worker failed before measuring: {line!r}")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        rates = [json.loads(p.stdout.readline())["rate"] for p in procs]
    finally:
        for p in procs:
            p.wait(600)
    return sum(rates)


def engine_epoch(pipeline: str, args) -> float:
    """(b) / (c): training samples/s of the real loop's epochs 2-4 on the generated layout."""
    from raygap.data import cache as tc
    from raygap.data.base import DataCommon
    from raygap.data.synth import make_cremad_layout
    from raygap.errors import DataError
    from raygap.registry import DATASETS
    from raygap.trial import run_trial

    smoke = args.smoke
    size = SMOKE["image"] if smoke else 224
    root = Path(args.layout or (ROOT / "results" / "bench" / ("cremad-layout-smoke" if smoke else "cremad-layout")))
    make_cremad_layout(root, 4 if smoke else args.clips_per_class, frame_size=(64, 48) if smoke else (480, 360),
                       seconds=2.5, workers=4, allow_without_ffmpeg=True)
    entry = DATASETS.get("cremad")
    try:
        bundle = entry.obj(entry.params(image_size=size), DataCommon(root=str(root), pipeline="cache"))
    except DataError:
        tc.build_dataset("cremad", entry.params(image_size=size), str(root), workers=1 if smoke else max(1, args.workers),
                         log=lambda s: None)
        bundle = entry.obj(entry.params(image_size=size), DataCommon(root=str(root), pipeline="cache"))
    if pipeline == "cache":                    # (b0): the batches alone, no model
        args.batches_alone = batches_alone(bundle.train, args)
    cfg = resolve({"data": {"name": "cremad", "root": str(root), "pipeline": pipeline, "image_size": size},
                   "model": {"backbone": SMOKE["backbone"] if smoke else "resnet18", "width": 8},
                   "optim": {"name": "sgd", "lr": 2e-3},
                   "train": {"epochs": 4, "batch_size": args.batch, "device": args.device,
                             "amp": args.amp if args.amp in ("none", "bf16") else "none",
                             "num_workers": args.workers if pipeline == "files" else 0,
                             "threads": args.threads if args.device == "cpu" else 0, "checkpoint": False}})
    hist = run_trial(cfg).history[1:]          # the first epoch pays for cudnn's autotuning
    return sum(h["train_n"] for h in hist) / sum(h["train_seconds"] for h in hist)


def batches_alone(split, args) -> float:
    """Samples/s of the cache split's training batches alone (order, gather, crop, flip, resize,
    normalise on the device), as the loop draws them: what is left of (b) without the model."""
    from raygap.trial import iterate

    device = torch.device(args.device)
    split.place(device)
    gen = torch.Generator()
    n, t0 = 0, 0.0
    for rep in range(4):                       # the first pass warms up; three are timed
        if rep == 1:
            sync(device)
            t0, n = time.perf_counter(), 0
        gen.manual_seed(rep)
        for batch in iterate(split, args.batch, shuffle=True, generator=gen):
            n += len(batch["label"])
    sync(device)
    return n / (time.perf_counter() - t0)


def paper_trials() -> list[tuple[str, int, int]]:
    """(dataset, frames, epochs) of every distinct paper-profile trial of Tables II-VII."""
    from raygap.grid import load_grid

    seen = {}
    for n in range(2, 8):
        for t in load_grid(ROOT / "grids" / f"table{n}.yaml", profile="paper").trials:
            c = t.config.to_dict()
            seen[t.key] = (c["data"]["name"], int(c["data"].get("num_frames", 1)), int(c["train"]["epochs"]))
    return list(seen.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="reduced shapes on the CPU, seconds")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--packs", default=None, help="comma-separated numbers of packed trials (default 1,2,4)")
    ap.add_argument("--gpus", type=int, default=8, help="devices per node in the projection")
    ap.add_argument("--device", default=None)
    ap.add_argument("--amp", default="bf16")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=None,
                    help="DataLoader workers of (c), cache-building processes of (b) (default min(4, CPUs); "
                         "--smoke: 0, decoding in the trial's process)")
    ap.add_argument("--layout", default=None, help="generated CREMA-D layout (default results/bench/cremad-layout)")
    ap.add_argument("--clips-per-class", type=int, default=200)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.device = args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    args.batch = args.batch or (SMOKE["batch"] if args.smoke else 64)
    args.steps = args.steps or (2 if args.smoke else 30)
    if args.workers is None:
        args.workers = 0 if args.smoke else min(4, os.cpu_count() or 1)
    if args.worker:
        return worker(args)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    if device.type == "cpu" and not args.smoke:
        print("no CUDA device: this measures the CPU at paper shapes (slow); --smoke for a quick check")
    print(f"device: {name}; torch {torch.__version__}; batch {args.batch}; {args.steps} timed steps")

    trials = paper_trials()
    shapes = sorted({(d, f) for d, f, _ in trials})
    if args.smoke:                             # one shape: CREMA-D's, the most common in the grids
        shapes = [min(shapes, key=lambda s: (s[0] != "cremad", s[1]))]
    rates: dict = {}
    print("(a) model step on device-resident tensors, samples/s (train | eval forward)")
    for d, f in shapes:
        line = []
        for amp in ("none", "bf16"):
            train, evaluate = make_step(d, f, amp, device, args.batch, args.smoke)
            rates[(d, f, amp)] = (rate(train, args.steps, args.batch, device), rate(evaluate, args.steps, args.batch, device))
            line.append(f"{'fp32' if amp == 'none' else amp} {rates[(d, f, amp)][0]:8.1f} | {rates[(d, f, amp)][1]:8.1f}")
        print(f"  {d:6s} {f} frame(s): " + "   ".join(line)
              + f"   bf16/fp32 train {rates[(d, f, 'bf16')][0] / rates[(d, f, 'none')][0]:.2f}x")

    amp0 = args.amp if args.amp in ("none", "bf16") else "bf16"
    d0, f0 = min(shapes, key=lambda s: (s[0] != "cremad", s[1]))
    print(f"(b)/(c) engine epoch on a generated CREMA-D layout ({amp0}), training samples/s of the real loop")
    eng = {p: engine_epoch(p, args) for p in ("cache", "files")}
    model_rate = rates[(d0, f0, amp0)][0]
    print(f"  (b0) cache batches alone (no model) {args.batches_alone:8.1f}")
    print(f"  (b) cache pipeline {eng['cache']:8.1f}   (b)/(a) {eng['cache'] / model_rate:.2f}")
    print(f"  (c) file pipeline  {eng['files']:8.1f}   (c)/(a) {eng['files'] / model_rate:.2f}   "
          f"({args.workers} DataLoader workers)")

    packs = [int(k) for k in (args.packs or ("1,2" if args.smoke else "1,2,4")).split(",")]
    print(f"(d) packed trials on one device ({args.amp}, CREMA-D shape), aggregate samples/s")
    agg = {k: packed(k, args) for k in packs}
    for k in packs:
        print(f"  {k} trial(s): {agg[k]:8.1f}  ({agg[k] / agg[packs[0]]:.2f}x of {packs[0]})")

    # projection: every distinct paper trial, at the measured rate of its shape, scaled by the
    # best packing gain (measured on CREMA-D's shape), spread over --gpus devices
    amp = args.amp if args.amp in ("none", "bf16") else "bf16"
    gain = max(agg.values()) / agg[packs[0]]
    seconds = 0.0
    first = shapes[0]
    for d, f, epochs in trials:
        tr, ev = rates[(d, f, amp)] if (d, f, amp) in rates else rates[(*first, amp)]   # (smoke: one shape)
        seconds += epochs * (DATASETS[d]["train"] / tr + DATASETS[d]["eval"] / ev)
    hours = seconds / gain / args.gpus / 3600
    print(f"projection: {len(trials)} distinct paper trials of Tables II-VII on {args.gpus} x {name}, "
          f"{amp}, packing gain {gain:.2f}x: {hours:.2f} h of pure model steps (no data pipeline, "
          f"no start-up){' [smoke shapes: not meaningful]' if args.smoke else ''}")
    print(f"ratios: (b)/(a) {eng['cache'] / model_rate:.2f} (goal >= 0.90); (b)/(c) {eng['cache'] / eng['files']:.2f}; "
          f"bf16/fp32 train ({d0}, {f0} frame(s)) "
          f"{rates[(d0, f0, 'bf16')][0] / rates[(d0, f0, 'none')][0]:.2f}; "
          + "; ".join(f"{k} packed vs 1 {agg[k] / agg[packs[0]]:.2f}" for k in packs[1:]))


if __name__ == "__main__":
    main()
