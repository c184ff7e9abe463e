"""``cremad``: CREMA-D (6 emotions; audio dominates), read as the field's official code reads it.

Layout under the data root (``raygap prepare cremad`` writes it; docs/datasets.md)::

    train.csv, test.csv          rows ``clip,LABEL`` (e.g. ``1001_DFA_ANG_XX,ANG``)
    AudioWAV/<clip>.wav          any rate (resampled to 22050 Hz on load)
    Image-01-FPS/<clip>/*.jpg    frames at 1 fps (numeric order)
    audio_npy/<clip>.npy         optional precomputed audio (replaces the WAV)

Classes in the fixed order NEU HAP SAD FEA DIS ANG. Validation is carved 9:1 from
train.csv (stratified, ``data.split_seed``). ``split: actor_disjoint`` pools train and
test and re-splits them by actor (the clip name's first field) so no actor is in two
splits: the official lists share actors between train and test.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..registry import DATASETS
from .base import DataCommon, DataLayout, DatasetBundle, carve_validation
from .loader import assemble, clip_id, data_root, dedupe, label_index, read_rows, require_file
from .media import NPY_DIR, Clip, cremad_front_end

NAME = "cremad"
CLASS_NAMES = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
TRAIN_LIST, TEST_LIST = "train.csv", "test.csv"
AUDIO_DIR, FRAMES_DIR = "AudioWAV", "Image-01-FPS"
PAPER_COUNTS = {"train": 6698, "test": 744, "total": 7442}


@dataclass
class CremadParams:
    """cremad's own keys of the ``data`` section."""
    num_frames: int = field(default=1, metadata={
        "range": (1, 64), "help": "frames per clip, sampled evenly (OGM-GE uses 1, PMR 3, D&R 2)"})
    image_size: int = field(default=224, metadata={
        "range": (8, 1024), "help": "frame side after the crop / resize"})
    split: str = field(default="official", metadata={
        "choices": ["official", "actor_disjoint"],
        "help": "official: train.csv / test.csv (they share actors); actor_disjoint: train+test "
                "re-split by actor so no actor is in two splits"})
    verify_media: bool = field(default=False, metadata={
        "help": "at build time also read every WAV header and decode the frames that will be used "
                "(slower; catches corrupt files before training, not only missing ones)"})


def actor_of(clip: str) -> str:
    """The actor id: the clip name's first field (``1001_DFA_ANG_XX`` -> ``1001``)."""
    return clip.split("_", 1)[0]


def emotion_of(clip: str) -> str:
    """The emotion code: the clip name's third field (``1001_DFA_ANG_XX`` -> ``ANG``)."""
    parts = clip.split("_")
    if len(parts) != 4:
        raise ValueError(f"{clip!r} is not a CREMA-D clip name (ACTOR_SENTENCE_EMOTION_LEVEL)")
    return parts[2]


def read_split_csv(path: Path) -> list[tuple[str, str, int]]:
    """Rows (clip, label, line number) of a ``clip,LABEL`` list."""
    rows = []
    for line, text in read_rows(path):
        fields = next(csv.reader([text]))
        if len(fields) < 2 or not fields[0].strip():
            raise DataError(f"{path}:{line}: expected 'clip,LABEL', got {text!r}")
        rows.append((clip_id(fields[0].strip(), path, line), fields[1].strip(), line))
    return rows


def split_csv_text(rows: list[tuple[str, str]]) -> str:
    """``clip,LABEL`` rows as a split list's text (the official format, no header)."""
    return "".join(f"{clip},{label}\n" for clip, label in rows)


def write_split_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    """Write ``clip,LABEL`` rows (the official format, no header)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(split_csv_text(rows), encoding="utf-8")
    tmp.replace(path)


def group_holdout(groups: list[str], fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split item indices into (kept, held out) by whole groups: groups in random order are
    held out until they hold at least ``fraction`` of the items (at least one group held
    out and one kept when there are two or more)."""
    groups_arr = np.asarray(groups)
    names = np.unique(groups_arr)
    if fraction <= 0 or len(names) < 2:
        return np.arange(len(groups_arr)), np.array([], dtype=np.int64)
    order = rng.permutation(names)
    target, held, count = fraction * len(groups_arr), [], 0
    for g in order[:-1]:
        if count >= target:
            break
        held.append(g)
        count += int((groups_arr == g).sum())
    mask = np.isin(groups_arr, held)
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def actor_disjoint_split(clips: list[str], test_fraction: float, val_fraction: float,
                         seed: int) -> dict[str, np.ndarray]:
    """Indices of ``clips`` per split with every actor in exactly one split: test takes about
    ``test_fraction`` of the clips, then val about ``val_fraction`` of the rest."""
    actors = [actor_of(c) for c in clips]
    rest, test = group_holdout(actors, test_fraction, np.random.default_rng([seed, 1]))
    keep, val = group_holdout([actors[i] for i in rest], val_fraction, np.random.default_rng([seed, 2]))
    return {"train": np.sort(rest[keep]), "val": np.sort(rest[val]), "test": np.sort(test)}


@DATASETS.register(NAME, params=CremadParams, layout=lambda p: DataLayout(["audio", "visual"]),
                   split_lists=(TRAIN_LIST, TEST_LIST))
def build(params: CremadParams, common: DataCommon) -> DatasetBundle:
    """CREMA-D: audio (1, 257, 188) log-STFT, visual (num_frames, 3, S, S); 6 emotions."""
    root = data_root(NAME, common)
    classes = {c: i for i, c in enumerate(CLASS_NAMES)}
    lists, duplicates = {}, {}
    for split, fname in (("train", TRAIN_LIST), ("test", TEST_LIST)):
        path = require_file(root / fname, NAME, root)
        rows, duplicates[fname] = dedupe(read_split_csv(path), key=lambda r: r[0])
        lists[split] = [(clip, label_index(label, classes, path, line)) for clip, label, line in rows]

    if params.split == "official":
        train = lists["train"]
        tr, va = carve_validation([y for _, y in train], common.val_fraction, common.split_seed)
        chosen = {"train": [train[i] for i in tr], "val": [train[i] for i in va], "test": lists["test"]}
        split_rule = (f"official test.csv; val carved {common.val_fraction:g} of train.csv "
                      f"(stratified, seed {common.split_seed})")
    else:
        test_ids = {c for c, _ in lists["test"]}
        pool = lists["test"] + [r for r in lists["train"] if r[0] not in test_ids]
        test_fraction = len(lists["test"]) / max(1, len(pool))
        idx = actor_disjoint_split([c for c, _ in pool], test_fraction, common.val_fraction, common.split_seed)
        chosen = {s: [pool[i] for i in ix] for s, ix in idx.items()}
        split_rule = (f"actor-disjoint: train.csv + test.csv re-split by actor (test ~{test_fraction:.3f}, "
                      f"val ~{common.val_fraction:g} of the rest, seed {common.split_seed})")

    def clip(cid: str, y: int) -> Clip:
        return Clip(cid, y, root / AUDIO_DIR / f"{cid}.wav", root / NPY_DIR / f"{cid}.npy",
                    root / FRAMES_DIR / cid)

    splits = {s: [clip(c, y) for c, y in rows] for s, rows in chosen.items()}
    info = {
        "split": params.split,
        "split_rule": split_rule,
        "list_counts": {TRAIN_LIST: len(lists["train"]), TEST_LIST: len(lists["test"])},
        "duplicates": duplicates,
        "paper_counts": PAPER_COUNTS,
        "class_source": "fixed (OGM-GE order)",
        "actors": {s: sorted({actor_of(c.id) for c in v}) for s, v in splits.items()},
    }
    return assemble(NAME, root, splits, CLASS_NAMES, cremad_front_end(), params.num_frames,
                    params.image_size, common, params.verify_media, info,
                    extras=lambda clips: {"actor": np.array([actor_of(c.id) for c in clips])})
