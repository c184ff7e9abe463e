"""Every registered method trains through ``fit()`` (``run_trial``), is interrupted after an
epoch, resumes from its checkpoint and ends with exactly the history of an uninterrupted run;
the resumed epoch (the method acting, its state restored) uses no op that torch has no
deterministic CUDA kernel for.
A new method is picked up from the registry: if its defaults do not act within three epochs,
give it the keys that make it act here."""
import math

import pytest

import raygap.methods  # noqa: F401  (registers the methods)
from raygap.config import resolve
from raygap.registry import METHODS
from raygap.trial import run_trial
from test_determinism import AtenOps

FAST = {"data": {"name": "avdigits", "visual_corrupt": 0.3}, "model": {"backbone": "small", "width": 4},
        "optim": {"lr": 0.05}, "train": {"epochs": 3, "batch_size": 128, "device": "cpu", "threads": 2,
                                         "checkpoint_every": 1}}
# what makes each method act inside 3 epochs (its stage switch, window or first re-initialization
# at epoch 1, so the resumed epoch 2 runs with the method's state restored)
ACTS = {"dnr": {"method": {"every": 1}}, "gap_adaptive": {"method": {"warmup_epochs": 1}},
        "gblending": {"method": {"super_epoch": 1}}, "opm_ogm": {"method": {"warmup_epochs": 1}},
        "cpsl": {"model": {"fusion": "gated"}}}
TIMING = ("train_seconds", "epoch_seconds")


class Crash(Exception):
    pass


def strip(history):
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def test_acts_names_only_registered_methods():
    assert set(ACTS) <= set(METHODS.names())


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_trains_is_interrupted_and_resumes_exactly(tmp_path, name):
    acts = ACTS.get(name, {})
    fusion = METHODS.get(name).meta.get("fusion") or "concat"
    cfg = resolve({**FAST, "method": {"name": name, **acts.get("method", {})},
                   "model": {**FAST["model"], "fusion": fusion, **acts.get("model", {})}})
    full = run_trial(cfg, checkpoint_dir=tmp_path / "a")
    assert [h["epoch"] for h in full.history] == [0, 1, 2]
    assert all(math.isfinite(h["train_loss"]) for h in full.history)
    assert full.metrics["acc"] > 0.1                        # 10 classes: above chance

    def crash(record, ckpt):
        if record["epoch"] == 1:
            raise Crash()

    with pytest.raises(Crash):
        run_trial(cfg, checkpoint_dir=tmp_path / "b", report=crash)
    seen = []
    with AtenOps() as ops:         # every op of the epoch the method acts in: hooks, steps, evaluation
        resumed = run_trial(cfg, checkpoint_dir=tmp_path / "b", report=lambda r, c: seen.append(r["epoch"]))
    assert ops.nondeterministic_on_cuda() == []
    assert seen == [2]                                      # only the missing epoch ran
    assert strip(resumed.history) == strip(full.history)
    assert resumed.metrics == full.metrics
