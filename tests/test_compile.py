"""``train.compile``: few graphs over a real trial's batch shapes, an error instead of a silent
fallback, and the same numbers as without it.

The trials run with Dynamo's ``eager`` backend (``torch.compiler.set_stance(force_backend=...)``):
it captures the same graphs inductor would be given, without a C++ build, and runs them with
the same kernels, so a compiled trial must equal an uncompiled one exactly."""
import pytest
import torch
import torch.nn as nn
from torch._dynamo.utils import counters

from raygap.config import resolve
from raygap.models.compiled import CompileLimitHit, FixedShapes, compile_fixed_shapes
from raygap.trial import run_trial

# 216 training samples in batches of 40 (a remainder of 16), 42 validation and test samples in
# evaluation batches of 32 (remainders of 10)
BASE = {"data": {"name": "avdigits", "visual_corrupt": 0.3, "num_samples": 300},
        "model": {"backbone": "small", "width": 4}, "optim": {"lr": 0.05},
        "train": {"epochs": 2, "batch_size": 40, "eval_batch_size": 32, "device": "cpu", "threads": 2,
                  "checkpoint": False}}
# methods that evaluate index subsets (PMR's prototype samples, D&R's and G-Blending's passes
# over st.train_indices) and purification (Table VII: a smaller training set from epoch 1)
# (D&R re-initializes first at epoch 2: it needs 3 epochs)
METHODS = {"pmr": {}, "dnr": {"every": 1}, "gblending": {"super_epoch": 1},
           "gap_adaptive": {"warmup_epochs": 1, "purify_tau": 0.5, "gap_source": "eval"}}
EPOCHS = {"dnr": 3}
# two encoders and the fusion head, each compiled for the training batch (train mode) and the
# evaluation batch (eval mode)
MAX_GRAPHS = 6
TIMING = ("train_seconds", "epoch_seconds")


def strip(history):
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_compiled_trial_stays_within_a_few_graphs_and_equals_the_uncompiled_one(name):
    cfg = {**BASE, "method": {"name": name, **METHODS[name]},
           "train": {**BASE["train"], "epochs": EPOCHS.get(name, 2)}}
    plain = run_trial(resolve(cfg))
    torch.compiler.reset()                             # count this trial's graphs only
    counters.clear()
    with torch.compiler.set_stance("default", force_backend="eager"):
        fast = run_trial(resolve({**cfg, "train": {**cfg["train"], "compile": True}}))
    graphs, frames = counters["stats"]["unique_graphs"], dict(counters["frames"])
    print(f"{name}: {graphs} graphs, frames {frames}")
    # the shapes this test is about were met: a training remainder, and for purification a
    # smaller training set in the second epoch
    assert fast.info["n_train"] == 216 and fast.history[0]["train_n"] == 216
    if name == "gap_adaptive":
        assert fast.history[1]["train_n"] < 216 and fast.history[1]["train_n"] % 40 != 0
    assert 0 < graphs <= MAX_GRAPHS, f"{graphs} graphs compiled (at most {MAX_GRAPHS} expected)"
    assert frames["total"] == frames["ok"], f"Dynamo gave up on a frame (ran it eagerly): {frames}"
    assert strip(fast.history) == strip(plain.history)
    assert fast.metrics == plain.metrics


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)

    def forward(self, x):
        return self.bn(self.fc(x))


def test_other_batch_sizes_run_eagerly_and_a_limit_hit_raises():
    torch.compiler.reset()
    counters.clear()
    m = Tiny()
    gate = FixedShapes(m, {True: 4, False: 3}, recompile_limit=1)
    m.forward = gate
    x = torch.randn(5, 3)
    with torch.compiler.set_stance("default", force_backend="eager"):
        m(x[:4])                                       # train mode, 4 rows: compiled
        m(x)                                           # 5 rows: eager
        m.eval()
        m(x[:2])                                       # eval mode, 2 rows: eager
        assert counters["stats"]["unique_graphs"] == 1
        assert gate.calls == {"compiled": 1, "eager": 2}
        assert torch.equal(m(x), Tiny.forward(m, x))   # the eager path is the module's own forward
        with pytest.raises(CompileLimitHit, match=r"Tiny.forward needed more than 1 graphs at 3 rows \(eval mode"):
            m(x[:3])                                   # eval mode, 3 rows: a second graph, past the limit of 1


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoders = nn.ModuleDict({"a": Tiny()})
        self.fusion = nn.Identity()


def test_each_compiled_trial_starts_from_an_empty_cache():
    """A reused worker trains trial after trial in one process: graphs of earlier trials (other
    batch sizes) must not count toward a later trial's limit (8 here: one module per class)."""
    with torch.compiler.set_stance("default", force_backend="eager"):
        for rows in range(2, 12):                      # ten trials, ten training batch sizes
            net = Net()
            compile_fixed_shapes(net, rows, rows)
            net.encoders["a"](torch.randn(rows, 3))
