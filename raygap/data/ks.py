"""``ks``: Kinetics-Sounds (31 classes in the field's split lists), read as the field's official
code reads it.

Layout under the data root (``raygap prepare ks`` writes it; docs/datasets.md)::

    my_train.txt, my_test.txt     rows ``clip,10,label`` (clip = ``<ytid>_<start>[_<end>]``)
    classes.txt                   optional: one class per line, fixes the order
    Audio/<clip>.wav              16 kHz mono (resampled on load if not)
    Image-01-FPS/<clip>/*.jpg     frames at 1 fps
    audio_npy/<clip>.npy          optional precomputed audio, e.g. the (1024, 128) fbank
                                  ``.npy`` files of OGM-GE's ``process_audio.py``

Classes: ``classes.txt`` when present, else the sorted unique labels of my_train.txt (sorted
numerically when every label is an integer, as in the OGM-GE lists, whose labels are 0..30).
Validation is carved 9:1 from my_train.txt (stratified, ``data.split_seed``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from ..registry import DATASETS
from .base import DataCommon, DataLayout, DatasetBundle, carve_validation
from .loader import assemble, class_list, clip_id, data_root, dedupe, label_index, read_rows, require_file
from .media import NPY_DIR, Clip, ks_front_end

NAME = "ks"
TRAIN_LIST, TEST_LIST = "my_train.txt", "my_test.txt"
AUDIO_DIR, FRAMES_DIR = "Audio", "Image-01-FPS"
PAPER_COUNTS = {"train": 14739, "test": 2545, "total": 17284}


@dataclass
class KsParams:
    """ks' own keys of the ``data`` section."""
    num_frames: int = field(default=3, metadata={
        "range": (1, 64), "help": "frames per clip, sampled evenly"})
    image_size: int = field(default=224, metadata={
        "range": (8, 1024), "help": "frame side after the crop / resize"})
    verify_media: bool = field(default=False, metadata={
        "help": "at build time also read every WAV header and decode the frames that will be used "
                "(slower; catches corrupt files before training, not only missing ones)"})


def read_ks_list(path: Path) -> list[tuple[str, str, int]]:
    """Rows (clip, label, line number) of a ``clip,10,label`` list. The label is everything
    after the second comma, so class names containing commas survive."""
    rows = []
    for line, text in read_rows(path):
        fields = text.split(",", 2)
        if len(fields) != 3 or not fields[0].strip() or not fields[2].strip():
            raise DataError(f"{path}:{line}: expected 'clip,10,label', got {text!r}")
        rows.append((clip_id(fields[0].strip(), path, line), fields[2].strip(), line))
    return rows


@DATASETS.register(NAME, params=KsParams, layout=lambda p: DataLayout(["audio", "visual"]),
                   split_lists=(TRAIN_LIST, TEST_LIST), split_optional=("classes.txt",))
def build(params: KsParams, common: DataCommon) -> DatasetBundle:
    """Kinetics-Sounds: audio (1, 1024, 128) Kaldi fbank (time, mel), visual (num_frames, 3, S, S)."""
    root = data_root(NAME, common)
    rows, paths, duplicates = {}, {}, {}
    for split, fname in (("train", TRAIN_LIST), ("test", TEST_LIST)):
        paths[split] = require_file(root / fname, NAME, root)
        rows[split], duplicates[fname] = dedupe(read_ks_list(paths[split]), key=lambda r: r[0])
    class_names, class_source = class_list(root, [label for _, label, _ in rows["train"]])
    classes = {c: i for i, c in enumerate(class_names)}
    lists = {s: [(clip, label_index(label, classes, paths[s], line)) for clip, label, line in r]
             for s, r in rows.items()}

    train = lists["train"]
    tr, va = carve_validation([y for _, y in train], common.val_fraction, common.split_seed)
    chosen = {"train": [train[i] for i in tr], "val": [train[i] for i in va], "test": lists["test"]}
    splits = {
        split: [Clip(c, y, root / AUDIO_DIR / f"{c}.wav", root / NPY_DIR / f"{c}.npy", root / FRAMES_DIR / c)
                for c, y in split_rows]
        for split, split_rows in chosen.items()
    }
    info = {
        "split_rule": (f"my_test.txt; val carved {common.val_fraction:g} of my_train.txt "
                       f"(stratified, seed {common.split_seed})"),
        "list_counts": {TRAIN_LIST: len(lists["train"]), TEST_LIST: len(lists["test"])},
        "duplicates": duplicates,
        "paper_counts": PAPER_COUNTS,
        "class_source": class_source,
    }
    return assemble(NAME, root, splits, class_names, ks_front_end(), params.num_frames,
                    params.image_size, common, params.verify_media, info)
