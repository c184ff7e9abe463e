"""``mosi``: CMU-MOSI from the pre-extracted feature pickles the field distributes.

Two formats are read (``docs/datasets.md``; nothing is downloaded):

* **MMSA** (``aligned_50.pkl`` / ``unaligned_50.pkl``): ``{"train", "valid", "test"}``, each a
  dict with ``text`` (word feature vectors) and/or ``text_bert`` (BERT token ids, mask and
  segment ids: (N, 3, L)), ``audio`` (COVAREP), ``vision`` (Facet), ``audio_lengths``,
  ``vision_lengths``, ``regression_labels`` (N,), ``id`` and usually ``raw_text``.
* **MulT** (``mosi_data.pkl`` / ``mosi_data_noalign.pkl``): the same three splits, each with
  ``text``, ``audio``, ``vision``, ``labels`` (N, 1, 1) and ``id``.

Every modality is a ``sequence`` (L, D) taken as the file stores it (float32); non-finite
values (common copies of MOSI audio hold ``-inf``) become 0 and are counted in
``bundle.info["nonfinite"]``. The file's own ``valid`` split is the validation split.
``target: regression`` (default) keeps the sentiment score in [-3, 3] as a float label;
``binary`` (negative < 0 vs non-negative) and ``7class`` (round(clip(y, -3, 3)) + 3) derive
class labels from it. ``bundle.info`` and ``split.extras`` keep the score, the lengths and
the raw ids. Everything is held in memory.

BERT-token text cannot be encoded offline: a file with only ``text_bert`` is an error. A
pickle can run code when it is loaded: only read feature files from a source you trust.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..lazy import lazy
from ..params import F
from ..registry import DATASETS
from .base import ENV_ROOT, DataCommon, DataLayout, DatasetBundle, ModalitySpec, TensorSplit, root_of

torch = lazy("torch")

NAME = "mosi"
MODALITIES = ("text", "audio", "vision")
FILE_SPLITS = {"train": "train", "val": "valid", "test": "test"}   # raygap split -> the file's key
LABEL_KEY = {"mmsa": "regression_labels", "mult": "labels"}
DOCS = "docs/datasets.md#cmu-mosi-mosi"
PAPER_COUNTS = {"train": 1284, "valid": 229, "test": 686, "total": 2199}
CLASS_NAMES = {
    "regression": ["sentiment"],
    "binary": ["negative", "non-negative"],
    "7class": ["-3", "-2", "-1", "0", "1", "2", "3"],
}


@dataclass
class MosiParams:
    """mosi's own keys of the ``data`` section."""
    file: str = F("aligned_50.pkl", help="the feature pickle: a path relative to the data root "
                  "(data.root, else $RAYGAP_DATA/mosi) or an absolute path")
    format: str = F("auto", choices=["auto", "mmsa", "mult"],
                    help="mmsa: aligned_50.pkl / unaligned_50.pkl (regression_labels); mult: mosi_data.pkl "
                         "(labels (N, 1, 1)); auto: told apart by the label key")
    target: str = F("regression", choices=["regression", "binary", "7class"],
                    help="regression: the sentiment score in [-3, 3]; binary: negative (< 0) vs non-negative; "
                         "7class: round(clip(score, -3, 3)) + 3")


# ----------------------------------------------------------------------------- reading
def feature_path(file: str, common: DataCommon) -> Path:
    """``file`` when absolute, else ``file`` under the data root (``data.root``, else
    ``$RAYGAP_DATA/mosi``)."""
    path = Path(os.path.expanduser(str(file)))
    if path.is_absolute():
        return path
    root = root_of(NAME, common)
    if root is None:
        raise DataError(f"{NAME}: no data root for {file}: set data.root or the {ENV_ROOT} environment "
                        f"variable (read as ${ENV_ROOT}/{NAME}), or give data.file as an absolute path; {DOCS}")
    return root / path


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def read_pickle(path: Path) -> Any:
    if not path.is_file():
        what = "is not a file" if path.exists() else "is missing"
        raise DataError(f"{path}: {NAME} feature file {what} (raygap downloads nothing: get MMSA's "
                        f"aligned_50.pkl or MulT's mosi_data.pkl, see {DOCS})")
    try:
        with open(path, "rb") as f:
            try:
                return pickle.load(f)
            except UnicodeDecodeError:           # a pickle written by Python 2
                f.seek(0)
                return pickle.load(f, encoding="latin1")
    except Exception as e:  # noqa: BLE001 - any failure to unpickle is a bad file
        raise DataError(f"{path}: not a readable {NAME} feature pickle ({_one_line(e)})") from None


def _keys(d: dict) -> str:
    return ", ".join(sorted(map(str, d)))


def detect_format(data: dict, path: Path) -> str:
    """``mmsa`` when the train split has ``regression_labels``, ``mult`` when it has ``labels``."""
    train = data["train"]
    if "regression_labels" in train:
        return "mmsa"
    if "labels" in train:
        return "mult"
    raise DataError(f"{path}: split 'train' has neither 'regression_labels' (MMSA) nor 'labels' (MulT); "
                    f"keys: {_keys(train)}")


def _array(split: dict, key: str, path: Path, fsplit: str, dtype=np.float32) -> np.ndarray:
    try:
        return np.asarray(split[key], dtype=dtype)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: split '{fsplit}' key '{key}' is not a numeric array ({_one_line(e)})") from None


def _id_string(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, (np.ndarray, list, tuple)):
        return "_".join(_id_string(x) for x in np.asarray(v, dtype=object).reshape(-1))
    return str(v)


def read_split(data: dict, fsplit: str, fmt: str, path: Path) -> dict[str, Any]:
    """One split of the file: float32 modalities (N, L, D), scores (N,), ids and extras."""
    if fsplit not in data:
        raise DataError(f"{path}: split '{fsplit}' missing (the file has: {_keys(data)})")
    split = data[fsplit]
    if not isinstance(split, dict):
        raise DataError(f"{path}: split '{fsplit}' is a {type(split).__name__}, expected a dict of arrays")
    for key in MODALITIES:
        if key in split:
            continue
        if key == "text" and "text_bert" in split:
            raise DataError(f"{path}: split '{fsplit}' holds only 'text_bert' (BERT token ids, mask and segment "
                            f"ids, (N, 3, L)), which raygap cannot encode offline; use a file whose 'text' holds "
                            f"feature vectors (N, L, D), e.g. MMSA's aligned_50.pkl or MulT's mosi_data.pkl")
        raise DataError(f"{path}: split '{fsplit}' key '{key}' missing (keys: {_keys(split)})")
    label_key = LABEL_KEY[fmt]
    if label_key not in split:
        raise DataError(f"{path}: split '{fsplit}' key '{label_key}' missing for format {fmt} "
                        f"(keys: {_keys(split)})")

    feats = {}
    for key in MODALITIES:
        x = _array(split, key, path, fsplit)
        if x.ndim != 3:
            raise DataError(f"{path}: split '{fsplit}' key '{key}' has shape {x.shape}, expected (N, L, D)")
        feats[key] = x
    y = _array(split, label_key, path, fsplit, np.float64)
    n = len(feats["text"])
    if y.size != n:
        raise DataError(f"{path}: split '{fsplit}': '{label_key}' has shape {y.shape} for {n} items of 'text'")
    y = y.reshape(n)
    if not np.isfinite(y).all():
        raise DataError(f"{path}: split '{fsplit}' key '{label_key}' holds {int((~np.isfinite(y)).sum())} "
                        f"non-finite labels")
    for key in MODALITIES[1:]:
        if len(feats[key]) != n:
            raise DataError(f"{path}: split '{fsplit}': '{key}' has {len(feats[key])} items, 'text' has {n}")

    extras: dict[str, np.ndarray] = {}
    if "id" in split:
        seq = list(split["id"])
        if len(seq) != n:
            raise DataError(f"{path}: split '{fsplit}': 'id' has {len(seq)} items, 'text' has {n}")
        raw_ids = np.empty(n, dtype=object)          # one entry per item, whatever each id is
        for i, v in enumerate(seq):
            raw_ids[i] = v
        ids = [_id_string(v) for v in seq]
        extras["raw_id"] = raw_ids
    else:
        ids = [f"{fsplit}{i:05d}" for i in range(n)]
    for key in sorted(k for k in split if str(k).endswith("_lengths")):
        lengths = _array(split, key, path, fsplit, np.float64)
        if lengths.shape[:1] != (n,):
            raise DataError(f"{path}: split '{fsplit}': '{key}' has shape {lengths.shape} for {n} items")
        extras[str(key)] = lengths.astype(np.int64)
    if "raw_text" in split and len(split["raw_text"]) == n:
        extras["raw_text"] = np.array([str(t) for t in split["raw_text"]], dtype=object)
    return {"feats": feats, "score": y.astype(np.float32), "ids": ids, "extras": extras}


# ----------------------------------------------------------------------------- targets
def binary_labels(score: np.ndarray) -> np.ndarray:
    """0 = negative (< 0), 1 = non-negative (>= 0): the field's Acc-2."""
    return (np.asarray(score) >= 0).astype(np.int64)


def seven_class_labels(score: np.ndarray) -> np.ndarray:
    """round(clip(score, -3, 3)) + 3 in 0..6 (numpy rounds halves to even, as the field's Acc-7 code)."""
    return (np.round(np.clip(np.asarray(score, dtype=np.float64), -3, 3)) + 3).astype(np.int64)


# ----------------------------------------------------------------------------- builder
@DATASETS.register(NAME, params=MosiParams, in_memory=True,
                   layout=lambda p: DataLayout(list(MODALITIES), "regression"))
def build(params: MosiParams, common: DataCommon) -> DatasetBundle:
    """CMU-MOSI features (MMSA or MulT pickle): text, audio, vision sequences; sentiment in [-3, 3]."""
    path = feature_path(params.file, common)
    data = read_pickle(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a dict with splits train / valid / test, got {type(data).__name__}")
    for fsplit in FILE_SPLITS.values():
        if fsplit not in data:
            raise DataError(f"{path}: split '{fsplit}' missing (the file has: {_keys(data)})")
    if not isinstance(data["train"], dict):
        raise DataError(f"{path}: split 'train' is a {type(data['train']).__name__}, expected a dict of arrays")
    fmt = detect_format(data, path) if params.format == "auto" else params.format
    raw = {s: read_split(data, f, fmt, path) for s, f in FILE_SPLITS.items()}

    # every split must agree on each modality's (L, D)
    shapes = {}
    for key in MODALITIES:
        seen = {s: r["feats"][key].shape[1:] for s, r in raw.items()}
        if len(set(seen.values())) > 1:
            detail = ", ".join(f"{FILE_SPLITS[s]} {v}" for s, v in seen.items())
            raise DataError(f"{path}: '{key}' has a different (L, D) in each split: {detail}")
        shapes[key] = tuple(int(v) for v in seen["train"])

    nonfinite: dict[str, dict[str, int]] = {}
    splits = {}
    for s, r in raw.items():
        tensors, nonfinite[s] = {}, {}
        for key in MODALITIES:
            x = r["feats"][key]
            bad = ~np.isfinite(x)
            nonfinite[s][key] = int(bad.sum())
            if nonfinite[s][key]:
                x = np.where(bad, np.float32(0), x)
            tensors[key] = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        score = r["score"]
        if params.target == "regression":
            labels = torch.from_numpy(score.copy())
        elif params.target == "binary":
            labels = torch.from_numpy(binary_labels(score))
        else:
            labels = torch.from_numpy(seven_class_labels(score))
        splits[s] = TensorSplit(tensors, labels, r["ids"], extras={"score": score, **r["extras"]})

    info = {
        "file": str(path),
        "format": fmt,
        "format_source": "detected" if params.format == "auto" else "data.format",
        "target": params.target,
        "counts": {s: len(sp) for s, sp in splits.items()},
        "paper_counts": PAPER_COUNTS,
        "shapes": {k: list(v) for k, v in shapes.items()},
        "nonfinite": nonfinite,
        "nonfinite_total": sum(sum(v.values()) for v in nonfinite.values()),
        "ids": "file" if "raw_id" in raw["train"]["extras"] else "generated (the file has no 'id')",
        "score_range": [float(min(r["score"].min(initial=np.inf) for r in raw.values())),
                        float(max(r["score"].max(initial=-np.inf) for r in raw.values()))],
    }
    if params.target != "regression":
        k = len(CLASS_NAMES[params.target])
        info["class_counts"] = {s: np.bincount(sp.labels.numpy(), minlength=k).tolist() for s, sp in splits.items()}
    modalities = [ModalitySpec(key, "sequence", shapes[key]) for key in MODALITIES]
    names = list(CLASS_NAMES[params.target])
    return DatasetBundle(name=NAME, modalities=modalities,
                         num_classes=1 if params.target == "regression" else len(names), class_names=names,
                         train=splits["train"], val=splits["val"], test=splits["test"],
                         task="regression" if params.target == "regression" else "classification", info=info)
