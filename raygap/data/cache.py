"""The tensor cache (``data.pipeline: cache``): a file-backed dataset decoded once.

``raygap cache DATASET`` (and ``raygap prepare``, at the end) decodes every clip the
dataset's split lists name -- the audio through the dataset's front-end, the frames the
loader would pick -- and writes them as memory-mappable ``.npy`` files::

    <root>/raygap-cache/<front-end><rate>-frames<T>-side<S>/
        manifest.json      format version, parameters, array shapes, source digest (written last)
        audio.npy          (N, F, T) float16: the front-end's output
        visual.npy         (N, T, 3, S, S) uint8: the picked frames squashed to S x S
        frame_hw.npy       (N, T, 2) int32: each frame's original height and width
        labels.npy         (N,) int64
        sources.npy        (N,) fingerprint of each clip's list entry and media (see below)
        ids.txt            clip ids, one per line, row order

One cache holds every clip of every list (train, val, test): validation is carved from
train by ``data.split_seed``, so the splits are row views chosen at load, exactly as the
per-item path chooses its clips (same lists, same carving, same bad-media screening).

A clip's *fingerprint* hashes its id, label, and the name, size and modification time of
its audio file (or precomputed ``.npy``) and of each frame it uses. At load every clip of
the chosen splits is fingerprinted again (a few ``stat`` calls each) and compared with the
cache: a list or a media file changed since the build, a truncated array, a manifest from
another format or with other parameters each give one line naming the file and the
``raygap cache`` command that rebuilds it. (Copying a dataset without keeping modification
times -- ``cp`` without ``-p`` -- makes the cache stale: copy with ``rsync -a`` / ``cp -a``.)

Every trial on a machine opens the same files read-only through ``np.load(mmap_mode="r")``:
the page cache holds one copy for all of them. On a GPU, a split that fits the trial's
preload budget (``data.preload``; :mod:`raygap.data.preload` says how the budget is
computed: the trial's share of the device's memory less its CUDA context, its measured
training step and a headroom) is uploaded once per trial, in chunks of
:data:`GATHER_CHUNK_BYTES` read in file order and copied straight into the device tensor
(the host never holds the whole split), and every batch is gathered, cropped, flipped and
normalised there (:mod:`raygap.data.augment`); otherwise each batch is gathered from the
mapped files on the host into one array and copied.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..removal import remove
from . import augment, preload as _preload
from .media import AudioFrontEnd, Clip, load_audio, open_image, sample_frame_indices

FORMAT_VERSION = 1
CACHE_DIRNAME = "raygap-cache"
MANIFEST = "manifest.json"
ARRAYS = ("audio", "visual", "frame_hw", "labels", "sources")
PRELOAD_CHOICES = ("auto", "on", "off")
INLINE_BELOW = 256               # clips: fewer are decoded in this process (a pool takes seconds to start)
# rows read from the mapped files at a time when gathering a split: large enough that the
# per-chunk work (one fancy index, one copy) is negligible, small next to a split worth uploading
GATHER_CHUNK_BYTES = 64 * 2**20


def cache_dir(root: Path, front_end: AudioFrontEnd, num_frames: int, side: int) -> Path:
    return Path(root) / CACHE_DIRNAME / f"{front_end.name}{front_end.sample_rate}-frames{int(num_frames)}-side{int(side)}"


def rebuild_command(dataset: str, root: Path, num_frames: int, side: int, options: dict | None = None) -> str:
    opts = "".join(f" --option {k}={v}" for k, v in (options or {}).items())
    return f"raygap cache {dataset} --root {root} --frames {int(num_frames)} --side {int(side)}{opts}"


def picked_frames(clip: Clip, num_frames: int) -> list[str]:
    names = clip.frame_names
    return [names[k] for k in sample_frame_indices(len(names), num_frames)]


def fingerprint(clip: Clip, num_frames: int) -> bytes:
    """8 bytes that change when the clip's label, its audio or one of its used frames does."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{clip.id}\0{int(clip.label)}\0".encode())
    audio = clip.audio_npy if clip.audio_npy.is_file() else clip.audio
    for p in [audio, *(clip.frames / n for n in picked_frames(clip, num_frames))]:
        try:
            st = p.stat()
            h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        except OSError:
            h.update(f"{p.name}\0missing\0".encode())
    return h.digest()


def _fp_int(fp: bytes) -> np.int64:
    return np.frombuffer(fp, dtype="<i8")[0]


# ----------------------------------------------------------------------------- building
def _decode_rows(job) -> int:
    """Worker: decode clips ``rows`` into the (already allocated) mapped arrays."""
    folder, front_end, clips, start, num_frames, side = job
    torch.set_num_threads(1)
    from PIL import Image

    audio = np.load(folder / "audio.npy", mmap_mode="r+")
    visual = np.load(folder / "visual.npy", mmap_mode="r+")
    hw = np.load(folder / "frame_hw.npy", mmap_mode="r+")
    for k, clip in enumerate(clips):
        r = start + k
        audio[r] = load_audio(clip.audio, clip.audio_npy, front_end)[0].numpy().astype(np.float16)
        for t, name in enumerate(picked_frames(clip, num_frames)):
            img = open_image(clip.frames / name)
            hw[r, t] = (img.height, img.width)
            visual[r, t] = np.asarray(img.resize((side, side), Image.BILINEAR), dtype=np.uint8).transpose(2, 0, 1)
    for a in (audio, visual, hw):
        a.flush()
    return len(clips)


def build(dataset: str, root: Path, clips: Sequence[Clip], front_end: AudioFrontEnd, num_frames: int,
          side: int, *, workers: int = 1, bad_media: int = 0, log: Callable[[str], None] = print) -> Path:
    """Decode ``clips`` (screened: frame names filled) into a new cache folder, replacing an
    old one only once the new one is complete."""
    final = cache_dir(root, front_end, num_frames, side)
    tmp = final.with_name(final.name + f".building-{os.getpid()}")
    remove(tmp, final.parent)
    tmp.mkdir(parents=True)
    clips = sorted(clips, key=lambda c: c.id)
    n, T = len(clips), int(num_frames)
    shapes = {"audio": ((n, *front_end.shape), np.float16), "visual": ((n, T, 3, side, side), np.uint8),
              "frame_hw": ((n, T, 2), np.int32)}
    for name, (shape, dtype) in shapes.items():
        np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=shape).flush()
    t0 = time.perf_counter()
    chunk = max(1, min(256, -(-n // max(1, workers * 4))))
    jobs = [(tmp, front_end, clips[s:s + chunk], s, T, int(side)) for s in range(0, n, chunk)]
    done = 0
    if workers <= 1 or n < INLINE_BELOW:      # small layouts: starting decoding processes costs more
        for j in jobs:
            done += _decode_rows(j)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            for k in pool.map(_decode_rows, jobs):
                done += k
                if done % (chunk * 8) < chunk or done == n:
                    log(f"{dataset} cache: {done}/{n} clips ({time.perf_counter() - t0:.0f} s)")
    np.save(tmp / "labels.npy", np.array([c.label for c in clips], dtype=np.int64))
    np.save(tmp / "sources.npy", np.array([_fp_int(fingerprint(c, T)) for c in clips], dtype=np.int64))
    (tmp / "ids.txt").write_text("".join(f"{c.id}\n" for c in clips), encoding="utf-8")
    sources = np.load(tmp / "sources.npy")
    from ..version import __version__

    manifest = {
        "format": FORMAT_VERSION, "dataset": dataset, "raygap": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "build_seconds": round(time.perf_counter() - t0, 1),
        "params": _params(front_end, T, side),
        "clips": n, "bad_media_skipped": int(bad_media),
        "source_digest": hashlib.sha256(sources.tobytes()).hexdigest(),
        "arrays": {a: _array_entry(tmp / f"{a}.npy") for a in ARRAYS},
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    if final.exists():
        old = final.with_name(final.name + f".old-{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        remove(old, final.parent, ignore_errors=True)
    else:
        tmp.rename(final)
    return final


def _params(front_end: AudioFrontEnd, num_frames: int, side: int) -> dict:
    return {"num_frames": int(num_frames), "side": int(side), "front_end": front_end.name,
            "sample_rate": int(front_end.sample_rate), "audio_shape": list(front_end.shape),
            "audio_dtype": "float16", "frames": f"picked as the loader picks them, squashed to {side}x{side} "
                                                 "(PIL bilinear), uint8, original sizes kept"}


def _array_entry(path: Path) -> dict:
    a = np.load(path, mmap_mode="r")
    return {"shape": list(a.shape), "dtype": str(a.dtype), "bytes": path.stat().st_size}


# ----------------------------------------------------------------------------- opening
class Cache:
    """An opened, checked cache: the mapped arrays and a clip-id -> row index."""

    def __init__(self, folder: Path, manifest: dict, arrays: dict[str, np.ndarray], ids: list[str]):
        self.folder, self.manifest, self.arrays, self.ids = folder, manifest, arrays, ids
        self.row = {cid: r for r, cid in enumerate(ids)}


def open_cache(dataset: str, root: Path, front_end: AudioFrontEnd, num_frames: int, side: int,
               options: dict | None = None) -> Cache:
    folder = cache_dir(root, front_end, num_frames, side)
    fix = rebuild_command(dataset, root, num_frames, side, options)

    def bad(path: Path, problem: str) -> DataError:
        return DataError(f"{path}: {problem}; rebuild it with `{fix}`")

    mpath = folder / MANIFEST
    if not folder.is_dir():
        others = sorted(p.name for p in folder.parent.glob("*") if p.is_dir()) if folder.parent.is_dir() else []
        seen = f" (found: {', '.join(others)})" if others else ""
        raise DataError(f"{folder}: no {dataset} tensor cache for these settings{seen}; "
                        f"build it with `{fix}` or set data.pipeline=files")
    if not mpath.is_file():
        raise bad(mpath, "missing: the cache build did not finish")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise bad(mpath, f"unreadable ({e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("arrays", {}), dict):
        raise bad(mpath, f"not a raygap cache manifest (a JSON {type(manifest).__name__}, not an object of arrays)")
    if manifest.get("format") != FORMAT_VERSION:
        raise bad(mpath, f"cache format {manifest.get('format')!r}, this raygap reads format {FORMAT_VERSION}")
    want = _params(front_end, num_frames, side)
    if manifest.get("params") != want:
        diff = next(k for k in want if (manifest.get("params") or {}).get(k) != want[k])
        raise bad(mpath, f"built with {diff}={(manifest.get('params') or {}).get(diff)!r}, "
                         f"these settings need {want[diff]!r}")
    arrays = {}
    for a in ARRAYS:
        path = folder / f"{a}.npy"
        entry = manifest.get("arrays", {}).get(a, {})
        if not path.is_file():
            raise bad(path, "missing")
        size = path.stat().st_size
        if size != entry.get("bytes"):
            raise bad(path, f"truncated or changed: {size} bytes, the manifest says {entry.get('bytes')}")
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise bad(path, f"unreadable ({e})") from None
        if list(arr.shape) != entry.get("shape") or str(arr.dtype) != entry.get("dtype"):
            raise bad(path, f"holds {arr.dtype}{list(arr.shape)}, the manifest says {entry.get('dtype')}{entry.get('shape')}")
        arrays[a] = arr
    ids_path = folder / "ids.txt"
    ids = ids_path.read_text(encoding="utf-8").split() if ids_path.is_file() else []
    if len(ids) != manifest.get("clips"):
        raise bad(ids_path, f"{len(ids)} clip ids, the manifest says {manifest.get('clips')}")
    return Cache(folder, manifest, arrays, ids)


def rows_for(cache: Cache, clips: Sequence[Clip], num_frames: int, fix: str) -> np.ndarray:
    """The cache rows of ``clips`` (screened), checking each against its fingerprint."""
    rows = np.empty(len(clips), dtype=np.int64)
    sources, labels = cache.arrays["sources"], cache.arrays["labels"]
    for k, clip in enumerate(clips):
        r = cache.row.get(clip.id)
        if r is None:
            raise DataError(f"{cache.folder}: stale: clip {clip.id} is not in the cache (listed or repaired since "
                            f"it was built); rebuild it with `{fix}`")
        if int(labels[r]) != int(clip.label) or sources[r] != _fp_int(fingerprint(clip, num_frames)):
            what = "its label" if int(labels[r]) != int(clip.label) else f"its media ({clip.audio.parent.name}/, {clip.frames})"
            raise DataError(f"{cache.folder}: stale: clip {clip.id} changed since the cache was built ({what}); "
                            f"rebuild it with `{fix}`")
        rows[k] = r
    return rows


# ----------------------------------------------------------------------------- the split
class CacheSplit:
    """A split read from the cache. ``batch(idx)`` returns ``{"audio": (B, 1, F, T) float,
    "visual": (B, T, 3, S, S) float, "label", "index"}`` on the split's device, with the
    per-item path's train augmentation when ``train``. ``place(device)`` uploads the split's
    rows there once when ``preload`` allows (see the module docstring)."""

    def __init__(self, cache: Cache, rows: np.ndarray, clips: Sequence[Clip], image_size: int, train: bool,
                 preload: str = "auto", skipped: Sequence[str] = (), extras: dict | None = None):
        self.cache, self.rows = cache, np.asarray(rows, dtype=np.int64)
        self.ids = [c.id for c in clips]
        self.label_list = [int(c.label) for c in clips]
        self.image_size, self.train, self.preload = int(image_size), bool(train), preload
        self.skipped = list(skipped)
        self.extras = dict(extras or {})
        self.hw = torch.from_numpy(np.ascontiguousarray(cache.arrays["frame_hw"][np.sort(self.rows)]))
        self.hw = self.hw[torch.as_tensor(np.argsort(np.argsort(self.rows)))]    # back to split order
        self.device = torch.device("cpu")
        self.resident: dict[str, torch.Tensor] | None = None
        self._labels = torch.as_tensor(self.label_list, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> torch.Tensor:
        return self._labels

    def nbytes(self) -> int:
        return self.row_bytes() * len(self.rows)

    def row_bytes(self) -> int:
        return sum(int(np.prod(self.cache.arrays[a].shape[1:])) * self.cache.arrays[a].itemsize
                   for a in ("audio", "visual"))

    def place(self, device: torch.device, resident: bool | None = None) -> str:
        """Where batches are built: ``resident`` (uploaded once) or ``streamed`` (gathered
        from the mapped files per batch and copied to ``device``). ``resident`` is the trial's
        decision (:func:`raygap.data.preload.place_splits`); None decides for a process that
        trains nothing more there (:func:`~raygap.data.preload.budget_now`); on the CPU, where
        the mapped files already are, only an explicit ``resident=True`` makes a copy."""
        self.device = device
        self.resident = None                           # (an earlier upload is freed before a new one)
        if self.preload == "off" or (device.type == "cpu" and not resident):
            return "streamed"
        if resident is None:
            b = _preload.budget_now(device)
            resident = _preload.assign({self.kind(): self.nbytes()}, b.budget, self.preload, b.explain())[self.kind()]
        if not resident:
            return "streamed"
        self.resident = self._upload(device)
        return "resident"

    def kind(self) -> str:
        return "train" if self.train else "evaluation"

    def _chunks(self, rows: np.ndarray):
        """(positions, rows) in file order, at most GATHER_CHUNK_BYTES of rows each."""
        order = np.argsort(rows, kind="stable")        # read the mapped files forwards
        step = max(1, GATHER_CHUNK_BYTES // max(1, self.row_bytes()))
        for s in range(0, len(order), step):
            pos = order[s:s + step]
            yield pos, rows[pos]

    def _upload(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The split's arrays on ``device``: each chunk read from the mapped files is copied
        into its rows of a tensor allocated there, so the host holds one chunk at a time."""
        out = {}
        for name in ("audio", "visual"):
            arr = self.cache.arrays[name]
            dst = torch.empty((len(self.rows), *arr.shape[1:]), dtype=torch.from_numpy(np.empty(0, arr.dtype)).dtype,
                              device=device)
            for pos, rows in self._chunks(self.rows):
                dst.index_copy_(0, torch.from_numpy(pos).to(device), torch.from_numpy(arr[rows]).to(device))
            out[name] = dst
        out["label"] = self._labels.to(device)
        return out

    def _gather(self, positions: np.ndarray) -> dict[str, torch.Tensor]:
        """The rows at ``positions`` in one host array per modality, filled chunk by chunk in
        file order (one copy of the rows, plus one chunk)."""
        rows = self.rows[positions]
        out = {}
        for name in ("audio", "visual"):
            arr = self.cache.arrays[name]
            block = np.empty((len(rows), *arr.shape[1:]), dtype=arr.dtype)
            for pos, r in self._chunks(rows):
                block[pos] = arr[r]
            out[name] = torch.from_numpy(block)
        return out

    def host_batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The raw (uint8 / fp16) batch gathered on the host: what a streamed batch costs the CPU."""
        return self._gather(idx.numpy())

    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(idx, dtype=torch.long)
        if self.resident is not None:
            d_idx = augment.to_device(idx, self.device)
            raw = {k: v.index_select(0, d_idx) for k, v in self.resident.items() if k != "label"}
            label = self.resident["label"].index_select(0, d_idx)
        else:
            raw = self.host_batch(idx)
            raw = {k: augment.to_device(v, self.device) for k, v in raw.items()}
            label = augment.to_device(self._labels[idx], self.device)
            d_idx = idx
        visual = augment.frames_batch(raw["visual"], self.hw[idx], self.image_size, self.train, generator)
        return {"audio": raw["audio"].float().unsqueeze(1), "visual": visual, "label": label, "index": d_idx}

    def __getitem__(self, i: int) -> dict:
        b = self.batch(torch.tensor([int(i)]))
        item = {k: v[0] for k, v in b.items() if k not in ("label", "index")}
        item["label"] = self.label_list[i]
        item["index"] = int(i)
        return item


# ----------------------------------------------------------------------------- the verb
def build_dataset(dataset: str, params, root: str | None, *, frames: Sequence[int] = (), side: int = 0,
                  workers: int = 1, log: Callable[[str], None] = print) -> list[Path]:
    """``raygap cache``: screen ``dataset``'s layout as a trial would (bad media skipped and
    counted) and build one cache per frame count in ``frames`` (default: the dataset's
    ``num_frames``) at ``side`` (0: its ``image_size``)."""
    import dataclasses

    from ..registry import DATASETS
    from .base import DataCommon

    entry = DATASETS.get(dataset)
    out = []
    for nf in (list(frames) or [params.num_frames]):
        p = dataclasses.replace(params, num_frames=int(nf))
        bundle = entry.obj(p, DataCommon(root=root, on_bad_media="skip"))
        clips = {c.id: c for split in (bundle.train, bundle.val, bundle.test) for c in split.clips}
        s = int(side or p.image_size)
        t0 = time.perf_counter()
        folder = build(dataset, Path(bundle.info["root"]), list(clips.values()), bundle.train.front_end, int(nf), s,
                       workers=workers, bad_media=bundle.info["skipped_total"], log=log)
        size = sum(f.stat().st_size for f in folder.iterdir())
        skipped = bundle.info["skipped_total"]
        log(f"{dataset} cache: {len(clips)} clips, {size / 1e9:.2f} GB in {folder} ({time.perf_counter() - t0:.0f} s)"
            + (f"; {skipped} clips with bad media left out (a trial with data.on_bad_media=error names them)"
               if skipped else ""))
        out.append(folder)
    return out
