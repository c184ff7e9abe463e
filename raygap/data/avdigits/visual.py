"""avdigits' visual stream: the 8x8 digit images at the chosen side, corrupted where the mask
says."""
from __future__ import annotations

import numpy as np

from ...errors import ConfigError
from ...lazy import lazy
from .sampling import pick_donors

torch = lazy("torch")
F = lazy("torch.nn.functional")


def prepare_images(images: np.ndarray, size: int) -> torch.Tensor:
    """(N, 8, 8) -> (N, 1, size, size), bilinear upsampling when size > 8."""
    x = torch.from_numpy(np.array(images, dtype=np.float32)).unsqueeze(1)
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


def corrupt_visual(img: torch.Tensor, labels: np.ndarray, mask: np.ndarray, mode: str,
                   rng: np.random.Generator) -> torch.Tensor:
    """Replace the masked images so they carry no information about their label."""
    idx = np.flatnonzero(mask)
    if len(idx) == 0:
        return img
    out = img.clone()
    ti = torch.from_numpy(idx)
    if mode == "blank":
        out[ti] = 0.0
    elif mode == "noise":
        out[ti] = torch.from_numpy(rng.random((len(idx), *img.shape[1:]), dtype=np.float32))
    elif mode == "shuffle":
        out[ti] = img[torch.from_numpy(pick_donors(labels, idx, rng))]
    else:
        raise ConfigError(f"unknown visual_corrupt_mode {mode!r}", key="data.visual_corrupt_mode")
    return out
