"""Which device a trial trains on, and why CUDA is unusable when it is (no Ray here): the
NVIDIA driver, torch's CUDA build and the visible devices, read as a trial's process sees them.
A trial that needs a GPU never falls back to the CPU (:func:`pick_device`)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import DeviceUnavailable


def nvidia_driver() -> str | None:
    """The loaded NVIDIA kernel driver's version line (Linux), or None."""
    try:
        first = Path("/proc/driver/nvidia/version").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    words = first.split()
    return next((w for w in words if w[:1].isdigit() and "." in w), first[:80])


def cuda_problem() -> str | None:
    """Why CUDA is unusable in this process -- what was found: torch's CUDA build, the NVIDIA
    driver, the visible devices -- or None when it works."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    try:
        if torch.cuda.is_available() and torch.cuda.device_count() > 0:
            return None
        error = None
    except Exception as e:  # noqa: BLE001 -- a broken driver raises here
        error = str(e).splitlines()[0][:200]
    driver = nvidia_driver()
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    found = [f"torch {torch.__version__} built for CUDA {torch.version.cuda}",
             f"NVIDIA driver {driver}" if driver else "no NVIDIA driver loaded",
             f"CUDA_VISIBLE_DEVICES={vis!r}" if vis is not None else "CUDA_VISIBLE_DEVICES unset"]
    return (f"CUDA fails to start ({error})" if error else "no CUDA device is visible") + "; found " + ", ".join(found)


def device_name(device: torch.device) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H100 80GB HBM3)``: what progress lines and the store show."""
    if device.type != "cuda":
        return device.type
    try:
        return f"{device} ({torch.cuda.get_device_name(device)})"
    except Exception:  # noqa: BLE001
        return str(device)


def device_kind(name: str) -> str:
    """``cpu`` or ``cuda``: the kind of device :func:`pick_device` gives for ``train.device`` ``name``
    (``cpu`` where CUDA is unusable: pick_device then refuses a trial that needs a GPU)."""
    return "cpu" if name == "cpu" or cuda_problem() is not None else "cuda"


def pick_device(name: str, gpu_share: float = 0.0) -> torch.device:
    """The device a trial trains on. ``cuda``, or a trial that holds a GPU share
    (``resources.gpu`` > 0), never falls back to the CPU: it raises
    :class:`~raygap.errors.DeviceUnavailable` when CUDA is unusable."""
    if name == "cpu":
        return torch.device("cpu")
    problem = cuda_problem()
    if problem is None:
        return torch.device("cuda", 0)   # Ray sets CUDA_VISIBLE_DEVICES to the GPU it assigns
    if name == "cuda":
        raise DeviceUnavailable(f"train.device=cuda but CUDA is unusable here: {problem}")
    if gpu_share > 0:
        raise DeviceUnavailable(f"the trial holds resources.gpu={gpu_share:g} but CUDA is unusable here: {problem}; "
                                "it will not train on the CPU instead")
    return torch.device("cpu")
