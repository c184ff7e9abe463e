"""A trial's checkpoint (``checkpoint.pt``, the name :data:`raygap.trialfiles.CHECKPOINT`): what it
holds, and how it is read back on any device.

:func:`raygap.trial.fit` writes one after an epoch: the model, optimizer, scheduler, GradScaler
and method states, the history, the training indices (a tensor), the random states -- the CPU
generator's (``rng_torch``), numpy's global one (``rng_numpy``, as a tensor and plain values) and, on a GPU, the default CUDA generator of the trial's device
(``rng_cuda``: OGM-GE's GE noise and any other draw on the device without a generator of its
own) -- the trial key, the shared warm-up key, and ``device``, the kind of device it was written
on (``cpu`` or ``cuda``). Only tensors and plain Python values: no numpy, no other objects.

:func:`load` reads it with ``torch.load(weights_only=True)`` (a file whose pickle would build
any other object, or run code, is refused) with every tensor on the CPU; :func:`restore` then
puts each part where it belongs on the trial's device: the model's tensors into its parameters
(``load_state_dict`` copies), the optimizer's through ``Optimizer.load_state_dict`` (its state
to the parameters' device and dtype, ``step`` left on the CPU as torch wants it for an optimizer
that is neither capturable nor fused), the random states as CPU ByteTensors to the generators,
and the method's state through the method's ``load_state_dict``, which moves what it keeps to
``ctx.device``.

A checkpoint continues exactly only on the kind of device it was written on (other kernels,
other generators): :func:`unusable_on` says why one cannot; ``fit`` then raises
:class:`~raygap.errors.CheckpointDeviceMismatch`, the Tune trainable skips it like any unusable
checkpoint, and ``raygap train`` refuses it with one line.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch


def checkpoint_due(epoch: int, every: int, epochs: int, final: bool = False) -> bool:
    """Whether a checkpoint is written after ``epoch`` (0-based): every ``every`` epochs; after
    the last epoch only when ``final`` (``raygap train`` keeps the trained model; a grid's
    result follows at once and its checkpoint would be deleted right after)."""
    if epoch >= epochs - 1:
        return final
    return (epoch + 1) % every == 0


def save(obj: dict, path: Path) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_states(device: torch.device) -> dict:
    """The states of the generators a trial draws from without a generator of its own: torch's
    CPU generator, the device's CUDA generator, and numpy's global one (``fit`` seeds it; no
    built-in method draws from it, a method that does continues exactly after a resume or a
    warm-up fork), this last as a tensor and plain values (the weights-only loader takes no numpy)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "rng_numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                          "has_gauss": int(has_gauss), "gauss": float(gauss)}}


def _set_numpy_state(state: dict | None) -> None:
    """Back into numpy's global generator; a checkpoint written before it was kept has none
    (numpy then goes on from the trial's seed, as those raygaps did)."""
    if state is not None:
        np.random.set_state((state["kind"], state["keys"].numpy().astype(np.uint32), state["pos"],
                             state["has_gauss"], state["gauss"]))


def indices(train_indices: np.ndarray | torch.Tensor | None):
    """``st.train_indices`` as the checkpoint holds them (a tensor), and back (a numpy array)."""
    if train_indices is None:
        return None
    if torch.is_tensor(train_indices):
        return train_indices.numpy()
    return torch.from_numpy(np.asarray(train_indices))


def load(path: str | Path) -> dict:
    """The checkpoint at ``path``, every tensor on the CPU, through torch's weights-only
    unpickler. ``device`` is inferred for a checkpoint written before it was recorded: ``cuda``
    when any of its tensors was saved from a GPU."""
    saved_on: set[str] = set()

    def on_cpu(storage, location: str):
        saved_on.add(location.split(":")[0])
        return storage                                     # (deserialised on the CPU: kept there)

    ck = torch.load(path, map_location=on_cpu, weights_only=True)
    if not isinstance(ck, dict) or "epoch" not in ck:
        raise ValueError(f"{path} is not a raygap checkpoint")
    ck.setdefault("device", "cuda" if "cuda" in saved_on else "cpu")
    return ck


def unusable_on(ck: dict, kind: str) -> str | None:
    """Why ``ck`` cannot continue exactly in a trial on a device of ``kind`` (cpu, cuda), or None."""
    if ck["device"] != kind:
        return (f"written on {ck['device']}, this trial trains on {kind}: a resume across devices cannot "
                "continue exactly (other kernels, other random generators)")
    if kind == "cuda" and ck.get("rng_cuda") is None:
        return "written without the CUDA generator's state (by an older raygap): it cannot continue exactly"
    return None


def restore(ck: dict, device: torch.device, *, model, optimizer, scheduler, scaler, method) -> None:
    """Load ``ck`` (from :func:`load`) into freshly built objects of a trial on ``device``."""
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(ck["scheduler"])
    scaler.load_state_dict(ck["scaler"])
    method.load_state_dict(ck["method"])
    torch.set_rng_state(ck["rng_torch"])
    _set_numpy_state(ck.get("rng_numpy"))
    if device.type == "cuda":
        torch.cuda.set_rng_state(ck["rng_cuda"], device)
