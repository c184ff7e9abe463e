"""The dataset contract every loader in ``raygap.data`` fulfils.

A dataset builder is registered in ``raygap.registry.DATASETS`` with its own params
dataclass and is called as ``build(params, common)`` where ``common`` is a
:class:`DataCommon` (root, split seed, validation fraction, bad-media policy). It
returns a :class:`DatasetBundle`: named modalities, three splits, class names.

Every split item is a dict ``{<modality name>: tensor, "label": int, "index": int}``;
``index`` is the item's position within its split, so methods can keep per-sample
state (posterior weights, for instance). Sample ids live in ``split.ids``.

Two split kinds exist:
* :class:`TensorSplit` -- everything pre-computed in memory (avdigits, fixtures);
  the trainer slices batches straight out of the tensors (no DataLoader overhead).
* a subclass of :class:`FileSplit` (a map-style dataset: ``len`` and items by index) --
  decoded from disk per item (CREMA-D, AVE, KS); the trainer wraps it in a DataLoader.

Nothing here imports torch at import time (``raygap.lazy``): configs are validated against
:class:`DataCommon` and the datasets' layouts without it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..lazy import lazy

torch = lazy("torch")

ENV_ROOT = "RAYGAP_DATA"          # the folder that holds each dataset's root as <name>/


@dataclass(frozen=True)
class ModalitySpec:
    """A named input stream.

    kind:
      * ``spectrogram`` -- tensor (C, F, T): log spectrogram / fbank (audio)
      * ``frames``      -- tensor (T, C, H, W): T video frames (visual)
      * ``sequence``    -- tensor (L, D): a feature sequence (text / MOSI features)
      * ``vector``      -- tensor (D,)
    """
    name: str
    kind: str
    shape: tuple[int, ...]


@dataclass
class DataLayout:
    """What a dataset yields for given params, known without loading it: the names of its
    modalities (in order) and its task. Every dataset declares one at registration
    (``DATASETS.register(name, params=..., layout=lambda p: DataLayout([...]))``) so a
    config that names a modality the data lacks fails at load, not hours into a grid."""
    modalities: list[str]
    task: str = "classification"      # or "regression"


@dataclass
class DataCommon:
    """Options every dataset understands (the common part of the ``data`` section)."""
    root: str | None = None          # data root (else $RAYGAP_DATA / <name>: root_of)
    val_fraction: float = 0.1        # carved from train with split_seed when the dataset has no val split
    split_seed: int = 0
    on_bad_media: str = "error"      # "error": raise naming the file; "skip": drop the item and count it
    train_augment: bool = True       # random crops / flips on the train split (file datasets)
    pipeline: str = field(default="files", metadata={
        "choices": ["files", "cache"],
        "help": "files: decode each item from its media every epoch (DataLoader); cache: read the tensor "
                "cache `raygap cache` / `raygap prepare` wrote, batches built on the trial's device"})
    cache_side: int = field(default=0, metadata={
        "range": (0, 4096), "help": "pipeline=cache: side of the cached frames (0: the dataset's image_size)"})
    preload: str = field(default="auto", metadata={
        "choices": ["auto", "on", "off"],
        "help": "pipeline=cache on a GPU: upload each split once when it fits the trial's budget (its GPU share "
                "of the device less its CUDA context, measured training step and headroom; docs/datasets.md), "
                "streaming the rest (auto) or failing (on), or gather every batch from the mapped files (off)"})


def root_of(name: str, common: DataCommon) -> Path | None:
    """Where dataset ``name``'s files are: ``data.root``, else ``$RAYGAP_DATA/<name>`` (``~``
    expanded); None when neither is set (the caller's error says what to set). Whether the
    folder exists is the caller's to check."""
    if common.root:
        return Path(os.path.expanduser(str(common.root)))
    if os.environ.get(ENV_ROOT):
        return Path(os.path.expanduser(os.environ[ENV_ROOT])) / name
    return None


class TensorSplit:
    """A split held in memory as stacked tensors."""

    def __init__(self, tensors: dict[str, torch.Tensor], labels: torch.Tensor,
                 ids: Sequence[str], extras: dict[str, np.ndarray] | None = None):
        n = len(labels)
        for k, t in tensors.items():
            if len(t) != n:
                raise ValueError(f"modality {k}: {len(t)} items, labels: {n}")
        if len(ids) != n:
            raise ValueError(f"{len(ids)} ids for {n} labels")
        self.tensors = tensors
        self.labels = labels.long() if labels.dtype != torch.float32 else labels
        self.ids = list(ids)
        self.extras = extras or {}
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {k: t[i] for k, t in self.tensors.items()}
        item["label"] = self.labels[i]
        item["index"] = i
        return item

    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The items ``idx`` stacked, sliced on the device the split was placed on
        (``generator`` is unused: nothing random here)."""
        dev = getattr(self, "_on_device", None)
        if dev is not None:
            idx_d = idx.to(dev["label"].device, non_blocking=True)
            out = {k: t.index_select(0, idx_d) for k, t in dev.items()}
        else:
            out = {k: t[idx] for k, t in self.tensors.items()}
            out["label"] = self.labels[idx]
        out["index"] = idx
        return out

    def place(self, device: torch.device) -> str:
        """Copy the tensors to ``device`` once (they are small): batches are then sliced there.
        ``tensors`` and ``labels`` stay on the host for whoever reads them."""
        if device.type == "cpu":
            self._on_device = None
            return "host"
        self._on_device = {**{k: t.to(device) for k, t in self.tensors.items()}, "label": self.labels.to(device)}
        return "resident"

    def subset(self, idx: np.ndarray) -> "TensorSplit":
        ti = torch.as_tensor(idx, dtype=torch.long)
        return TensorSplit({k: t[ti] for k, t in self.tensors.items()}, self.labels[ti],
                           [self.ids[i] for i in idx],
                           {k: v[idx] for k, v in self.extras.items()})


class FileSplit:
    """Base class for splits decoded from disk: a map-style dataset (``len``, items by index) for
    ``torch.utils.data.DataLoader``. Subclasses set ``self.ids``, ``self.label_list`` (ints),
    ``self.skipped`` (ids dropped under on_bad_media=skip) and ``self.extras``, and implement
    ``load(i) -> {modality: tensor}``."""

    ids: list[str]
    label_list: list[int]

    def __init__(self):
        self.skipped: list[str] = []
        self.extras: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, i: int) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.load(i)
        item["label"] = self.label_list[i]
        item["index"] = i
        return item

    @property
    def labels(self) -> torch.Tensor:
        return torch.as_tensor(self.label_list, dtype=torch.long)


@dataclass
class DatasetBundle:
    name: str
    modalities: list[ModalitySpec]
    num_classes: int
    class_names: list[str]
    train: Any
    val: Any
    test: Any
    task: str = "classification"     # or "regression"
    info: dict = field(default_factory=dict)  # counts, skipped media, provenance

    @property
    def modality_names(self) -> list[str]:
        return [m.name for m in self.modalities]

    def split(self, name: str):
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def carve_validation(labels: Sequence[int], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split train indices into (train, val), stratified by label, reproducible for a seed.

    Used where a dataset ships no validation split (the paper carves 9:1 from train).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    tr, va = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        k = int(round(len(idx) * fraction))
        if fraction > 0 and len(idx) > 1:
            k = max(1, min(k, len(idx) - 1))
        va.append(idx[:k])
        tr.append(idx[k:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(va))
