"""``ave``: the Audio-Visual Event dataset (28 event classes), read as the field's official code
reads it.

Layout under the data root (``raygap prepare ave`` writes it; docs/datasets.md)::

    trainSet.txt, valSet.txt, testSet.txt   rows ``Class&vid&quality&start&end``
    classes.txt                             optional: one class per line, fixes the order
    Audio/<vid>.wav                         the whole 10 s clip (resampled to 16 kHz on load)
    Image-01-FPS-SE/<vid>/*.jpg             frames at 1 fps within the event segment
    audio_npy/<vid>.npy                     optional precomputed audio (replaces the WAV)

AVE ships its own validation split, used as is. Classes: ``classes.txt`` when present, else
the sorted unique classes of trainSet.txt.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ..errors import DataError
from ..registry import DATASETS
from .base import DataCommon, DataLayout, DatasetBundle
from .loader import assemble, class_list, clip_id, data_root, dedupe, label_index, read_rows, require_file
from .media import AVE_RATE, NPY_DIR, Clip, ave_front_end

NAME = "ave"
LISTS = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
ANNOTATIONS = "Annotations.txt"
AUDIO_DIR, FRAMES_DIR = "Audio", "Image-01-FPS-SE"
PAPER_COUNTS = {"train": 3312, "test": 402, "total": 3716}


@dataclass
class AveParams:
    """ave's own keys of the ``data`` section."""
    num_frames: int = field(default=4, metadata={
        "range": (1, 64), "help": "frames per clip, sampled evenly from the event segment"})
    image_size: int = field(default=224, metadata={
        "range": (8, 1024), "help": "frame side after the crop / resize"})
    sample_rate: int = field(default=AVE_RATE, metadata={
        "choices": [16000, 22050],
        "help": "rate the WAV is resampled to before the 160000-sample spectrogram: 16000 (10 s, "
                "as documented) or 22050 (what OGM-GE's script effectively used: librosa's "
                "default rate, so its 160000 samples cover 7.26 s)"})
    verify_media: bool = field(default=False, metadata={
        "help": "at build time also read every WAV header and decode the frames that will be used "
                "(slower; catches corrupt files before training, not only missing ones)"})


class AveRow(NamedTuple):
    label: str
    vid: str
    quality: str
    start: int
    end: int
    line: int


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


def read_ave_list(path: Path) -> list[AveRow]:
    """Rows of an AVE list (``Class&vid&quality&start&end``); a header line such as
    ``Category&VideoID&Quality&StartTime&EndTime`` is skipped."""
    rows = []
    for line, text in read_rows(path):
        fields = [f.strip() for f in text.split("&")]
        if len(fields) != 5 or not fields[1]:
            raise DataError(f"{path}:{line}: expected 'Class&vid&quality&start&end', got {text!r}")
        label, vid, quality, start, end = fields
        if not (_is_int(start) and _is_int(end)):
            if not rows:          # header
                continue
            raise DataError(f"{path}:{line}: start / end must be whole seconds, got {start!r}, {end!r}")
        if int(end) <= int(start):
            raise DataError(f"{path}:{line}: event ends ({end}) before it starts ({start})")
        rows.append(AveRow(label, clip_id(vid, path, line), quality, int(start), int(end), line))
    return rows


@DATASETS.register(NAME, params=AveParams, layout=lambda p: DataLayout(["audio", "visual"]),
                   split_lists=tuple(LISTS.values()))
def build(params: AveParams, common: DataCommon) -> DatasetBundle:
    """AVE: audio (1, 257, 1004) z-scored log spectrogram, visual (num_frames, 3, S, S); 28 events."""
    root = data_root(NAME, common)
    rows, paths, duplicates = {}, {}, {}
    for split, fname in LISTS.items():
        paths[split] = require_file(root / fname, NAME, root)
        rows[split], duplicates[fname] = dedupe(read_ave_list(paths[split]), key=lambda r: r.vid)
    class_names, class_source = class_list(root, [r.label for r in rows["train"]])
    classes = {c: i for i, c in enumerate(class_names)}

    splits = {
        split: [Clip(r.vid, label_index(r.label, classes, paths[split], r.line),
                     root / AUDIO_DIR / f"{r.vid}.wav", root / NPY_DIR / f"{r.vid}.npy",
                     root / FRAMES_DIR / r.vid) for r in split_rows]
        for split, split_rows in rows.items()
    }
    info = {
        "split_rule": "the dataset's own trainSet.txt / valSet.txt / testSet.txt",
        "list_counts": {LISTS[s]: len(r) for s, r in rows.items()},
        "duplicates": duplicates,
        "paper_counts": PAPER_COUNTS,
        "class_source": class_source,
        "sample_rate": params.sample_rate,
    }
    return assemble(NAME, root, splits, class_names, ave_front_end(params.sample_rate), params.num_frames,
                    params.image_size, common, params.verify_media, info,
                    cache_options={"sample_rate": params.sample_rate})
