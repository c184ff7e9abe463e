"""The loader plumbing the file-backed datasets (``cremad``, ``ave``, ``ks``) share, from their
split lists to the :class:`~raygap.data.base.DatasetBundle`:

* the data root (:func:`data_root`: ``data.root``, else ``$RAYGAP_DATA/<name>``) and split
  files (:func:`require_file`, with the ``raygap prepare`` command that builds them);
* split and class lists (:func:`read_rows`, :func:`class_list`: ``<root>/classes.txt`` or the
  sorted labels of the train list, :func:`label_index`, :func:`dedupe`);
* the media scan under the bad-media policy (:func:`check_clip`, :func:`screen`);
* :func:`assemble`: the kept clips in a :class:`~raygap.data.media.ClipSplit` per split
  (``data.pipeline: files``) or a :class:`~raygap.data.cache.CacheSplit` (``cache``), with
  counts and provenance.

A dataset reads its lists into :class:`~raygap.data.media.Clip` items and calls
:func:`assemble` (``docs/contributing.md``); decoding a clip's media is :mod:`raygap.data.media`.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..lazy import lazy
from .base import ENV_ROOT, DataCommon, DatasetBundle, ModalitySpec, root_of
from .media import (
    WAV_HEADER_BYTES,
    AudioFrontEnd,
    Clip,
    ClipSplit,
    list_frames,
    open_image,
    sample_frame_indices,
    unreadable_audio,
)

sf = lazy("soundfile")

CLASSES_FILE = "classes.txt"   # optional <root>/classes.txt: one class per line, fixes the order
BAD_MEDIA_POLICIES = ("error", "skip")


# ----------------------------------------------------------------------------- roots, lists, classes
def prepare_hint(name: str, root: Path | str) -> str:
    return (f"build the layout with `raygap prepare {name} RAW_DIR {root}`; "
            "docs/datasets.md describes it")


def data_root(name: str, common: DataCommon) -> Path:
    """``common.root``, else ``$RAYGAP_DATA/<name>`` (:func:`~raygap.data.base.root_of`); it must exist."""
    root = root_of(name, common)
    if root is None:
        raise DataError(f"{name}: no data root: set data.root or the {ENV_ROOT} environment variable "
                        f"(read as ${ENV_ROOT}/{name}); {prepare_hint(name, 'OUT_DIR')}")
    if not root.is_dir():
        raise DataError(f"{root}: {name} data root does not exist; {prepare_hint(name, root)}")
    return root


def require_file(path: Path, name: str, root: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: {name} split file missing; {prepare_hint(name, root)}")
    return path


def read_rows(path: Path) -> list[tuple[int, str]]:
    """Non-empty lines of a text list as (line number, stripped text); tolerates a BOM."""
    with open(path, encoding="utf-8-sig") as f:
        return [(n, s) for n, line in enumerate(f, 1) if (s := line.strip())]


CLIP_ID_MAX_BYTES = 200


def clip_id(text: str, path: Path, line: int) -> str:
    """A clip id from line ``line`` of the list ``path``, checked to be one plain file name: the
    frames folder and the audio file are named by it, so ``..``, ``.`` or ``a/b`` would point outside
    the layout (and ``prepare`` would replace what is there). Anything else is one DataError line."""
    problem = None
    if text in (".", ".."):
        problem = "is a relative folder name"
    elif "/" in text or "\\" in text:
        problem = "holds a path separator"
    elif any(ord(c) < 32 or ord(c) == 127 for c in text):
        problem = "holds a control character"
    elif len(text.encode("utf-8")) > CLIP_ID_MAX_BYTES:
        problem = f"is longer than {CLIP_ID_MAX_BYTES} bytes"
    if problem:
        raise DataError(f"{path}:{line}: clip id {text!r} {problem}; a clip id must be one file name "
                        "(nothing was written)")
    return text


def sort_labels(labels: Iterable[str]) -> list[str]:
    """Unique labels sorted; numerically when every label is an integer (KS lists use 0..30)."""
    uniq = set(labels)
    if uniq and all(re.fullmatch(r"-?\d+", u) for u in uniq):
        return sorted(uniq, key=int)
    return sorted(uniq)


def class_list(root: Path, train_labels: Iterable[str]) -> tuple[list[str], str]:
    """The class order: ``<root>/classes.txt`` when present (one class per line), else the
    sorted unique labels of the train split list. Returns (names, where they came from)."""
    path = root / CLASSES_FILE
    if path.is_file():
        names = [s for _, s in read_rows(path)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DataError(f"{path}: class {dupes[0]!r} listed twice")
        if not names:
            raise DataError(f"{path}: no classes listed")
        return names, str(path)
    return sort_labels(train_labels), "sorted unique labels of the train split list"


def label_index(label: str, classes: dict[str, int], path: Path, line: int) -> int:
    try:
        return classes[label]
    except KeyError:
        raise DataError(f"{path}:{line}: label {label!r} is not a known class "
                        f"({len(classes)} classes; list them in {CLASSES_FILE} to fix the class list)") from None


def dedupe(rows: list, key: Callable) -> tuple[list, int]:
    """Drop rows whose key was seen before (first one kept); returns (rows, number dropped)."""
    seen, out = set(), []
    for r in rows:
        k = key(r)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out, len(rows) - len(out)


# ----------------------------------------------------------------------------- bad-media policy
def check_clip(clip: Clip, num_frames: int, front_end: AudioFrontEnd, verify: bool) -> str | None:
    """Existence scan of one clip (cheap: a few stats and one directory listing); with
    ``verify`` also read the audio header and decode the frames that will be used.
    Returns a problem naming the file, or None. Fills ``clip.frame_names``."""
    if clip.audio_npy.is_file():
        if verify:
            try:
                arr = np.load(clip.audio_npy, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                return f"{clip.audio_npy}: cannot read precomputed audio ({e})"
            shape = tuple(arr.shape[1:]) if arr.ndim == 3 and arr.shape[0] == 1 else tuple(arr.shape)
            if arr.ndim != 1 and shape != tuple(front_end.shape):
                return f"{clip.audio_npy}: precomputed audio has shape {tuple(arr.shape)}, expected {front_end.shape}"
    elif clip.audio.is_file():
        if clip.audio.stat().st_size <= WAV_HEADER_BYTES:
            return f"{clip.audio}: audio file is empty (header only)"
        if verify:
            try:
                if sf.info(str(clip.audio)).frames == 0:
                    return f"{clip.audio}: audio file has no samples"
            except (RuntimeError, OSError, ValueError, TypeError) as e:
                return unreadable_audio(clip.audio, e)
    else:
        return f"{clip.audio}: audio file missing"
    if not clip.frames.is_dir():
        return f"{clip.frames}: frame folder missing"
    names = list_frames(clip.frames)
    if not names:
        return f"{clip.frames}: frame folder has no images"
    clip.frame_names = tuple(names)
    if verify:
        for k in sorted(set(sample_frame_indices(len(names), num_frames))):
            try:
                open_image(clip.frames / names[k])
            except DataError as e:
                return str(e)
    return None


def screen(splits: dict[str, list[Clip]], policy: str, num_frames: int, front_end: AudioFrontEnd,
           verify: bool) -> tuple[dict[str, list[Clip]], dict[str, list[str]]]:
    """Scan every clip's media before training. ``policy == "error"``: raise a DataError
    naming the first bad file (and how many more there are); ``"skip"``: drop bad clips.
    Returns (kept clips, skipped ids) per split."""
    if policy not in BAD_MEDIA_POLICIES:
        raise ConfigError(f"{policy!r} is not one of {', '.join(BAD_MEDIA_POLICIES)}", key="data.on_bad_media")
    kept: dict[str, list[Clip]] = {}
    skipped: dict[str, list[str]] = {}
    problems: list[tuple[str, str, str]] = []
    for split, clips in splits.items():
        kept[split], skipped[split] = [], []
        for clip in clips:
            problem = check_clip(clip, num_frames, front_end, verify)
            if problem is None:
                kept[split].append(clip)
            else:
                skipped[split].append(clip.id)
                problems.append((split, clip.id, problem))
    if problems and policy == "error":
        split, cid, problem = problems[0]
        more = f"; {len(problems) - 1} more clips have bad media" if len(problems) > 1 else ""
        raise DataError(f"{problem} (clip {cid}, {split} split{more}; "
                        "set data.on_bad_media=skip to drop such clips)")
    return kept, skipped


# ----------------------------------------------------------------------------- the bundle
def assemble(name: str, root: Path, splits: dict[str, list[Clip]], class_names: list[str],
             front_end: AudioFrontEnd, num_frames: int, image_size: int, common: DataCommon,
             verify: bool, info: dict, extras: Callable[[list[Clip]], dict[str, np.ndarray]] | None = None,
             cache_options: dict | None = None) -> DatasetBundle:
    """Screen the media of ``splits`` (train / val / test clip lists), wrap them in
    :class:`ClipSplit` (``data.pipeline: files``) or :class:`~raygap.data.cache.CacheSplit`
    (``cache``: the same clips, read from the tensor cache) and return the bundle with counts
    and provenance in ``info``. ``cache_options`` are the dataset options a rebuild command
    must repeat (they change the cached audio)."""
    ids = {s: {c.id for c in clips} for s, clips in splits.items()}
    shared = {f"{a}&{b}": len(ids[a] & ids[b]) for a, b in (("train", "val"), ("train", "test"), ("val", "test"))}
    kept, skipped = screen(splits, common.on_bad_media, num_frames, front_end, verify)
    out = {}
    if common.pipeline == "cache":
        from . import cache as tc       # on use: the cache imports torch, which validating a config must not

        side = int(common.cache_side or image_size)
        store = tc.open_cache(name, root, front_end, num_frames, side, cache_options)
        fix = tc.rebuild_command(name, root, num_frames, side, cache_options)
        for split in ("train", "val", "test"):
            clips = kept[split]
            out[split] = tc.CacheSplit(store, tc.rows_for(store, clips, num_frames, fix), clips, image_size,
                                       train=(split == "train" and bool(common.train_augment)),
                                       preload=common.preload, skipped=skipped[split],
                                       extras=extras(clips) if extras else None)
        info = {**info, "cache": str(store.folder), "cache_built": store.manifest.get("created")}
    else:
        for split in ("train", "val", "test"):
            clips = kept[split]
            out[split] = ClipSplit(clips, front_end, num_frames, image_size,
                                   train=(split == "train" and bool(common.train_augment)),
                                   skipped=skipped[split], extras=extras(clips) if extras else None)
    num_classes = len(class_names)
    info = {
        "root": str(root),
        **info,
        "counts": {s: len(sp) for s, sp in out.items()},
        "class_counts": {s: np.bincount(np.asarray(sp.label_list, dtype=np.int64),
                                        minlength=num_classes).tolist() for s, sp in out.items()},
        "shared_ids": shared,        # clips listed in two splits (0 everywhere for a clean split)
        "skipped": {s: len(v) for s, v in skipped.items()},
        "skipped_total": sum(len(v) for v in skipped.values()),
        "on_bad_media": common.on_bad_media,
        "precomputed_audio": sum(c.audio_npy.is_file() for clips in kept.values() for c in clips),
        "pipeline": common.pipeline,
        "audio": front_end.description,
        "visual": {"frames_per_clip": int(num_frames), "image_size": int(image_size),
                   "train": ("RandomResizedCrop + horizontal flip" if common.train_augment else "Resize")
                   + ", ImageNet mean/std",
                   "eval": "Resize((size, size)), ImageNet mean/std"},
    }
    modalities = [ModalitySpec("audio", "spectrogram", (1, *front_end.shape)),
                  ModalitySpec("visual", "frames", (int(num_frames), 3, int(image_size), int(image_size)))]
    return DatasetBundle(name=name, modalities=modalities, num_classes=num_classes,
                         class_names=list(class_names), train=out["train"], val=out["val"],
                         test=out["test"], info=info)
