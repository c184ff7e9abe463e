"""Checkpoint bytes of one paper-shape trial, before and after `train.checkpoint_every`.

A paper trial (Table III "Full Model" on CREMA-D: two ResNet-18 encoders, a 1x257x188
spectrogram and RGB frames at 224, SGD with momentum, the gap_adaptive method's per-sample
state over CREMA-D's training clips) is built on the CPU and its checkpoint -- exactly the
dict `raygap.trial.fit` saves -- serialised to measure its size. The number of checkpoints
a trial writes (and, in a grid, uploads to --storage) comes from `raygap.trial.checkpoint_due`,
the predicate `fit` uses, and is checked against a real short `fit` on avdigits. Before: one
checkpoint every epoch (the old behaviour: `checkpoint_every: 1`). Then the load time of that
checkpoint through torch's weights-only unpickler (how raygap loads every checkpoint) beside the
full unpickler (how it loaded them before), alternated in one run.

    .venv/bin/python bench/checkpoint_bytes.py [--epochs 100] [--trials 306] [--n-train 6698]
"""
from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time

import torch

from raygap.config import resolve
from raygap.data.base import ModalitySpec
from raygap.grid import load_grid
from raygap.methods.base import MethodContext
from raygap.models import build_model
from raygap.registry import METHODS
from raygap.trial import build_optimizer, checkpoint_due, fit, load_data


def paper_checkpoint_bytes(n_train: int, frames: int) -> tuple[int, float]:
    trial = next(t for t in load_grid("grids/table3.yaml", profile="paper").trials if t.label == "Ours (Full Model)")
    cfg = trial.config
    specs = [ModalitySpec("audio", "spectrogram", (1, 257, 188)),
             ModalitySpec("visual", "frames", (frames, 3, 224, 224))]
    model = build_model(specs, 6, cfg.model)
    opt = build_optimizer(cfg.optim, model.parameters())
    batch = {"audio": torch.randn(2, 1, 257, 188), "visual": torch.randn(2, frames, 3, 224, 224),
             "label": torch.tensor([0, 1]), "index": torch.tensor([0, 1])}
    out = model(batch)
    torch.nn.functional.cross_entropy(out.fused, batch["label"]).backward()
    opt.step()                                               # momentum buffers now exist
    ctx = MethodContext(["audio", "visual"], 6, n_train, cfg, torch.device("cpu"))
    method = METHODS.get("gap_adaptive").obj(cfg.params("method"), ctx)
    history = [{"epoch": e, "val_acc": 0.5, "test_acc": 0.5, "gap_hist": [0] * 40} for e in range(100)]
    ck = {"epoch": 10, "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": None,
          "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict(), "method": method.state_dict(),
          "history": history, "train_indices": None, "rng_torch": torch.get_rng_state(), "key": trial.key}
    buf = io.BytesIO()
    t0 = time.perf_counter()
    torch.save(ck, buf)
    return buf.tell(), time.perf_counter() - t0, buf.getvalue()


def load_times(data: bytes, reps: int) -> dict[bool, list[float]]:
    """Seconds to load the checkpoint with torch's weights-only unpickler (raygap's loader) and
    with the full unpickler (raygap before issue 25), alternating True, False, False, True...
    so that a drift in the machine's speed falls on both alike."""
    times: dict[bool, list[float]] = {True: [], False: []}
    order = [True, False, False, True] * ((reps + 1) // 2)
    for weights_only in order[: 2 * reps]:
        t0 = time.perf_counter()
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=weights_only)
        times[weights_only].append(time.perf_counter() - t0)
    return times


def count_real_fit(epochs: int, every: int) -> int:
    cfg = resolve({"data": {"name": "avdigits"}, "model": {"backbone": "small", "width": 4},
                   "train": {"epochs": epochs, "batch_size": 512, "device": "cpu", "threads": 1,
                             "checkpoint_every": every}})
    bundle = load_data(cfg)
    seen = []
    with tempfile.TemporaryDirectory() as d:
        fit(cfg, bundle, device=torch.device("cpu"), checkpoint_dir=d,
            report=lambda rec, ck: seen.append(ck is not None), final_checkpoint=False)   # as in a grid
    return sum(seen)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--trials", type=int, default=306, help="distinct paper-profile trials of Tables II-VII")
    ap.add_argument("--n-train", type=int, default=6698, help="CREMA-D training clips")
    ap.add_argument("--frames", type=int, default=1)
    ap.add_argument("--load-reps", type=int, default=6, help="loads timed with each unpickler")
    args = ap.parse_args()
    default_every = resolve({}).train.checkpoint_every
    size, seconds, data = paper_checkpoint_bytes(args.n_train, args.frames)
    before = sum(checkpoint_due(e, 1, args.epochs, final=True) for e in range(args.epochs))   # old: every epoch, the last too
    after = sum(checkpoint_due(e, default_every, args.epochs) for e in range(args.epochs))
    print(f"paper-shape checkpoint (2x ResNet-18 + SGD momentum + gap_adaptive state): {size / 1e6:.1f} MB, "
          f"serialised in {seconds:.2f} s on this CPU")
    print(f"checkpoints per {args.epochs}-epoch trial: before {before} (every epoch), after {after} "
          f"(checkpoint_every={default_every}, none after the last epoch)")
    print(f"bytes per trial: before {before * size / 1e9:.2f} GB, after {after * size / 1e9:.2f} GB "
          f"(ratio {after / before:.3f}); kept in storage while it runs: one ({size / 1e6:.0f} MB), none once done")
    print(f"all {args.trials} paper trials: before {args.trials * before * size / 1e12:.2f} TB written/uploaded, "
          f"after {args.trials * after * size / 1e12:.2f} TB")
    t = load_times(data, args.load_reps)
    safe, full = statistics.median(t[True]), statistics.median(t[False])
    print(f"load of that checkpoint ({size / 1e6:.1f} MB, the same bytes both ways), median of {args.load_reps}: "
          f"weights_only=True {safe:.3f} s, weights_only=False {full:.3f} s (ratio True/False {safe / full:.2f})")
    n12 = count_real_fit(12, 5)
    print(f"check through the real loop: fit over 12 epochs with checkpoint_every=5 reported {n12} checkpoints "
          f"(epochs 4 and 9; expected {sum(checkpoint_due(e, 5, 12) for e in range(12))})")


if __name__ == "__main__":
    main()
