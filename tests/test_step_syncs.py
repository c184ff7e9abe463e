"""No host synchronisation inside a training step, for every registered method.

On a GPU, a step that makes the host wait for the device idles the GPU while Python catches up
(the queue of kernels drains, then refills only as fast as Python issues them). Here, on the
CPU, every operation inside :func:`raygap.trial.train_step` that would wait on CUDA is counted,
in three kinds, through a dispatch mode (aten ops) and wrappers of the Tensor methods:

* ``read``: a device value read on the host. aten's scalar reads (``_local_scalar_dense``,
  what ``item``/``float``/``int`` become; ``is_nonzero``, what ``bool``/``if t:`` become;
  ``equal``) and ``tolist``/``numpy``/``cpu``/``item``: each copies device memory to the host,
  which waits for every queued kernel.
* ``nonzero``: an op whose output size depends on the values, so the host must read a count
  from the device before it can allocate the output: ``nonzero`` (also ``torch.where(c)`` with
  one argument and ``argwhere``, which become it), indexing and index assignment with a boolean
  mask (``aten.index.Tensor`` / ``index_put_`` with a bool index: CUDA turns the mask into
  indices with ``nonzero``), ``masked_select`` (the same), ``unique``/``unique_consecutive``,
  ``repeat_interleave`` with a tensor of repeats and no ``output_size`` (it reads their sum),
  ``bincount`` (CUDA reads the maximum to size the bins). ``nonzero_static``, ``where`` with
  three arguments, ``masked_fill`` and long-index gathers have a known output size: not counted.
* ``host data``: a tensor made from host data inside the step (``torch.tensor``,
  ``torch.as_tensor``/``from_numpy`` of a list or array, a Python number assigned by indexing:
  aten's ``lift_fresh``). On CUDA such data sits in pageable host memory, and putting it on the
  device (``device=``, or the ``.to(device)`` that using it with device tensors needs) is
  ``cudaMemcpy`` from pageable memory followed by a stream synchronize (torch's blocking
  ``copy_``): the host waits for every queued kernel. A CPU run cannot tell such a tensor from
  one that stays on the CPU (``.to`` onto its own device dispatches nothing), so every one is
  counted; a step never needs one (pass the Python number, or make the constant once, on the
  device, outside the step). Not seen here: a CPU tensor kept between steps and moved each step
  (no op on a CPU run); ``test_a_gpu_step_never_synchronises`` (``-m gpu``) checks the real
  thing under CUDA's sync debug mode.

Each detector is checked on its own case (``test_each_detector_sees_its_case``). Epoch-level
work (prototypes, mixture fits, logging at the epoch's end) is outside the step and not counted.

The one exception is Greedy, whose algorithm decides after every step whether the next forward
pass runs a curation window: one read per step, of all four speeds at once."""
from __future__ import annotations

import collections
import traceback
import warnings

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import raygap.methods  # noqa: F401 -- registers every method
from raygap import trial
from raygap.config import resolve
from raygap.methods.base import scaler_found_inf
from raygap.registry import METHODS

READ_OPS = {"aten._local_scalar_dense.default", "aten.is_nonzero.default", "aten.equal.default"}
SIZE_OPS = {"aten.nonzero.default", "aten.masked_select.default", "aten._unique.default", "aten._unique2.default",
            "aten.unique_dim.default", "aten.unique_consecutive.default", "aten.unique_dim_consecutive.default",
            "aten.bincount.default"}
MASK_INDEX_OPS = {"aten.index.Tensor", "aten.index_put_.default", "aten.index_put.default",
                  "aten._index_put_impl_.default"}
HOST_DATA_OPS = {"aten.lift_fresh.default", "aten.lift_fresh_copy.default", "aten.lift.default"}
TENSOR_READS = ("tolist", "numpy", "cpu", "item")
ALLOWED = {"greedy": 1}                                  # reads per step, see the module's docstring
# what each method needs to act within a 3-epoch trial of avdigits
METHOD = {"gap_adaptive": {"warmup_epochs": 1}, "dnr": {"every": 1}, "gblending": {"super_epoch": 1},
          "greedy": {"start_epoch": 0, "window": 2}, "opm_ogm": {"warmup_epochs": 0}}
MODEL = {"cpsl": {"fusion": "gated"}, "mla": {"fusion": "shared"}}


def kind(func, args, kwargs) -> str | None:
    """Which way ``func`` would make the host wait on CUDA (the module's docstring), or None."""
    name = str(func)
    if name in READ_OPS:
        return "read"
    if name in SIZE_OPS:
        return "nonzero"
    if name in MASK_INDEX_OPS and any(t is not None and t.dtype in (torch.bool, torch.uint8) for t in args[1]):
        return "nonzero"
    if name == "aten.repeat_interleave.Tensor" and (kwargs or {}).get("output_size") is None:
        return "nonzero"
    if name in HOST_DATA_OPS:
        return "host data"
    return None


class Syncs(TorchDispatchMode):
    def __init__(self, seen: collections.Counter):
        super().__init__()
        self.seen = seen

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        k = kind(func, args, kwargs)
        if k is not None:
            self.seen[(k, _where())] += 1
        return func(*args, **(kwargs or {}))


def _where() -> str:
    frames = [f for f in traceback.extract_stack()[:-2] if "/raygap/" in f.filename and "test_" not in f.filename]
    f = frames[-1] if frames else None
    return f"{f.filename.rsplit('/raygap/', 1)[-1]}:{f.lineno} {f.line}" if f else "?"


class Counting:
    """Counts, by kind and place, what would wait on CUDA while ``on`` is set."""

    def __init__(self, monkeypatch):
        self.seen: collections.Counter = collections.Counter()
        self.on = False
        for attr in TENSOR_READS:
            orig = getattr(torch.Tensor, attr)

            def wrapped(t, *a, _orig=orig, **k):
                if self.on:
                    self.seen[("read", _where())] += 1
                return _orig(t, *a, **k)

            monkeypatch.setattr(torch.Tensor, attr, wrapped)

    def __call__(self, fn, *a, **k):
        self.on = True
        try:
            with Syncs(self.seen):
                return fn(*a, **k)
        finally:
            self.on = False

    def per_kind(self) -> collections.Counter:
        out: collections.Counter = collections.Counter()
        for (k, _), n in self.seen.items():
            out[k] += n
        return out


X = torch.randn(6)
MASK = X > 0
REPEATS = torch.tensor([1, 2, 0, 1, 1, 2])
SEEN = {   # each must be counted as its kind
    "x.item()": ("read", lambda: X.sum().item()), "float(x)": ("read", lambda: float(X.sum())),
    "if x:": ("read", lambda: bool(X.sum() > 0)), "x.tolist()": ("read", lambda: X.tolist()),
    "x.cpu()": ("read", lambda: X.cpu()),
    "x[mask]": ("nonzero", lambda: X[MASK]), "x[mask] = y": ("nonzero", lambda: X.clone().index_put_((MASK,), X[:1])),
    "masked_select": ("nonzero", lambda: torch.masked_select(X, MASK)),
    "torch.where(c)": ("nonzero", lambda: torch.where(MASK)), "nonzero": ("nonzero", lambda: MASK.nonzero()),
    "argwhere": ("nonzero", lambda: torch.argwhere(MASK)), "unique": ("nonzero", lambda: torch.unique(REPEATS)),
    "unique_consecutive": ("nonzero", lambda: torch.unique_consecutive(REPEATS)),
    "repeat_interleave": ("nonzero", lambda: torch.repeat_interleave(X, REPEATS)),
    "bincount": ("nonzero", lambda: torch.bincount(REPEATS)),
    "torch.tensor(list)": ("host data", lambda: torch.tensor([0.25, 0.75])),
    "torch.tensor(x).to(dev)": ("host data", lambda: torch.tensor([0.25, 0.75]).to(X)),
    "torch.tensor(float)": ("host data", lambda: torch.tensor(0.5, dtype=torch.float64)),
    "as_tensor(array)": ("host data", lambda: torch.as_tensor(np.ones(3), device=X.device)),
    "from_numpy": ("host data", lambda: torch.from_numpy(np.ones(3))),
}
NOT_SEEN = {   # these never wait: counted as nothing
    "where(c, a, b)": lambda: torch.where(MASK, X, 0.0), "masked_fill": lambda: X.masked_fill(MASK, 0.0),
    "x[long]": lambda: X[REPEATS], "index_select": lambda: X.index_select(0, REPEATS),
    "nonzero_static": lambda: torch.nonzero_static(MASK, size=6),
    "repeat_interleave(output_size)": lambda: torch.repeat_interleave(X, REPEATS, output_size=7),
    "torch.full": lambda: torch.full((), 0.5, dtype=torch.float64), "x * 2.0": lambda: X * 2.0,
    "x.to(dtype)": lambda: X.to(torch.float64),
}


def test_each_detector_sees_its_case(monkeypatch):
    count = Counting(monkeypatch)
    for what, (expected, fn) in SEEN.items():
        count.seen.clear()
        count(fn)
        assert count.per_kind()[expected] >= 1, f"{what}: not counted as {expected} ({dict(count.seen)})"
    for what, fn in NOT_SEEN.items():
        count.seen.clear()
        count(fn)
        assert not count.seen, f"{what}: counted ({dict(count.seen)})"


def test_scaler_found_inf_is_what_gradscaler_step_reads():
    """scaler_found_inf reads GradScaler's private ``_found_inf_per_device`` (what its
    ``step`` reads on the host): this fails if torch renames or changes it."""
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = torch.optim.SGD([w], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=4.0)
    for bad, expected_w in ((False, [0.9, 1.8]), (True, [0.9, 1.8])):
        opt.zero_grad()
        scaler.scale((w * torch.tensor([1.0, float("inf") if bad else 2.0])).sum()).backward()
        scaler.unscale_(opt)
        flag = scaler_found_inf(scaler, opt)
        assert flag.shape == () and flag.dtype == torch.float32 and flag.item() == (1.0 if bad else 0.0)
        scaler.step(opt)                                  # skipped when the flag is set: w stays
        scaler.update()
        assert w.detach().tolist() == pytest.approx(expected_w)
    assert scaler.get_scale() == 2.0                      # the skipped step halved the scale
    off = torch.amp.GradScaler("cpu", enabled=False)
    assert scaler_found_inf(off, opt) is None       # no scaler: no step is ever skipped


def _config(name: str, device: str = "cpu"):
    return resolve({"data": {"name": "avdigits", "visual_corrupt": 0.3, "num_samples": 500},
                    "model": {"backbone": "small", "width": 4, **MODEL.get(name, {})},
                    "method": {"name": name, **METHOD.get(name, {})},
                    "train": {"epochs": 3, "batch_size": 64, "device": device, "threads": 1,
                              "checkpoint": False}})


@pytest.mark.parametrize("name", METHODS.names())
def test_a_training_step_never_waits_for_the_device(name, monkeypatch):
    count = Counting(monkeypatch)
    steps = [0]
    step = trial.train_step

    def counted(*a, **k):
        steps[0] += 1
        return count(step, *a, **k)

    monkeypatch.setattr(trial, "train_step", counted)
    trial.run_trial(_config(name))
    assert steps[0] >= 15                                  # 3 epochs of ~6 steps (MLA: one per modality)
    kinds = count.per_kind()
    per_step = kinds["read"] / steps[0]
    assert per_step <= ALLOWED.get(name, 0), f"{per_step:.1f} reads per step: {count.seen.most_common(5)}"
    others = {k: n for k, n in kinds.items() if k != "read"}
    assert not others, f"{others} in {steps[0]} steps: {count.seen.most_common(5)}"
    if name in ALLOWED:                                    # the counter sees the reads it must see
        assert per_step > 0, count.seen


@pytest.mark.gpu
@pytest.mark.parametrize("name", METHODS.names())
def test_a_gpu_step_never_synchronises(name, monkeypatch):
    """The same on CUDA, as CUDA sees it: every step under torch's sync debug mode ("warn":
    each synchronising call warns); Greedy's one read per step is allowed."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    syncs, steps = [], [0]
    step = trial.train_step

    def watched(*a, **k):
        steps[0] += 1
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                return step(*a, **k)
        finally:
            torch.cuda.set_sync_debug_mode("default")
            if steps[0] > 2:                               # after lazy initialisation (first steps)
                syncs.extend(str(x.message).splitlines()[0] for x in w if "synchroniz" in str(x.message))

    monkeypatch.setattr(trial, "train_step", watched)
    trial.run_trial(_config(name, device="cuda"))
    assert steps[0] >= 10
    assert len(syncs) / (steps[0] - 2) <= ALLOWED.get(name, 0), collections.Counter(syncs).most_common(3)
