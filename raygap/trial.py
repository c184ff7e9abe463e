"""One trial: a plain function of a config. No Ray here.

``run_trial(cfg)`` builds the data, the model and the method, then runs :func:`fit`,
the whole training loop in one function: per epoch a training pass through the
method's hooks, an evaluation of the fused and per-modality predictions on validation
and test, a checkpoint, and a report. The epoch a result reports is the best on the
validation split (``train.select``), never chosen on test; the last epoch is
reported too.

Checkpoints (``<checkpoint_dir>/checkpoint.pt``, :mod:`raygap.checkpoint`) carry the model,
optimizer, scheduler, method state, random states (CPU and, on a GPU, CUDA), history and the
kind of device that wrote them. With ``train.deterministic`` a trial is bit-for-bit repeatable
for a seed, and a resumed one (or one started from a shared warm-up) ends with the numbers of
one never interrupted: on the CPU always; on a GPU on the same GPU model and software stack, as
far as torch's deterministic kernels reach (docs/method.md, "What repeats on a GPU"). A resume
or warm-up fork across CPU and GPU is refused (:class:`~raygap.errors.CheckpointDeviceMismatch`).
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from . import data as _data  # noqa: F401  (registers datasets)
from . import checkpoint
from . import methods as _methods  # noqa: F401  (registers methods)
from .checkpoint import checkpoint_due
from .config import TrialConfig, check_task
from .data.base import DatasetBundle
from .data.preload import place_splits
from .devices import device_name, pick_device
from .metrics import classification_metrics, regression_metrics
from .methods.base import MethodContext, TrainState, scaler_found_inf
from .models import build_model, compiled
from .registry import DATASETS, METHODS
from .selection import final_metrics, select_metric
from .trialfiles import CHECKPOINT  # (raygap.trial.CHECKPOINT too)


class TrialDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrialResult:
    key: str
    metrics: dict[str, float]            # at the epoch chosen on validation (+ last_* and best_epoch)
    history: list[dict[str, Any]]         # one record per epoch
    info: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- building blocks
def load_data(cfg: TrialConfig) -> DatasetBundle:
    entry = DATASETS.get(cfg.data.name)
    bundle = entry.obj(cfg.params("data"), cfg.common_data())
    wanted = cfg.data.modalities
    if wanted:
        have = bundle.modality_names
        missing = [m for m in wanted if m not in have]
        if missing:
            from .errors import ConfigError
            raise ConfigError(f"dataset {cfg.data.name} has no modality {missing[0]!r} (has: {', '.join(have)})",
                              key="data.modalities")
        bundle.modalities = [s for m in wanted for s in bundle.modalities if s.name == m]
    return bundle


def build_optimizer(optim_cfg, params) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if optim_cfg.name == "sgd":
        return torch.optim.SGD(params, lr=optim_cfg.lr, momentum=optim_cfg.momentum,
                               weight_decay=optim_cfg.weight_decay)
    if optim_cfg.name == "adam":
        return torch.optim.Adam(params, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay)
    return torch.optim.AdamW(params, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay)


def build_scheduler(optim_cfg, optimizer, epochs: int):
    if optim_cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, optim_cfg.step_size, optim_cfg.gamma)
    if optim_cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    return None


def iterate(split, batch_size: int, *, shuffle: bool, indices: np.ndarray | None = None,
            generator: torch.Generator | None = None, num_workers: int = 0, drop_singleton: bool = False):
    """Batches of a split. A split that builds whole batches itself (``split.batch(idx,
    generator)``: a TensorSplit, or the tensor cache's split, on its device) gets index
    batches drawn with ``generator``; any other (per-item) split goes through a DataLoader."""
    if hasattr(split, "batch"):
        idx = torch.arange(len(split)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
        if shuffle:
            idx = idx[torch.randperm(len(idx), generator=generator)]
        for s in range(0, len(idx), batch_size):
            b = idx[s:s + batch_size]
            if drop_singleton and len(b) == 1 and len(idx) > 1:
                break
            yield split.batch(b, generator=generator)
        return
    ds = split if indices is None else Subset(split, indices.tolist())
    loader = DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=generator,
                        num_workers=num_workers, drop_last=False, persistent_workers=False)
    for batch in loader:
        if drop_singleton and len(batch["label"]) == 1 and len(ds) > 1:
            break
        yield batch


def to_device(batch: dict, device: torch.device) -> dict:
    if device.type == "cpu":
        return batch
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def autocast(device: torch.device, amp: str):
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def predict_split(model, method, split, *, batch_size: int, device, amp: str = "none",
                  indices: np.ndarray | None = None, num_workers: int = 0,
                  features: bool = False) -> dict[str, np.ndarray]:
    """Logits of the fused head and of each modality, plus labels, over a split (eval mode).

    With ``features=True`` each modality's encoder features come back too, as ``feat_<m>``.
    """
    was_training = model.training
    model.eval()
    out: dict[str, list] = {}
    for batch in iterate(split, batch_size, shuffle=False, indices=indices, num_workers=num_workers):
        batch = to_device(batch, device)
        with autocast(device, amp):
            o = method.predict(model, batch)
        out.setdefault("fused", []).append(o.fused.float().cpu())
        for m, l in o.logits.items():
            out.setdefault(m, []).append(l.float().cpu())
        if features:
            for m, f in o.features.items():
                out.setdefault(f"feat_{m}", []).append(f.float().cpu())
        out.setdefault("label", []).append(torch.as_tensor(batch["label"]).cpu())
        out.setdefault("index", []).append(torch.as_tensor(batch["index"]).cpu())
    model.train(was_training)
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def evaluate(model, method, split, task: str = "classification", **kw) -> dict[str, float]:
    pred = predict_split(model, method, split, **kw)
    y = pred.pop("label")
    pred.pop("index")
    if task == "regression":
        return regression_metrics(pred, y)
    return classification_metrics(pred, y, int(max(y.max(initial=0) + 1, pred["fused"].shape[1])))


def train_step(model, method, batch, st, optimizer, scaler, amp, device, sums: dict) -> None:
    """One optimizer step: the method's forward and loss, backward, its gradient hook, the
    step. Nothing here waits for the device: the logs are summed on it (``sums``). The hook
    sees ``st.found_inf`` (``methods.base.scaler_found_inf``): statistics of a step that
    GradScaler skips (fp16: inf/NaN gradients) must not count."""
    with autocast(device, amp):
        out = method.forward(model, batch, st)
        loss, logs = method.loss(out, batch, st)
    logs = {"loss": loss, **logs}
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    st.found_inf = scaler_found_inf(scaler, optimizer)
    method.after_backward(model, out, batch, st)
    scaler.step(optimizer)
    scaler.update()
    n = len(batch["label"])
    for k, v in logs.items():
        sums[k] = sums.get(k, 0.0) + v.detach().float() * n


# ----------------------------------------------------------------------------- the loop
def fit(cfg: TrialConfig, bundle: DatasetBundle, *, device: torch.device,
        checkpoint_dir: str | Path | None = None,
        report: Callable[[dict, Path | None], None] | None = None,
        log: Callable[[str], None] = lambda s: None, final_checkpoint: bool = True,
        keep_warmup: bool = False, gpu_share: float = 1.0) -> TrialResult:
    """Train ``cfg`` on ``bundle``; resume from ``<checkpoint_dir>/checkpoint.pt`` when it is
    this trial's checkpoint, or the end of a shared warm-up this trial may start from
    (:meth:`TrialConfig.warmup`: the same warm-up key, written after epoch W - 1).
    ``keep_warmup``: write a checkpoint after epoch W - 1 whatever ``train.checkpoint_every``
    says, for other trials to start from. ``gpu_share``: the part of the device this trial
    holds (Ray's ``resources.gpu``; 1 without Ray), its slice for the preload budget."""
    T = cfg.train
    shared = cfg.warmup()                                      # (warm-up key, W) or None
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % (2**32))

    select = select_metric(T.select, bundle.task)
    model = build_model(bundle.modalities, bundle.num_classes, cfg.model).to(device)
    ctx = MethodContext(bundle.modality_names, bundle.num_classes, len(bundle.train), cfg, device,
                        task=bundle.task)
    method_cls = METHODS.get(cfg.method.name).obj
    check_task(cfg.method.name, cfg.data.name, bundle.task)
    method = method_cls(cfg.params("method"), ctx)
    method.setup(model)
    model.to(device)
    if T.channels_last == "on" or (T.channels_last == "auto" and device.type == "cuda"):
        model.to(memory_format=torch.channels_last)            # conv weights NHWC: the convs follow
    if T.compile:                                              # two batch shapes compiled, the rest eager
        compiled.compile_fixed_shapes(model, T.batch_size, T.eval_batch_size)
        log(compiled.describe(T.batch_size, T.eval_batch_size))
    placed = place_splits(bundle, model, device, share=gpu_share, batch_size=T.batch_size,   # the preload budget
                          eval_batch_size=T.eval_batch_size, optim_cfg=cfg.optim,
                          autocast=lambda: autocast(device, T.amp), log=log)
    new_optimizer = lambda: build_optimizer(cfg.optim, model.parameters())  # noqa: E731
    optimizer = new_optimizer()
    scheduler = build_scheduler(cfg.optim, optimizer, T.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=(T.amp == "fp16"))
    pred_kw = dict(batch_size=T.eval_batch_size, device=device, amp=T.amp, num_workers=T.num_workers)
    st = TrainState(0, T.epochs, model, optimizer, new_optimizer, bundle, device,
                    predict_split=lambda split, indices=None, features=False: predict_split(
                        model, method, bundle.split(split) if isinstance(split, str) else split,
                        indices=indices, features=features, **pred_kw),
                    log=log)

    start = 0
    warmup_from = None                                         # the trial whose shared warm-up this one continues
    shown_device = device_name(device)
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir else None
    if ckpt_path and ckpt_path.exists():                       # resume
        ck = checkpoint.load(ckpt_path)                       # every tensor on the CPU, then where it belongs
        forked = (ck.get("key") != cfg.key() and shared is not None and ck.get("warmup_key") == shared[0]
                  and ck["epoch"] == shared[1] - 1)
        if ck.get("key") != cfg.key() and not forked:
            from .errors import CheckpointMismatch
            raise CheckpointMismatch(f"{ckpt_path} is trial {ck.get('key') or '(unknown)'}'s checkpoint, "
                                     f"not this config's ({cfg.key()})")
        if (why := checkpoint.unusable_on(ck, device.type)) is not None:
            from .errors import CheckpointDeviceMismatch
            raise CheckpointDeviceMismatch(f"{ckpt_path}: {why}")
        st.optimizer = optimizer = new_optimizer()
        if scheduler is not None:
            scheduler = build_scheduler(cfg.optim, optimizer, T.epochs)
        checkpoint.restore(ck, device, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                           method=method)
        st.history, st.train_indices = ck["history"], checkpoint.indices(ck["train_indices"])
        start = ck["epoch"] + 1
        warmup_from = ck["key"] if forked else ck.get("warmup_from")
        log(f"started from the shared warm-up of trial {ck['key']} ({ckpt_path}) at epoch {start}" if forked
            else f"resumed from {ckpt_path} at epoch {start}")

    shuffle_gen = torch.Generator()
    for epoch in range(start, T.epochs):
        st.epoch = epoch
        t0 = time.perf_counter()
        method.on_epoch_start(st)
        if st.optimizer is not optimizer:                      # the method rebuilt it (stage switch)
            optimizer = st.optimizer
            if scheduler is not None:
                scheduler = build_scheduler(cfg.optim, optimizer, T.epochs)
        model.train()
        shuffle_gen.manual_seed(cfg.seed * 100003 + epoch)     # order depends on (seed, epoch) only
        sums: dict[str, torch.Tensor] = {}
        n_seen = 0
        for batch in iterate(bundle.train, T.batch_size, shuffle=True, indices=st.train_indices,
                             generator=shuffle_gen, num_workers=T.num_workers, drop_singleton=True):
            batch = to_device(batch, device)
            n = len(batch["label"])
            n_seen += n
            for phase in method.phases(st):                    # one optimizer step per phase
                st.phase = phase
                train_step(model, method, batch, st, optimizer, scaler, T.amp, device, sums)
        if scheduler is not None:
            scheduler.step()
        record: dict[str, Any] = {"epoch": epoch}
        record.update({f"train_{k}": float(v) / max(n_seen, 1) for k, v in sums.items()})
        if not all(math.isfinite(v) for k, v in record.items() if k.startswith("train_")):
            raise TrialDiverged(f"training loss is not finite at epoch {epoch}: "
                                + ", ".join(f"{k}={v}" for k, v in record.items() if k != "epoch"))
        record["train_n"] = n_seen
        record.update(method.on_epoch_end(st))
        record["train_seconds"] = time.perf_counter() - t0
        record.update({f"val_{k}": v for k, v in evaluate(model, method, bundle.val, bundle.task, **pred_kw).items()})
        record.update({f"test_{k}": v for k, v in evaluate(model, method, bundle.test, bundle.task, **pred_kw).items()})
        record["lr"] = optimizer.param_groups[0]["lr"]
        record["device"] = shown_device
        record["epoch_seconds"] = time.perf_counter() - t0
        st.history.append(record)

        at_warmup_end = shared is not None and epoch == shared[1] - 1
        ckpt_now = bool(ckpt_path and ((T.checkpoint and checkpoint_due(epoch, T.checkpoint_every, T.epochs,
                                                                         final_checkpoint))
                                       or (keep_warmup and at_warmup_end)))
        if ckpt_now:
            ckpt_path.parent.mkdir(parents=True, exist_ok=True)
            checkpoint.save({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict() if scheduler is not None else None,
                             "scaler": scaler.state_dict(), "method": method.state_dict(),
                             "history": st.history, "train_indices": checkpoint.indices(st.train_indices),
                             **checkpoint.rng_states(device), "device": device.type, "key": cfg.key(),
                             "warmup_key": shared[0] if at_warmup_end else None, "warmup_from": warmup_from},
                            ckpt_path)
        if report is not None:
            report(record, ckpt_path.parent if ckpt_now else None)
        log(format_record(record, bundle.modality_names, select))

    return TrialResult(cfg.key(), final_metrics(st.history, select), st.history,
                       info={"device": shown_device, "data": bundle.info, "batches": placed,
                             "method_source": METHODS.source(cfg.method.name),
                             "n_train": len(bundle.train), "n_val": len(bundle.val), "n_test": len(bundle.test),
                             **({"warmup_from": warmup_from, "warmup_epochs_shared": shared[1]} if warmup_from else {})})


def format_record(r: dict, modalities: list[str], select: str = "acc") -> str:
    nan = float("nan")
    second = "macro_f1" if "val_macro_f1" in r else "corr"
    uni = " ".join(f"{m}={r.get(f'val_{select}_{m}', nan):.3f}" for m in modalities)
    extra = f" [{r['stage']}]" if "stage" in r else ""
    return (f"epoch {r['epoch']:>3}{extra}  loss {r.get('train_loss', nan):.4f}  "
            f"val {select} {r.get(f'val_{select}', nan):.3f} {second} {r.get(f'val_{second}', nan):.3f} ({uni})  "
            f"test {select} {r.get(f'test_{select}', nan):.3f}  {r['epoch_seconds']:.1f}s"
            + (f" on {r['device']}" if "device" in r else ""))


def configure_threads(cfg: TrialConfig, allotted_cpus: float | None = None) -> int:
    from .system import usable_cpus

    n = cfg.train.threads or int(allotted_cpus or 0) or usable_cpus()
    n = max(1, n)
    torch.set_num_threads(n)
    return n


def prepare_process(cfg: TrialConfig, allotted_cpus: float | None = None) -> int:
    """What a process does before it trains ``cfg`` (``run_trial`` here, the Tune trainable in
    a Ray worker): torch's threads from the allotted CPUs; ``train.deterministic``: deterministic
    kernels (an op without one warns), and ``CUBLAS_WORKSPACE_CONFIG`` set before CUDA starts (the
    runner gives Ray's workers it too), with a warning where that comes too late. Returns the
    number of threads."""
    from .system import deterministic_cublas

    n = configure_threads(cfg, allotted_cpus)
    if cfg.train.deterministic:
        deterministic_cublas(cuda_started=torch.cuda.is_initialized())
    torch.use_deterministic_algorithms(cfg.train.deterministic, warn_only=True)   # (a reused process too)
    return n


def run_trial(cfg: TrialConfig, *, checkpoint_dir: str | Path | None = None,
              report: Callable[[dict, Path | None], None] | None = None,
              log: Callable[[str], None] = lambda s: None,
              allotted_cpus: float | None = None, final_checkpoint: bool = True,
              keep_warmup: bool = False) -> TrialResult:
    """Build everything from the config and train. Deterministic for a seed on CPU."""
    prepare_process(cfg, allotted_cpus)
    device = pick_device(cfg.train.device)
    bundle = load_data(cfg)
    return fit(cfg, bundle, device=device, checkpoint_dir=checkpoint_dir, report=report, log=log,
               final_checkpoint=final_checkpoint, keep_warmup=keep_warmup)
