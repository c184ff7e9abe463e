"""How much of its GPU a trial may fill with tensor-cache splits (``data.preload``).

One budget per GPU, shared by the trials packed on it: each trial gets the slice of the
device's *total* memory that its GPU share names (``resources.gpu`` under Ray, which keeps
the shares of the trials on one GPU summing to at most 1; the whole device for ``raygap
train``, which runs without Ray). Every trial fills its own slice and no more, so packed
trials that start together cannot take the same free memory twice. Out of the slice come,
before any split is uploaded:

* the process's memory outside torch's caching allocator (the CUDA context and the kernels
  it loaded): ``total - free - reserved`` measured after the probe below, which is exactly
  this process's when it is alone on the device and an over-count when others share it, so
  at most :data:`CONTEXT_BOUND`;
* the training step: the allocator's peak (``max_memory_reserved``) over one real forward
  and backward of the model on a streamed training batch and one evaluation forward on a
  streamed validation batch (:func:`probe`), plus the gradients and the optimizer state
  that do not exist yet at the probe (one copy of the trainable parameters for the
  gradients, one more per optimizer slot: SGD momentum 1, Adam/AdamW 2);
* :data:`HEADROOM_FRACTION` of the slice, for what one probe step cannot see.

The budget is never more than what is free now, less the training memory still to come and
the headroom (memory held outside Ray's bookkeeping stays untouched). The splits take it in
the order train, val, test; ``auto`` streams a split that does not fit what is left, ``on``
fails with one line instead. :func:`preload_budget` is the arithmetic, on the measured
quantities it is given (tests inject them: no GPU needed).
"""
from __future__ import annotations

import gc
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch

from ..errors import DataError

SPLITS = ("train", "val", "test")

# An upper bound on one torch process's device memory outside its caching allocator: the CUDA
# context plus the kernels of torch, cuDNN and cuBLAS it has loaded. CUDA >= 12.2 (every torch
# wheel raygap installs) loads kernels lazily, when first used, so a process holds the ones its
# model runs -- a few hundred MB for the ResNet/GRU encoders here. CUDA offers no per-process
# query for it (NVML's per-process figure needs a PID namespace that containers do not share),
# so the measured over-count ``total - free - reserved`` is taken when smaller (always, for a
# trial alone on its GPU) and this bound otherwise: it errs towards streaming, never towards OOM.
CONTEXT_BOUND = 2 * 2**30

# Kept free in every slice, for what one probe step does not show: a method's extra passes and
# gradient copies (PMR / G-Blending / D&R subsets, MLA's phases, OGM-GE's noise), the MMTM
# blocks Greedy runs outside the model's forward, and the allocator's fragmentation over an
# epoch of varying batch shapes. An estimate 10 % off still never runs out of memory mid-epoch.
HEADROOM_FRACTION = 0.10


@dataclass(frozen=True)
class Budget:
    """The preload budget of one trial on one GPU, with every term that went into it (bytes)."""
    total: int               # the device's memory
    free: int                # free on the device at the decision
    share: float             # the trial's share of the device
    context: int             # memory outside the caching allocator counted for this process
    context_measured: bool   # whether ``context`` is the measured figure (else CONTEXT_BOUND)
    step_peak: int           # allocator peak over the probe (model, batches, activations)
    grads: int               # gradients not alive at the probe
    optimizer_state: int     # optimizer state not created yet at the probe
    growth: int              # training memory still to be reserved after the probe
    headroom: int
    budget: int              # what the splits may take

    @property
    def slice(self) -> int:
        return int(self.share * self.total)

    @property
    def training(self) -> int:
        return self.step_peak + self.grads + self.optimizer_state

    def explain(self) -> str:
        g = lambda b: f"{b / 1e9:.2f} GB"  # noqa: E731
        return (f"{g(self.budget)} of this trial's {g(self.slice)} (GPU share {self.share:g} of {g(self.total)}; "
                f"{g(self.free)} free) after the CUDA context {g(self.context)}"
                f"{'' if self.context_measured else ' (bound)'}, training {g(self.training)} (step peak "
                f"{g(self.step_peak)}, gradients {g(self.grads)}, optimizer state {g(self.optimizer_state)}) "
                f"and headroom {g(self.headroom)}")


def preload_budget(*, total: int, free: int, share: float, reserved: int, step_peak: int,
                   param_bytes: int, optimizer_slots: int) -> Budget:
    """The budget from measured quantities (bytes): ``total`` and ``free`` device memory
    (``torch.cuda.mem_get_info``), this process's ``reserved`` allocator memory and its
    ``step_peak`` (``max_memory_reserved`` over the probe), the trainable parameters' bytes
    and the optimizer's state slots per parameter. See the module docstring."""
    share = min(1.0, float(share))
    outside = max(0, total - free - reserved)               # this process's context, plus any other process's use
    context = min(CONTEXT_BOUND, outside)
    grads, opt = int(param_bytes), int(param_bytes) * int(optimizer_slots)
    training = step_peak + grads + opt
    growth = max(0, training - reserved)
    headroom = int(HEADROOM_FRACTION * share * total)
    within_slice = int(share * total) - context - training - headroom
    within_free = free - growth - headroom
    return Budget(int(total), int(free), share, int(context), outside <= CONTEXT_BOUND, int(step_peak), grads, opt,
                  int(growth), headroom, max(0, min(within_slice, within_free)))


def optimizer_slots(optim_cfg) -> int:
    """Tensors of the parameters' size the optimizer keeps: SGD's momentum buffer (none
    without momentum), Adam's and AdamW's two moments."""
    if optim_cfg.name == "sgd":
        return 1 if optim_cfg.momentum else 0
    return 2


def assign(sizes: dict[str, int], budget: int, preload: str, why: str = "") -> dict[str, bool]:
    """Which splits go resident: each, in order, when it fits what the earlier ones left.
    ``preload: on`` raises :class:`DataError` (one line) for a split that does not fit."""
    left, out = int(budget), {}
    for name, size in sizes.items():
        out[name] = preload != "off" and size <= left
        if out[name]:
            left -= size
        elif preload == "on":
            raise DataError(f"data.preload=on: the {name} split's {size / 1e9:.2f} GB do not fit in the "
                            f"{left / 1e9:.2f} GB left of this trial's GPU budget ({why}); set data.preload=auto "
                            "to stream what does not fit, or give the trial a larger resources.gpu")
    return out


def budget_now(device: torch.device, share: float = 1.0) -> Budget:
    """The budget of a process that trains nothing more on ``device`` than it holds now (a
    bench, a test): its slice less what it uses, within the free memory."""
    free, total = torch.cuda.mem_get_info(device)
    reserved = torch.cuda.memory_reserved(device)
    return preload_budget(total=total, free=free, share=share, reserved=reserved, step_peak=reserved,
                          param_bytes=0, optimizer_slots=0)


def probe(model: torch.nn.Module, train_batch: dict, eval_batch: dict | None,
          autocast: Callable = nullcontext) -> None:
    """One training forward and backward of ``model`` on ``train_batch`` and one evaluation
    forward on ``eval_batch``, for the allocator's peak; leaves the model's buffers (batch-norm
    statistics), its gradients, its mode and the CPU and device random generators as they were."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad for p in params]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    devices = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
    rng = torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]
    was_training = model.training
    try:
        model.train()
        with autocast():
            out = model(train_batch)
            loss = out.fused.float().sum() + sum(v.float().sum() for v in out.logits.values())
        loss.backward()
        del out, loss
        if eval_batch is not None:
            model.eval()
            with torch.no_grad(), autocast():
                model(eval_batch)
    finally:
        for p, g in zip(params, grads):
            p.grad = g
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        torch.set_rng_state(rng[0])
        for d, state in zip(devices, rng[1]):
            torch.cuda.set_rng_state(state, d)
        model.train(was_training)


def place_splits(bundle, model: torch.nn.Module, device: torch.device, *, share: float, batch_size: int,
                 eval_batch_size: int, optim_cfg, autocast: Callable = nullcontext,
                 log: Callable[[str], None] = lambda s: None, memory=None) -> dict[str, str]:
    """Place the bundle's splits on ``device`` (``{split: "resident" | "streamed" | ...}``).
    On CUDA, with cache splits whose ``preload`` is not ``off``: measure the training step
    (:func:`probe`), compute the budget and upload what fits; the decision goes to
    ``bundle.info["preload"]`` and to ``log``. ``memory``: where the figures are read
    (``torch.cuda``; a test passes a stand-in, and then the plan runs on any device)."""
    splits = {n: bundle.split(n) for n in SPLITS if hasattr(bundle.split(n), "place")}
    cached = {n: s for n, s in splits.items() if hasattr(s, "nbytes")}
    mode = next(iter(cached.values())).preload if cached else "off"
    if mode == "off" or (memory is None and device.type != "cuda"):
        return {n: s.place(device) for n, s in splits.items()}
    memory = memory or torch.cuda
    placed = {n: s.place(device, resident=False) if n in cached else s.place(device) for n, s in splits.items()}
    gen = torch.Generator().manual_seed(0)                 # the probe draws no number of the trial's
    on_device = lambda b: {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}  # noqa: E731
    train_batch = on_device(bundle.train.batch(torch.arange(min(batch_size, len(bundle.train))), gen))
    val = bundle.val if hasattr(bundle.val, "batch") and len(bundle.val) else None
    eval_batch = on_device(val.batch(torch.arange(min(eval_batch_size, len(val))))) if val is not None else None
    memory.synchronize(device)
    memory.reset_peak_memory_stats(device)
    probe(model, train_batch, eval_batch, autocast)
    del train_batch, eval_batch
    memory.synchronize(device)
    free, total = memory.mem_get_info(device)
    b = preload_budget(total=total, free=free, share=share, reserved=memory.memory_reserved(device),
                       step_peak=memory.max_memory_reserved(device),
                       param_bytes=sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad),
                       optimizer_slots=optimizer_slots(optim_cfg))
    sizes = {n: s.nbytes() for n, s in cached.items()}
    resident = assign(sizes, b.budget, mode, b.explain())
    for n, s in cached.items():
        placed[n] = s.place(device, resident=resident[n])
    left = b.budget - sum(sz for n, sz in sizes.items() if resident[n])
    bundle.info["preload"] = {"mode": mode, **asdict(b), "slice": b.slice, "left": left,
                              "splits": {n: {"bytes": sizes[n], "placed": placed[n]} for n in cached}}
    log(f"data.preload={mode}: budget {b.explain()}; " + ", ".join(
        f"{n} {sizes[n] / 1e9:.2f} GB {placed[n]}" + ("" if resident[n] else " (does not fit what was left)")
        for n in cached))
    return placed


def release_device_memory(bundle) -> bool:
    """After a trial, in a process that will run another (a reused Tune actor): drop the
    device copies of the bundle's splits, collect the garbage that still holds the trial's
    model and optimizer, and return the CUDA caching allocator's free blocks to the driver, so
    the next trial measures the memory it really has. True when CUDA was used and emptied."""
    for n in SPLITS:
        split = bundle.split(n) if bundle is not None else None
        if hasattr(split, "place"):
            split.place(torch.device("cpu"))
    gc.collect()
    if not torch.cuda.is_initialized():
        return False
    torch.cuda.empty_cache()
    return True
