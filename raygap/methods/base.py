"""The hook interface every training method implements.

The training loop (``raygap.trial.fit``) calls these hooks and never branches on a
method's name. A method is one file that subclasses :class:`Method`, declares its own
params dataclass (its config keys under ``method:``) and registers itself::

    @METHODS.register("concat", params=None, version=1)
    class Concat(Method): ...

Registration meta a method may declare: ``version`` (bump it when a code change alters
results: stored trials keyed with the old version then run again), ``fusion`` (the fusion
head it needs), ``min_modalities`` / ``max_modalities``, ``reports`` (the figures its epoch
records carry as ``report_<name>``, e.g. ``data_pct``: a grid may show them as metrics).
``check_config`` adds checks of its own; all of them run when a config is loaded (exit 2),
never hours into a grid.

Per batch:   for st.phase in phases(st):   (one phase, None, unless the method says otherwise)
                 out = forward(model, batch, st); loss, logs = loss(out, batch, st);
                 backward; after_backward(model, out, batch, st); optimizer step
                 (skipped by GradScaler when ``st.found_inf`` > 0: fp16, inf/NaN gradients).
             A method that takes several optimizer steps per batch (MLA: one per modality)
             returns several phases; the loss of each phase adds into the epoch's logs.
Per epoch:   on_epoch_start(st) before the training pass, on_epoch_end(st) after it
             (its dict lands in the epoch's history record), then evaluation through
             predict(model, batch).
``st`` is the loop's :class:`TrainState`; a method may replace ``st.optimizer``
(``st.new_optimizer()``) or restrict ``st.train_indices`` (data purification).
``state_dict``/``load_state_dict`` carry whatever the method keeps between epochs, so
a trial resumed from a checkpoint continues exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..lazy import lazy
from ..models.output import ModelOutput
from ..params import F

torch = lazy("torch")
Fn = lazy("torch.nn.functional")


def scalar(x) -> torch.Tensor:
    """A per-batch value as a 0-dim tensor: a tensor as it is (on its device: nothing waits for
    it), a plain number as float64 (hand-computed checks call the formulas with floats)."""
    return x if torch.is_tensor(x) else torch.tensor(float(x), dtype=torch.float64)


@dataclass
class MethodContext:
    modalities: list[str]
    num_classes: int
    n_train: int
    config: Any                  # the TrialConfig
    device: torch.device
    task: str = "classification"  # or "regression" (num_classes 1, float labels)


@dataclass
class TrainState:
    epoch: int
    epochs: int
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    new_optimizer: Callable[[], torch.optim.Optimizer]
    data: Any                                   # the DatasetBundle
    device: torch.device
    predict_split: Callable[..., dict]          # (split, indices=None, features=False) -> arrays
    train_indices: np.ndarray | None = None     # None: the whole training split
    phase: Any = None                           # the current element of method.phases(st)
    found_inf: Any = None                       # this step's GradScaler flag (0-dim device tensor, > 0: the
                                                # step is skipped) or None (no scaler); see after_backward
    history: list = field(default_factory=list)
    log: Callable[[str], None] = print


def scaler_found_inf(scaler, optimizer) -> torch.Tensor | None:
    """After ``scaler.unscale_(optimizer)``: whether the gradients hold an inf or NaN, i.e. whether
    ``scaler.step`` will skip this step -- a 0-dim float32 tensor on the device, > 0 when skipped
    (the flags GradScaler.step itself reads on the host, summed over devices; nothing waits
    here) -- or None when the scaler is off (no step is ever skipped). ``_found_inf_per_device``
    is GradScaler's private accessor of those flags (torch 2.x; tests/test_step_syncs.py pins it).
    Called by ``raygap.trial.train_step`` after ``unscale_``; its value is ``st.found_inf``."""
    if not scaler.is_enabled():
        return None
    flags = list(scaler._found_inf_per_device(optimizer).values())
    if not flags:
        return None                    # no gradient at all: GradScaler.step raises on its own
    total = flags[0]
    for f in flags[1:]:
        total = total + f.to(total.device, non_blocking=True)
    return total


class Method:
    """Default hooks: no gradient changes, evaluation through the model's forward."""

    tasks: tuple[str, ...] = ("classification",)   # the targets the method is defined for

    def __init__(self, params, ctx: MethodContext):
        self.p, self.ctx = params, ctx

    def task_loss(self, output: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy of logits, or for a regression target the L1 / MSE of the (B, 1) output
        (``train.regression_loss``)."""
        if self.ctx.task == "regression":
            y = labels.to(output.dtype).reshape(-1)
            o = output.reshape(len(output), -1)[:, 0]
            if self.ctx.config.train.regression_loss == "mse":
                return Fn.mse_loss(o, y, reduction=reduction)
            return Fn.l1_loss(o, y, reduction=reduction)
        return Fn.cross_entropy(output, labels, reduction=reduction)

    @classmethod
    def check_config(cls, p, c: dict, modalities: list[str]) -> None:
        """Cross-field checks at config load, before any trial starts: raise
        :class:`~raygap.errors.ConfigError` for a combination that would fail at run time or
        silently train something else (a schedule that never starts, a modality the data
        lacks). ``p`` is the method's params, ``c`` the resolved config dict, ``modalities``
        the names the trial will train on."""

    @classmethod
    def shared_warmup(cls, p) -> tuple[int, dict] | None:
        """A warm-up stage other trials may share: ``(W, keys)`` when the first W epochs depend
        on nothing of the method but ``keys`` (its params that act in them), so every trial
        with the same config outside ``method:`` and the same ``keys`` trains them identically
        -- model, optimizer, method state, RNG and history records alike. The runner trains
        such a warm-up once and starts the others from its checkpoint at epoch W - 1
        (docs/method.md, "Shared warm-ups"). None (the default): nothing to share."""
        return None

    def setup(self, model: torch.nn.Module) -> None:
        """Called once after the model is built, before the optimizer exists."""

    def on_epoch_start(self, st: TrainState) -> None:
        pass

    def phases(self, st: TrainState) -> tuple:
        """The optimizer steps taken on each batch, as opaque labels (``st.phase``)."""
        return (None,)

    def forward(self, model, batch: dict, st: TrainState) -> ModelOutput:
        return model(batch)

    def loss(self, out: ModelOutput, batch: dict, st: TrainState) -> tuple[torch.Tensor, dict[str, float]]:
        """The plain objective: the task loss of the fused output (cross-entropy for classes),
        logged as ``loss_f``. Methods that only change gradients, features or the model keep it."""
        loss = self.task_loss(out.fused, batch["label"])
        return loss, {"loss_f": loss.detach()}

    def after_backward(self, model, out: ModelOutput, batch: dict, st: TrainState) -> None:
        """After ``scaler.unscale_``, before the optimizer step. With fp16 the gradients of a step
        may hold inf/NaN: GradScaler then skips the step, and ``st.found_inf`` (> 0, on the
        device) says so; a method must not let such a step's gradient statistics count (combine
        them with ``torch.where`` on the flag, or fold the flag into a read it makes anyway)."""

    def on_epoch_end(self, st: TrainState) -> dict[str, Any]:
        return {}

    def predict(self, model, batch: dict) -> ModelOutput:
        return model(batch)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def check_epoch_window(start_key: str, start: int, epochs: int, end_key: str | None = None,
                       end: int | None = None, what: str = "the method") -> None:
    """``start`` must fall inside the trained epochs (and before ``end``), else the method
    would silently never act: one ConfigError naming the key."""
    from ..errors import ConfigError

    if start >= epochs:
        raise ConfigError(f"{start} >= train.epochs ({epochs}): {what} would never act", key=f"method.{start_key}",
                          hint=f"set method.{start_key} below {epochs} or train more epochs")
    if end is not None and end < start:
        raise ConfigError(f"the window {start}..{end} (both included) is empty: {what} would never act",
                          key=f"method.{end_key}", hint=f"set method.{end_key} to {start} or more")


@dataclass
class WindowParams:
    """The epochs ``modulation_starts <= epoch <= modulation_ends`` (both ends included, as the
    official OGM-GE, OPM&OGM/BML and AGM scripts test them) in which a gradient-modulating
    method acts: declared once, checked once (``check_window``). Epochs count from 0."""
    modulation_starts: int = F(0, range=(0, 100000), help="first epoch of modulation (included)")
    modulation_ends: int = F(50, range=(0, 100000), help="last epoch of modulation (included, as the official "
                                                         "scripts: 0..50 modulates 51 epochs)")

    def in_window(self, epoch: int) -> bool:
        return self.modulation_starts <= epoch <= self.modulation_ends

    def check_window(self, epochs: int, what: str) -> None:
        check_epoch_window("modulation_starts", self.modulation_starts, epochs, "modulation_ends",
                           self.modulation_ends, what)


def unimodal_ce(out: ModelOutput, labels: torch.Tensor, reduction: str = "mean") -> dict[str, torch.Tensor]:
    """CE of each modality's share of the fusion logits (paper Eq. 4, m in modalities)."""
    return {m: Fn.cross_entropy(l, labels, reduction=reduction) for m, l in out.logits.items()}
