"""Same trials, two data pipelines: accuracy of `files` vs `cache` on a generated CREMA-D layout.

The tensor cache changes how the frames and the audio reach the model (fp16 audio, frames
squashed to the cache side before the crop, batched bilinear resampling) but not what the
model is asked to learn: test accuracy must agree within seed noise. This trains the same
config (concat method) with each pipeline for several seeds and prints mean +- std per
pipeline and Welch's t-test (scipy) between them.

    PYTHONPATH=. python bench/pipeline_accuracy.py [--seeds 5] [--epochs 8] [--method concat]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import raygap.data  # noqa: E402,F401
from raygap.config import resolve  # noqa: E402
from raygap.data import cache as tc  # noqa: E402
from raygap.data.base import DataCommon  # noqa: E402
from raygap.data.synth import make_cremad_layout  # noqa: E402
from raygap.errors import DataError  # noqa: E402
from raygap.registry import DATASETS  # noqa: E402
from raygap.trial import run_trial  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT / "results" / "bench" / "cremad-layout-acc"))
    ap.add_argument("--clips-per-class", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=48)
    ap.add_argument("--method", default="concat")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from scipy import stats

    root = Path(args.root)
    make_cremad_layout(root, args.clips_per_class, frame_size=(160, 120), seconds=2.5, workers=4)
    entry = DATASETS.get("cremad")
    params = entry.params(image_size=args.image_size)
    try:
        entry.obj(params, DataCommon(root=str(root), pipeline="cache"))
    except DataError:
        tc.build_dataset("cremad", params, str(root), workers=2, log=lambda s: None)
    acc: dict[str, list[float]] = {}
    for pipeline in ("files", "cache"):
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            cfg = resolve({"seed": seed, "method": {"name": args.method},
                           "data": {"name": "cremad", "root": str(root), "pipeline": pipeline,
                                    "image_size": args.image_size},
                           "model": {"backbone": "small", "width": 16}, "optim": {"lr": 0.05},
                           "train": {"epochs": args.epochs, "batch_size": 32, "device": "cpu",
                                     "threads": args.threads, "checkpoint": False}})
            m = run_trial(cfg).metrics
            acc.setdefault(pipeline, []).append(m["acc"])
            print(f"{pipeline:5s} seed {seed}: test acc {m['acc']:.3f} (audio {m['acc_audio']:.3f}, visual "
                  f"{m['acc_visual']:.3f}; epoch {m['best_epoch']} chosen on val) {time.perf_counter() - t0:.0f} s",
                  flush=True)
    f, c = np.array(acc["files"]), np.array(acc["cache"])
    t = stats.ttest_ind(f, c, equal_var=False)
    print(f"files {f.mean():.3f} +- {f.std(ddof=1):.3f}   cache {c.mean():.3f} +- {c.std(ddof=1):.3f}   "
          f"difference {c.mean() - f.mean():+.3f}, Welch t-test p = {t.pvalue:.2f} ({args.seeds} seeds each)")


if __name__ == "__main__":
    main()
