"""``train.compile``: each encoder and the fusion head compiled for two batch shapes, the rest eager.

A trial meets many batch sizes: the full training batch and the last (remainder) batch of an
epoch, full evaluation batches and the remainders of each split, the index subsets methods
evaluate (PMR's prototypes, D&R's and G-Blending's passes) and a purified training set
(Table VII). Compiled with ``dynamic=False``, every size is one more graph, and the graphs of
one module class (the audio and visual ``ImageEncoder``) share one cache on the class's
``forward``: past ``torch._dynamo.config.recompile_limit`` (8) torch warns once and runs that
``forward`` uncompiled for the rest of the process.

Here each module runs its compiled ``forward`` only for one batch size per mode:
``train.batch_size`` in train mode and ``train.eval_batch_size`` in eval mode; any other
size runs the same ``forward`` eagerly. Nothing is padded or dropped, so a training batch
is never changed (BatchNorm in train mode takes its statistics over exactly the batch).
Each module thus gets at most two graphs per grad mode it runs under, and hitting the
limit raises (``fail_on_recompile_limit_hit``) instead of falling back in silence.

Greedy runs its encoders stage by stage (``staged_encode`` calls the trunk's children, never
the encoder's ``forward``): for it only the fusion head is compiled.
"""
from __future__ import annotations

from collections import Counter

import torch
import torch.nn as nn

# The variants one module's forward may be compiled in at its batch size: train mode with and
# without gradients (AGM's `scale: features` runs its response passes under no_grad), eval mode
# without and with gradients (AGM's blank-input pass: the encoders in eval mode, gradients on).
VARIANTS = 4


def batch_rows(x) -> int | None:
    """Rows of a module's input: a tensor (an encoder's) or a dict of tensors (a fusion head's)."""
    if isinstance(x, dict):
        x = next(iter(x.values()), None)
    return int(x.shape[0]) if torch.is_tensor(x) and x.dim() > 0 else None


class CompileLimitHit(RuntimeError):
    """A compiled module needed more graphs than its limit (torch would silently run it eagerly)."""


class FixedShapes:
    """A module's ``forward``, compiled for ``sizes[module.training]`` rows, eager otherwise.

    Installed as the module's instance attribute ``forward`` (``nn.Module.__call__`` and its
    hooks run as before; ``state_dict`` keys are unchanged). ``calls`` counts the calls of
    each kind (``compiled`` / ``eager``)."""

    def __init__(self, module: nn.Module, sizes: dict[bool, int], recompile_limit: int):
        self.eager = module.forward                      # the class's forward, bound to the module
        self.compiled = torch.compile(self.eager, dynamic=False)
        self.sizes = sizes
        self.limit = recompile_limit
        self.calls: Counter = Counter()

    def __call__(self, *args, **kwargs):
        rows = batch_rows(args[0] if args else None)
        if rows != self.sizes[self.eager.__self__.training]:
            self.calls["eager"] += 1
            return self.eager(*args, **kwargs)
        self.calls["compiled"] += 1
        try:
            with torch._dynamo.config.patch(recompile_limit=self.limit, fail_on_recompile_limit_hit=True):
                return self.compiled(*args, **kwargs)
        except torch._dynamo.exc.FailOnRecompileLimitHit as e:
            module = self.eager.__self__
            raise CompileLimitHit(
                f"train.compile: {type(module).__name__}.forward needed more than {self.limit} graphs at "
                f"{rows} rows ({'train' if module.training else 'eval'} mode, grad "
                f"{'on' if torch.is_grad_enabled() else 'off'}); torch would run it uncompiled from here on. "
                "TORCH_LOGS=recompiles names what changed; set train.compile=false to train without it") from e


def compile_fixed_shapes(model: nn.Module, train_batch: int, eval_batch: int) -> list[FixedShapes]:
    """Compile ``model.encoders`` and ``model.fusion`` in place for ``train_batch`` rows in
    train mode and ``eval_batch`` rows in eval mode (every other size eager). Clears torch's
    compile caches first (``torch.compiler.reset``): graphs of an earlier trial in this
    process (a reused Ray actor) would otherwise count toward this trial's limit. The limit
    is :data:`VARIANTS` graphs per module of a class (the modules of one class share one
    cache), and at least torch's default 8."""
    torch.compiler.reset()
    subs = [*model.encoders.values(), model.fusion]
    per_class = Counter(type(s) for s in subs)
    limit = max(8, VARIANTS * max(per_class.values()))
    gates = []
    for sub in subs:
        gate = FixedShapes(sub, {True: train_batch, False: eval_batch}, limit)
        sub.forward = gate
        gates.append(gate)
    return gates


def describe(train_batch: int, eval_batch: int) -> str:
    """The log line of a compiled trial."""
    return (f"compile: encoders and fusion head compiled for {train_batch} rows (train mode) and {eval_batch} "
            "rows (eval mode); batches of other sizes (remainders, subsets) run eagerly")
