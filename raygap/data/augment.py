"""Frame augmentation on whole batches, on whatever device holds them (the cache pipeline).

The per-item path (``data.pipeline: files``) applies torchvision's
``RandomResizedCrop(S) + RandomHorizontalFlip`` (train) or ``Resize((S, S))`` (eval) to each
decoded frame, then ``ToTensor`` and ImageNet normalisation (:func:`~raygap.data.media.frame_transform`).
The cache stores every frame squashed to ``side x side`` uint8 together with its original
height and width; here the same transforms run on a batch of such frames at once:

* :func:`crop_boxes` draws torchvision's crop boxes -- its exact algorithm (area fraction
  U(0.08, 1), log aspect ratio U(log 3/4, log 4/3), ten tries, then the central fallback),
  vectorised -- *in the original frame's pixels*, so the crops have the per-item path's
  distribution whatever the cached resolution;
* :func:`resized_crop` maps each box (and its flip) to the squashed frame as an affine
  sampling grid and resamples it bilinearly to ``size x size`` (``grid_sample``; a box
  never exceeds the frame, so with ``side == size`` it only ever enlarges, where bilinear
  needs no antialiasing);
* :func:`resize` is the eval ``Resize((size, size))`` (bilinear, antialiased);
* :func:`normalise` is ``ToTensor`` + ``Normalize``.

The boxes are drawn on the CPU from a ``torch.Generator`` (a few hundred numbers per batch:
no device round trip); the pixels never leave the device. torchvision's v2 transforms
draw one box per call, and kornia (not a dependency, and absent from the GPU image) uses
its own sampling; hence these few lines.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .media import IMAGENET_MEAN, IMAGENET_STD

SCALE = (0.08, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)
TRIES = 10


def crop_boxes(heights: torch.Tensor, widths: torch.Tensor, generator: torch.Generator | None = None,
               scale=SCALE, ratio=RATIO, tries: int = TRIES) -> torch.Tensor:
    """torchvision's ``RandomResizedCrop.get_params`` for ``n`` frames at once: int64 (n, 4)
    boxes ``(top, left, height, width)`` in each frame's own pixels (CPU tensors)."""
    H = heights.to(torch.float64).reshape(-1, 1)
    W = widths.to(torch.float64).reshape(-1, 1)
    n = H.shape[0]
    area = H * W
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, tries, generator=generator, dtype=torch.float64))
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * torch.rand(n, tries, generator=generator, dtype=torch.float64))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = ok.to(torch.int8).argmax(dim=1, keepdim=True)          # the first try that fits
    any_ok = ok.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    H, W = H.squeeze(1), W.squeeze(1)
    # torchvision's fallback: the central crop with the ratio clamped into range
    in_ratio = W / H
    fw = torch.where(in_ratio < ratio[0], W, torch.where(in_ratio > ratio[1], torch.round(H * ratio[1]), W))
    fh = torch.where(in_ratio < ratio[0], torch.round(W / ratio[0]), H)
    w = torch.where(any_ok, w, fw)
    h = torch.where(any_ok, h, fh)
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    top = torch.where(any_ok, torch.floor(u[:, 0] * (H - h + 1)), torch.div(H - h, 2, rounding_mode="floor"))
    left = torch.where(any_ok, torch.floor(u[:, 1] * (W - w + 1)), torch.div(W - w, 2, rounding_mode="floor"))
    return torch.stack([top, left, h, w], dim=1).to(torch.int64)


def crop_theta(boxes: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor,
               flip: torch.Tensor) -> torch.Tensor:
    """Affine matrices (n, 2, 3) for ``F.affine_grid(align_corners=False)`` that sample each
    box (in original pixels; the cached frame covers the same extent) and mirror the flipped
    ones: output x in [-1, 1] reads input fraction ``x0 + (x + 1) / 2 * (x1 - x0)``."""
    b = boxes.to(torch.float64)
    H = heights.to(torch.float64)
    W = widths.to(torch.float64)
    y0, x0 = b[:, 0] / H, b[:, 1] / W
    y1, x1 = (b[:, 0] + b[:, 2]) / H, (b[:, 1] + b[:, 3]) / W
    sx = torch.where(flip, -(x1 - x0), x1 - x0)
    theta = torch.zeros(len(b), 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = x0 + x1 - 1.0
    theta[:, 1, 1] = y1 - y0
    theta[:, 1, 2] = y0 + y1 - 1.0
    return theta.float()


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without making the host wait: through pinned memory, non-blocking."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def resized_crop(frames: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """Float frames (n, C, h, w) -> (n, C, size, size) through per-frame affine ``theta``."""
    grid = F.affine_grid(to_device(theta, frames.device), [frames.shape[0], frames.shape[1], size, size],
                         align_corners=False)
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=False)


def resize(frames: torch.Tensor, size: int) -> torch.Tensor:
    """``Resize((size, size))`` of float frames (n, C, h, w): bilinear, antialiased."""
    if frames.shape[-2:] == (size, size):
        return frames
    return F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


_NORM: dict = {}


def normalise(frames: torch.Tensor) -> torch.Tensor:
    """Float frames in [0, 255] -> ``ToTensor`` + ImageNet ``Normalize``."""
    key = (frames.device, frames.dtype)
    if key not in _NORM:                     # once per device: no copy per batch
        _NORM[key] = tuple(torch.tensor(v, dtype=frames.dtype).view(1, 3, 1, 1).mul(255.0).to(frames.device)
                           for v in (IMAGENET_MEAN, IMAGENET_STD))
    mean, std = _NORM[key]
    return (frames - mean) / std


def frames_batch(frames_u8: torch.Tensor, sizes: torch.Tensor, size: int, train: bool,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """A batch of cached frames (B, T, 3, s, s) uint8 with their original (B, T, 2) sizes ->
    (B, T, 3, size, size) float, augmented like the per-item path when ``train``; every
    frame gets its own crop and flip, as the official loaders transform each frame alone."""
    B, T = frames_u8.shape[:2]
    x = frames_u8.reshape(B * T, *frames_u8.shape[2:]).float()
    if train:
        hw = sizes.reshape(B * T, 2).cpu()
        boxes = crop_boxes(hw[:, 0], hw[:, 1], generator)
        flip = torch.rand(B * T, generator=generator) < 0.5
        x = resized_crop(x, crop_theta(boxes, hw[:, 0], hw[:, 1], flip), size)
    else:
        x = resize(x, size)
    return normalise(x).reshape(B, T, 3, size, size)
