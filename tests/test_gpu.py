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
