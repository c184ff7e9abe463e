"""The preload budget (raygap.data.preload), the cache split's gathers and uploads, and the
release of device memory between trials -- on the CPU, with the device's figures injected."""
from __future__ import annotations

import gc
import tracemalloc
import weakref
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from raygap.config import resolve
from raygap.data import cache as tc
from raygap.data import preload as pl
from raygap.data.base import DatasetBundle, ModalitySpec, TensorSplit
from raygap.errors import DataError
from raygap.models import build_model

GiB2 = 2 * 2**30                 # CONTEXT_BOUND as written in the module


# ----------------------------------------------------------------------------- the arithmetic
def test_the_budget_by_hand():
    # 80 GB device, share 0.5 -> slice 40e9, headroom 10 % of it = 4e9. Others use memory:
    # outside the allocator 80 - 70 - 3 = 7e9 > the 2 GiB bound -> context 2_147_483_648.
    # 0.2e9 bytes of parameters, SGD momentum: gradients 0.2e9, state 0.2e9; training
    # 3e9 + 0.4e9 = 3.4e9, of which 0.4e9 still to come.
    # slice: 40e9 - 2_147_483_648 - 3.4e9 - 4e9 = 30_452_516_352; free: 70e9 - 0.4e9 - 4e9 = 65.6e9
    b = pl.preload_budget(total=80_000_000_000, free=70_000_000_000, share=0.5, reserved=3_000_000_000,
                          step_peak=3_000_000_000, param_bytes=200_000_000, optimizer_slots=1)
    assert pl.CONTEXT_BOUND == GiB2 and pl.HEADROOM_FRACTION == 0.10
    assert (b.slice, b.headroom, b.context, b.context_measured) == (40_000_000_000, 4_000_000_000, GiB2, False)
    assert (b.grads, b.optimizer_state, b.training, b.growth) == (200_000_000, 200_000_000, 3_400_000_000, 400_000_000)
    assert b.budget == 30_452_516_352
    # the free memory binds when a process outside Ray's bookkeeping took most of the device:
    # free 10e9: 10e9 - 0.4e9 - 4e9 = 5.6e9 (the slice would allow 30.45e9)
    tight = pl.preload_budget(total=80_000_000_000, free=10_000_000_000, share=0.5, reserved=3_000_000_000,
                              step_peak=3_000_000_000, param_bytes=200_000_000, optimizer_slots=1)
    assert tight.budget == 5_600_000_000
    # Adam keeps two moments: state 0.4e9, training 3.6e9: 40e9 - 2_147_483_648 - 3.6e9 - 4e9
    adam = pl.preload_budget(total=80_000_000_000, free=70_000_000_000, share=0.5, reserved=3_000_000_000,
                             step_peak=3_000_000_000, param_bytes=200_000_000, optimizer_slots=2)
    assert adam.budget == 30_252_516_352
    # nothing left: never negative
    assert pl.preload_budget(total=8_000_000_000, free=1_000_000_000, share=0.1, reserved=500_000_000,
                             step_peak=600_000_000, param_bytes=0, optimizer_slots=0).budget == 0


def test_alone_on_the_device_the_context_is_measured_and_both_limits_agree():
    # raygap train: share 1 of 80e9; 76e9 free, 3e9 reserved -> 1e9 outside the allocator is
    # this process's context (below the bound: measured). headroom 8e9.
    # slice: 80e9 - 1e9 - 3.4e9 - 8e9 = 67.6e9; free: 76e9 - 0.4e9 - 8e9 = 67.6e9
    b = pl.preload_budget(total=80_000_000_000, free=76_000_000_000, share=1.0, reserved=3_000_000_000,
                          step_peak=3_000_000_000, param_bytes=200_000_000, optimizer_slots=1)
    assert (b.context, b.context_measured, b.budget) == (1_000_000_000, True, 67_600_000_000)
    assert "67.60 GB of this trial's 80.00 GB" in b.explain() and "context 1.00 GB," in b.explain()


@pytest.mark.parametrize("n", [2, 4])
def test_packed_trials_that_start_together_share_the_device(n):
    """n trials with share 1/n on one 80 GB device, all deciding at once: each sees the same
    free memory (every context, 0.5e9, and every probe, 3e9, already there), yet each stays
    within its 80/n GB, so together they never exceed the device. The old rule (30 % of the
    free memory each) hands every one of them the same 30 %: four of them overcommit it."""
    total, ctx, step = 80_000_000_000, 500_000_000, 3_000_000_000
    free = total - n * (ctx + step)
    b = pl.preload_budget(total=total, free=free, share=1 / n, reserved=step, step_peak=step,
                          param_bytes=100_000_000, optimizer_slots=1)
    slice_ = total // n
    # context: outside = total - free - step = (n - 1) * 3.5e9 + 0.5e9 > bound -> 2 GiB
    # n=2: 40e9 - 2_147_483_648 - 3.2e9 - 4e9 = 30_652_516_352
    # n=4: 20e9 - 2_147_483_648 - 3.2e9 - 2e9 = 12_652_516_352
    assert b.budget == {2: 30_652_516_352, 4: 12_652_516_352}[n]
    footprint = ctx + b.training + b.budget            # what each trial ends up holding at most
    assert footprint <= slice_ and n * footprint <= total
    if n == 4:                                         # the old rule: 4 x 30 % of 66e9 > the 65.2e9 left
        assert n * 0.3 * free > total - n * (ctx + b.training)


def test_splits_take_the_budget_in_order_and_on_fails_in_one_line():
    sizes = {"train": 30, "val": 5, "test": 2}
    assert pl.assign(sizes, 33, "auto") == {"train": True, "val": False, "test": True}   # 3 left after train
    assert pl.assign(sizes, 100, "off") == {"train": False, "val": False, "test": False}
    assert pl.assign(sizes, 37, "on") == {"train": True, "val": True, "test": True}
    with pytest.raises(DataError) as e:
        pl.assign({"train": 9_520_000_000}, 4_100_000_000, "on", "why")
    msg = str(e.value)
    assert "\n" not in msg and "data.preload=on" in msg and "train split's 9.52 GB" in msg
    assert "4.10 GB left" in msg and "data.preload=auto" in msg
    assert pl.optimizer_slots(SimpleNamespace(name="sgd", momentum=0.9)) == 1
    assert pl.optimizer_slots(SimpleNamespace(name="sgd", momentum=0.0)) == 0
    assert pl.optimizer_slots(SimpleNamespace(name="adamw", momentum=0.9)) == 2


# ----------------------------------------------------------------------------- a synthetic cache
F, TT, S = 16, 12, 16                      # audio (F, T) fp16: 384 B; visual (1, 3, S, S) uint8: 768 B
ROW = F * TT * 2 + 3 * S * S


def _cache(tmp_path, n: int, f: int = F, t: int = TT, seed: int = 0) -> tc.Cache:
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, shape, dtype in (("audio", (n, f, t), np.float16), ("visual", (n, 1, 3, S, S), np.uint8),
                               ("frame_hw", (n, 1, 2), np.int32)):
        a = np.lib.format.open_memmap(tmp_path / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
        if name == "frame_hw":
            a[:] = (48, 64)
        else:                                       # any bit pattern, NaNs included
            a[:] = rng.integers(0, 256, size=a.nbytes, dtype=np.uint8).view(dtype).reshape(shape)
        a.flush()
        arrays[name] = np.load(tmp_path / f"{name}.npy", mmap_mode="r")
    ids = [f"c{i}" for i in range(n)]
    return tc.Cache(tmp_path, {}, arrays, ids)


def _split(cache: tc.Cache, rows, train: bool = True, preload: str = "auto") -> tc.CacheSplit:
    clips = [SimpleNamespace(id=cache.ids[r], label=int(r) % 3) for r in rows]
    return tc.CacheSplit(cache, np.asarray(rows), clips, S, train, preload=preload)


def test_gather_gives_the_rows_bit_for_bit(tmp_path):
    cache = _cache(tmp_path, 50)
    rows = np.random.default_rng(1).permutation(50)[:40]           # the split's rows, not in file order
    sp = _split(cache, rows)
    for pos in (np.arange(40), np.random.default_rng(2).permutation(40)[:17], np.array([5])):
        got = sp._gather(pos)
        for name in ("audio", "visual"):
            want = np.asarray(cache.arrays[name])[rows[pos]]        # numpy's own gather
            assert got[name].shape == want.shape and got[name].numpy().dtype == want.dtype
            assert got[name].numpy().tobytes() == want.tobytes()


def test_gathering_a_whole_split_holds_one_host_copy(tmp_path, monkeypatch):
    """The old gather (``arr[rows[order]][back]``) held two copies of the split at its peak;
    filling one array chunk by chunk holds one, plus a chunk. tracemalloc sees numpy's buffers
    (not the mapped file's pages)."""
    monkeypatch.setattr(tc, "GATHER_CHUNK_BYTES", 1 << 20, raising=False)
    cache = _cache(tmp_path, 300, f=257, t=188)                       # 99 KB a row
    rows = np.random.default_rng(0).permutation(300)[:256]
    sp = _split(cache, rows)
    size = sp.nbytes()
    assert size == 256 * (257 * 188 * 2 + 3 * S * S)                  # 25.5 MB
    tracemalloc.start()
    try:
        out = sp._gather(np.arange(len(rows)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out["audio"].shape == (256, 257, 188)
    assert size <= peak < 1.15 * size, (peak, size)                   # old code: 1.97 x


def test_the_upload_stages_one_chunk_and_resident_batches_equal_streamed_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(tc, "GATHER_CHUNK_BYTES", 16 * ROW, raising=False)
    cache = _cache(tmp_path, 120)
    rows = np.random.default_rng(3).permutation(120)[:100]
    sp = _split(cache, rows)
    idx = torch.tensor([7, 3, 99, 0, 42, 42, 15])
    streamed = sp.batch(idx, torch.Generator().manual_seed(5))
    tracemalloc.start()
    try:
        assert sp.place(torch.device("cpu"), resident=True) == "resident"   # a copy on the CPU, made as on a GPU
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * 16 * ROW < sp.nbytes() / 2, peak                 # never the whole split in numpy arrays
    for name in ("audio", "visual"):
        want = np.asarray(cache.arrays[name])[rows]
        assert sp.resident[name].numpy().tobytes() == want.tobytes()
    assert sp.resident["label"].tolist() == [int(r) % 3 for r in rows]
    resident = sp.batch(idx, torch.Generator().manual_seed(5))
    for k in ("audio", "visual", "label", "index"):            # bytes: the random fp16 bits hold NaNs
        assert resident[k].dtype == streamed[k].dtype and resident[k].shape == streamed[k].shape, k
        assert resident[k].numpy().tobytes() == streamed[k].numpy().tobytes(), k
    assert sp.place(torch.device("cpu")) == "streamed" and sp.resident is None


# ----------------------------------------------------------------------------- the probe and the plan
def _model(seed: int = 0):
    torch.manual_seed(seed)
    specs = [ModalitySpec("audio", "spectrogram", (1, F, TT)), ModalitySpec("visual", "frames", (1, 3, S, S))]
    cfg = resolve({"data": {"name": "avdigits"}, "model": {"backbone": "small", "width": 4}})
    return build_model(specs, 3, cfg.model)


def _batch(n: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"audio": torch.randn(n, 1, F, TT, generator=g), "visual": torch.randn(n, 1, 3, S, S, generator=g),
            "label": torch.zeros(n, dtype=torch.long)}


def test_the_probe_trains_one_step_and_leaves_everything_as_it_was():
    model = _model()
    assert any(True for _ in model.buffers())                      # batch-norm statistics to keep
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    backward = []
    first = next(p for p in model.parameters() if p.requires_grad)
    first.register_hook(lambda g: backward.append(g.abs().sum().item()))
    pl.probe(model, _batch(8), _batch(16, 1))
    assert len(backward) == 1 and backward[0] > 0                  # it did run a backward
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)   # weights and running stats
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng) and model.training
    model.eval()
    pl.probe(model, _batch(8), None)
    assert not model.training


class FakeMemory:
    """What place_splits reads from torch.cuda, with the figures a test chooses."""

    def __init__(self, free, total, reserved, peak):
        self.figures, self.calls = (free, total, reserved, peak), []

    def synchronize(self, d):
        self.calls.append("synchronize")

    def reset_peak_memory_stats(self, d):
        self.calls.append("reset")

    def mem_get_info(self, d):
        return self.figures[:2]

    def memory_reserved(self, d):
        return self.figures[2]

    def max_memory_reserved(self, d):
        return self.figures[3]


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_the_plan_measures_then_uploads_what_fits_and_says_so(tmp_path, mode):
    model = _model()
    P = sum(p.numel() * 4 for p in model.parameters())
    # share 0.5 of 400_000 -> slice 200_000, headroom 20_000; outside the allocator
    # 400_000 - 390_000 - 2_000 = 8_000 (measured context); training 3_000 + 2P (SGD momentum)
    # slice: 200_000 - 8_000 - (3_000 + 2P) - 20_000 = 169_000 - 2P; free: 390_000 - (1_000 + 2P) - 20_000
    budget = 169_000 - 2 * P
    assert budget > 20 * ROW, P
    n_train = budget // ROW - 2                     # fits, and leaves 2 to 3 rows' worth
    cache = _cache(tmp_path, n_train + 12)
    order = np.random.default_rng(0).permutation(n_train + 12)
    bundle = DatasetBundle("synthetic", [ModalitySpec("audio", "spectrogram", (1, F, TT)),
                                         ModalitySpec("visual", "frames", (1, 3, S, S))], 3, ["a", "b", "c"],
                           _split(cache, order[:n_train], True, mode), _split(cache, order[n_train:n_train + 10],
                                                                               False, mode),
                           _split(cache, order[n_train + 10:], False, mode))
    mem, lines = FakeMemory(390_000, 400_000, 2_000, 3_000), []
    kw = dict(share=0.5, batch_size=8, eval_batch_size=16, optim_cfg=SimpleNamespace(name="sgd", momentum=0.9),
              log=lines.append, memory=mem)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if mode == "on":                                # val (10 rows) does not fit what train left
        with pytest.raises(DataError, match=r"data.preload=on: the val split's"):
            pl.place_splits(bundle, model, torch.device("cpu"), **kw)
        return
    placed = pl.place_splits(bundle, model, torch.device("cpu"), **kw)
    assert placed == {"train": "resident", "val": "streamed", "test": "resident"}
    assert mem.calls == ["synchronize", "reset", "synchronize"]
    info = bundle.info["preload"]
    assert (info["budget"], info["context"], info["context_measured"], info["slice"]) == (budget, 8_000, True, 200_000)
    assert info["left"] == budget - (n_train + 2) * ROW
    assert info["splits"]["val"] == {"bytes": 10 * ROW, "placed": "streamed"}
    assert len(lines) == 1 and "val 0.00 GB streamed (does not fit what was left)" in lines[0]
    assert lines[0].startswith("data.preload=auto: budget ")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert bundle.train.resident is not None and bundle.val.resident is None


# ----------------------------------------------------------------------------- between trials
def test_release_drops_the_device_copies_then_collects_then_empties_the_cache(tmp_path, monkeypatch):
    cache = _cache(tmp_path, 20)
    sp = _split(cache, np.arange(20))
    sp.place(torch.device("cpu"), resident=True)
    held = weakref.ref(sp.resident["audio"])
    ts = TensorSplit({"x": torch.zeros(4, 2)}, torch.zeros(4, dtype=torch.long), list("abcd"))
    ts._on_device = {"x": torch.zeros(4, 2)}
    bundle = DatasetBundle("b", [], 2, ["a", "b"], sp, ts, _split(cache, np.arange(3)))

    class Model:                                    # a model kept alive only by a reference cycle
        pass
    m = Model()
    m.cycle, m.weight = m, torch.zeros(8)
    cycled = weakref.ref(m.weight)
    del m
    gc.disable()                                    # (so that only the release collects it)
    try:
        assert cycled() is not None
        assert pl.release_device_memory(bundle) is False            # CUDA never used here: nothing to empty
        assert held() is None and cycled() is None and sp.resident is None and ts._on_device is None

        seen = []
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: seen.append(sp.resident is None and cycled() is None))
        m = Model()
        m.cycle, m.weight = m, torch.zeros(8)
        cycled = weakref.ref(m.weight)
        del m
        sp.place(torch.device("cpu"), resident=True)
        assert pl.release_device_memory(bundle) is True
        assert seen == [True]                       # emptied once, after the references were gone
    finally:
        gc.enable()
