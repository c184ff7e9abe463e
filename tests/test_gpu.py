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
    from torch._dynamo.utils import counters   # (imports torch._dynamo: seconds)

    base = {"data": {"name": "avdigits", "visual_corrupt": 0.3}, "model": {"backbone": "resnet18"},
            "train": {"epochs": 2, "batch_size": 64, "device": "cuda", "amp": "bf16"}}
    plain = run_trial(resolve({**base, "train": {**base["train"], "channels_last": "off"}}))
    counters.clear()
    fast = run_trial(resolve({**base, "train": {**base["train"], "channels_last": "on", "compile": True}}))
    # GPU kernels are not bit-reproducible across layouts: the same training within seed noise
    assert abs(fast.metrics["acc"] - plain.metrics["acc"]) < 0.1
    assert math.isfinite(fast.history[-1]["train_loss"])
    # inductor on CUDA: two encoders and the head, each for the train batch and the eval batch
    # (tests/test_compile.py counts the same on the CPU with Dynamo's eager backend)
    assert 0 < counters["stats"]["unique_graphs"] <= 6, dict(counters["stats"])
    assert counters["frames"]["total"] == counters["frames"]["ok"], dict(counters["frames"])


def test_cache_batches_on_the_gpu_never_make_the_host_wait(tmp_path):
    """A generated CREMA-D layout, cached; batches built on the GPU (resident and streamed)
    under torch's sync debug mode set to error: any host synchronisation raises."""
    import torch

    import raygap.data  # noqa: F401
    from raygap.data import cache as tc
    from raygap.data.base import DataCommon
    from raygap.data.synth import make_cremad_layout
    from raygap.registry import DATASETS
    from raygap.system import ffmpeg_exe

    make_cremad_layout(tmp_path, 4, frame_size=(64, 48), allow_without_ffmpeg=ffmpeg_exe() is None)
    entry = DATASETS.get("cremad")
    params = entry.params(image_size=32)
    tc.build_dataset("cremad", params, str(tmp_path), workers=1, log=lambda s: None)
    dev = torch.device("cuda")
    for preload in ("on", "off"):
        split = entry.obj(params, DataCommon(root=str(tmp_path), pipeline="cache", preload=preload)).train
        assert split.place(dev) == ("resident" if preload == "on" else "streamed")
        gen = torch.Generator().manual_seed(0)
        split.batch(torch.arange(4), gen)                      # first call: allocations, constants
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            b = split.batch(torch.arange(8), gen)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert b["visual"].device.type == "cuda" and b["visual"].shape == (8, 1, 3, 32, 32)
        assert math.isfinite(float(b["visual"].float().mean()))


def _cached_cremad(tmp_path):
    import raygap.data  # noqa: F401
    from raygap.data import cache as tc
    from raygap.data.synth import make_cremad_layout
    from raygap.registry import DATASETS
    from raygap.system import ffmpeg_exe

    make_cremad_layout(tmp_path, 4, frame_size=(64, 48), allow_without_ffmpeg=ffmpeg_exe() is None)
    tc.build_dataset("cremad", DATASETS.get("cremad").params(image_size=32), str(tmp_path), workers=1,
                     log=lambda s: None)
    return tmp_path


@pytest.mark.parametrize("preload", ["auto", "on"])
def test_the_preload_budget_on_the_gpu_and_the_memory_given_back(tmp_path, preload):
    """A cache trial measures its step and uploads what fits its share; with a share too small
    for anything, auto streams and says so, on fails in one line; the release after a trial
    hands the caching allocator's memory back (what a reused Tune actor does)."""
    import torch

    from raygap.data.preload import release_device_memory
    from raygap.errors import DataError
    from raygap.devices import pick_device
    from raygap.trial import fit, load_data

    root = _cached_cremad(tmp_path)
    cfg = resolve({"data": {"name": "cremad", "root": str(root), "pipeline": "cache", "image_size": 32,
                            "preload": preload},
                   "model": {"backbone": "small", "width": 4},
                   "train": {"epochs": 1, "batch_size": 8, "device": "cuda", "checkpoint": False}})
    dev = pick_device("cuda")
    bundle = load_data(cfg)
    r = fit(cfg, bundle, device=dev)
    plan = r.info["data"]["preload"]
    assert r.info["batches"] == {"train": "resident", "val": "resident", "test": "resident"}
    assert plan["step_peak"] > 0 and plan["budget"] > sum(s["bytes"] for s in plan["splits"].values())
    assert plan["context"] > 0 and plan["slice"] == plan["total"]            # raygap train: the whole device
    del r
    held = torch.cuda.memory_reserved(dev)
    assert held > 0 and release_device_memory(bundle) is True
    assert torch.cuda.memory_reserved(dev) < held and bundle.train.resident is None

    tiny = load_data(cfg)
    if preload == "on":
        with pytest.raises(DataError) as e:
            fit(cfg, tiny, device=dev, gpu_share=1e-6)
        assert "\n" not in str(e.value) and "data.preload=on" in str(e.value)
    else:
        r = fit(cfg, tiny, device=dev, gpu_share=1e-6)
        assert r.info["batches"] == {"train": "streamed", "val": "streamed", "test": "streamed"}
        assert r.info["data"]["preload"]["budget"] == 0
    release_device_memory(tiny)
