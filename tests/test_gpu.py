"""GPU checks (skipped without CUDA): a trial on the GPU, with bf16 and fp16 autocast."""
import math

import pytest

from raygap.config import resolve
from raygap.trial import run_trial

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_trial_on_the_gpu_with_autocast(amp):
    cfg = resolve({"data": {"name": "avdigits", "visual_corrupt": 0.3}, "model": {"backbone": "resnet18"},
                   "method": {"name": "gap_adaptive", "warmup_epochs": 1},
                   "train": {"epochs": 2, "batch_size": 64, "device": "cuda", "amp": amp}})
    r = run_trial(cfg)
    assert r.info["device"].startswith("cuda")
    assert all(math.isfinite(r.metrics[k]) for k in ("acc", "acc_audio", "acc_visual"))
    assert r.metrics["acc"] > 0.3


def test_channels_last_and_compile_on_the_gpu():
    base = {"data": {"name": "avdigits", "visual_corrupt": 0.3}, "model": {"backbone": "resnet18"},
            "train": {"epochs": 2, "batch_size": 64, "device": "cuda", "amp": "bf16"}}
    plain = run_trial(resolve({**base, "train": {**base["train"], "channels_last": "off"}}))
    fast = run_trial(resolve({**base, "train": {**base["train"], "channels_last": "on", "compile": True}}))
    # GPU kernels are not bit-reproducible across layouts: the same training within seed noise
    assert abs(fast.metrics["acc"] - plain.metrics["acc"]) < 0.1
    assert math.isfinite(fast.history[-1]["train_loss"])
