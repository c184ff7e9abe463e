"""How avdigits draws: one random generator per decision (stream) and split, the image-level
splits, samples per split, which images a split's samples take, and which samples are corrupted
(and by whose stream, for ``shuffle``)."""
from __future__ import annotations

import numpy as np

from ...errors import ConfigError
from ..base import carve_validation

SPLITS = ("train", "val", "test")

# Random streams: each decision has its own generator, so knobs do not disturb each other.
_SALT = 0xA7D161          # keeps these streams apart from other uses of split_seed
_STREAM = {"heldout": 1, "order": 2, "audio": 3, "visual_noise": 4,
           "corrupt_visual": 5, "corrupt_audio": 6, "text": 7, "corrupt_text": 8}


def rng_for(seed: int, stream: str, split: str | None = None) -> np.random.Generator:
    """The generator of one decision (``stream``), for one split when given: its own, so e.g.
    turning up ``visual_corrupt`` leaves the audio and the splits untouched."""
    key = [_SALT, int(seed), _STREAM[stream]] + ([SPLITS.index(split)] if split else [])
    return np.random.default_rng(key)


def split_images(labels: np.ndarray, test_fraction: float, val_fraction: float,
                 seed: int) -> dict[str, np.ndarray]:
    """Stratified image-level split: test first, then validation carved from the rest."""
    rest, test = carve_validation(labels, test_fraction, seed)
    tr, va = carve_validation(labels[rest], val_fraction, seed + 1)
    return {"train": rest[tr], "val": rest[va], "test": test}


def allocate(num_samples: int, sizes: dict[str, int]) -> dict[str, int]:
    """Samples per split: one per image when ``num_samples`` is 0, else ``num_samples``
    shared in proportion to the splits' image counts (largest remainder)."""
    if num_samples == 0:
        return dict(sizes)
    total = sum(sizes.values())
    exact = {s: num_samples * n / total for s, n in sizes.items()}
    out = {s: int(np.floor(v)) for s, v in exact.items()}
    for s in sorted(exact, key=lambda s: out[s] - exact[s])[: num_samples - sum(out.values())]:
        out[s] += 1
    for s, n in out.items():
        if sizes[s] and n == 0:
            raise ConfigError(f"{num_samples} samples leave the {s} split empty", key="data.num_samples")
    return out


def sample_images(images: np.ndarray, labels: np.ndarray, n: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Choose ``n`` (image, repeat) pairs from one split's images.

    Images are ordered round-robin over classes (random order within a class), and sample
    i takes image ``order[i % len]`` as repeat ``i // len``: any prefix is class-balanced,
    and every image is used ``floor(n / len)`` or ``ceil(n / len)`` times."""
    rank = np.empty(len(images), dtype=np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rank[idx] = rng.permutation(len(idx))
    order = images[np.lexsort((rng.random(len(images)), rank))]
    i = np.arange(n)
    img, rep = order[i % len(order)], i // len(order)
    keep = np.lexsort((rep, img))          # stored sorted by image, then repeat
    return img[keep], rep[keep]


def pick_corrupted(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask with exactly ``round(fraction * n)`` randomly placed True entries."""
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[: int(round(fraction * n))]] = True
    return mask


def pick_donors(labels: np.ndarray, targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each index in ``targets``, a random sample of the split with a different label."""
    donors = np.empty(len(targets), dtype=np.int64)
    for c in np.unique(labels[targets]):
        where = labels[targets] == c
        pool = np.flatnonzero(labels != c)
        if len(pool) == 0:
            raise ConfigError("shuffle corruption needs at least two classes in every split")
        donors[where] = pool[rng.integers(0, len(pool), int(where.sum()))]
    return donors
