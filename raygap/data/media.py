"""What the file-backed datasets (``cremad``, ``ave``, ``ks``) share.

* **Audio** -- :func:`read_wav` (soundfile; a missing or corrupt file raises
  :class:`~raygap.errors.DataError` naming it), :func:`resample` (scipy's polyphase
  filter), :func:`fit_length` (tile / cut), and the three front-ends exactly as the
  field's official code computes them (numbers in ``docs/datasets.md``):

  ==========  ============================================================  =========
  front-end   computation                                                   output
  ==========  ============================================================  =========
  cremad      22050 Hz, tiled to 3 s, clipped to +-1, STFT n_fft 512 hop    257 x 188
              353 (Hann, centred, reflect padding), log(abs(X) + 1e-7)
  ave         16 kHz, tiled to 160000 samples (10 s), clipped to +-1,       257 x 1004
              scipy.signal.spectrogram nperseg 512 noverlap 353,
              log(S + 1e-7), z-scored per clip
  ks          16 kHz, mean removed, Kaldi fbank (128 mel bins, 25 ms        1024 x 128
              Hanning window, 10 ms shift), zero-padded / cut to 1024
              frames, (x + 4.503877) / (2 * 5.141276)
  ==========  ============================================================  =========

  A clip's precomputed audio, ``<root>/audio_npy/<clip>.npy``, replaces its WAV when it
  exists: a 2-D array (or 1 x F x T) is taken as the finished feature and must have the
  front-end's shape; a 1-D array is a waveform at the front-end's rate and goes through
  the front-end.
* **Visual** -- frame folders listed in *numeric* order (:func:`list_frames`; the
  official CREMA-D loader takes frames from an unsorted ``os.listdir``), T frames sampled
  evenly (:func:`sample_frame_indices`), the train / eval transforms
  (:func:`frame_transform`).
* **Loader plumbing** -- the data root (:func:`data_root`), split files
  (:func:`require_file`), class lists (:func:`class_list`), the media scan under the
  bad-media policy (:func:`screen`), :class:`ClipSplit` (the ``FileSplit`` the three
  loaders return) and :func:`assemble` (the ``DatasetBundle``).
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..lazy import lazy
from .base import DataCommon, DatasetBundle, FileSplit, ModalitySpec

sf = lazy("soundfile")
torch = lazy("torch")

# ----------------------------------------------------------------------------- constants
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
NPY_DIR = "audio_npy"          # <root>/audio_npy/<clip>.npy: precomputed audio
CLASSES_FILE = "classes.txt"   # optional <root>/classes.txt: one class per line, fixes the order
ENV_ROOT = "RAYGAP_DATA"
LFS_POINTER = b"version https://git-lfs"   # how a git-lfs pointer file starts
WAV_HEADER_BYTES = 44          # a WAV of this size or less holds no samples (CREMA-D ships one)
BAD_MEDIA_POLICIES = ("error", "skip")

LOG_EPS = 1e-7                 # log(|X| + eps) in the CREMA-D and AVE front-ends
ZSCORE_EPS = 1e-9              # (S - mean) / (std + eps) in the AVE front-end

CREMAD_RATE, CREMAD_SAMPLES = 22050, 3 * 22050
CREMAD_N_FFT, CREMAD_HOP = 512, 353

AVE_RATE, AVE_SAMPLES = 16000, 160000
AVE_NPERSEG, AVE_NOVERLAP = 512, 353

KS_RATE, KS_FRAMES, KS_MEL_BINS = 16000, 1024, 128
KS_SHIFT_MS = 10.0
KS_NORM_MEAN, KS_NORM_STD = -4.503877, 5.141276


# ----------------------------------------------------------------------------- audio
def resample(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling (``scipy.signal.resample_poly``) from ``rate_in`` to ``rate_out``."""
    if rate_in == rate_out:
        return wave
    from scipy.signal import (
        resample_poly,  # imported lazily: scipy.signal takes seconds to import
    )

    g = math.gcd(int(rate_in), int(rate_out))
    return resample_poly(wave, int(rate_out) // g, int(rate_in) // g).astype(np.float32)


def unreadable_audio(path: Path, error: Exception) -> str:
    """The problem with an audio file soundfile cannot read, naming the file; recognises the
    git-lfs pointer files that a clone of the CREMA-D repository without git-lfs contains."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(LFS_POINTER))
    except OSError:
        head = b""
    if head == LFS_POINTER:
        return f"{path}: a git-lfs pointer, not audio (fetch the media with `git lfs pull`)"
    return f"{path}: cannot read audio ({error})"


def read_wav(path: str | os.PathLike, sample_rate: int | None = None) -> np.ndarray:
    """A mono float32 waveform (channels averaged), resampled to ``sample_rate`` if given."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: audio file missing")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError, ValueError, TypeError) as e:   # sf.LibsndfileError is a RuntimeError
        raise DataError(unreadable_audio(path, e)) from None
    if data.shape[0] == 0:
        raise DataError(f"{path}: audio file has no samples")
    wave = data.mean(axis=1, dtype=np.float32)
    if sample_rate is not None and rate != sample_rate:
        wave = resample(wave, rate, sample_rate)
    return np.ascontiguousarray(wave, dtype=np.float32)


def fit_length(wave: np.ndarray, length: int) -> np.ndarray:
    """Repeat ``wave`` end to end until it has ``length`` samples, then cut it there.

    The official loaders tile a fixed number of times (``np.tile(x, 3)[:3 * 22050]`` for
    CREMA-D, ``np.tile(x, 10)[:160000]`` for AVE), which equals this whenever that many
    copies reach the target; repeating as often as needed also gives shorter clips the
    full length.
    """
    if len(wave) == 0:
        raise ValueError("cannot tile an empty waveform")
    reps = -(-length // len(wave))
    return np.tile(wave, reps)[:length] if reps > 1 else wave[:length]


def cremad_spectrogram(wave: np.ndarray, rate: int = CREMAD_RATE) -> torch.Tensor:
    """CREMA-D front-end (OGM-GE): 3 s at 22050 Hz, clipped, log-magnitude STFT -> (257, 188).

    ``librosa.stft`` semantics of the official code (librosa < 0.10): periodic Hann window
    of 512, centred frames, reflect padding, magnitude not normalised.
    """
    x = np.clip(fit_length(wave, 3 * rate), -1.0, 1.0).astype(np.float32)
    spec = torch.stft(torch.from_numpy(x), n_fft=CREMAD_N_FFT, hop_length=CREMAD_HOP,
                      win_length=CREMAD_N_FFT, window=torch.hann_window(CREMAD_N_FFT),
                      center=True, pad_mode="reflect", return_complex=True)
    return torch.log(spec.abs() + LOG_EPS).float()


def ave_spectrogram(wave: np.ndarray, rate: int = AVE_RATE) -> torch.Tensor:
    """AVE front-end (OGM-GE): 160000 samples, clipped, scipy power spectrogram (nperseg 512,
    noverlap 353, scipy's default Tukey(0.25) window and density scaling), log, z-scored
    over the whole clip -> (257, 1004)."""
    from scipy.signal import spectrogram

    x = np.clip(fit_length(wave, AVE_SAMPLES), -1.0, 1.0).astype(np.float32)
    _, _, power = spectrogram(x, rate, nperseg=AVE_NPERSEG, noverlap=AVE_NOVERLAP)
    logp = np.log(power.astype(np.float64) + LOG_EPS)
    z = (logp - logp.mean()) / (logp.std() + ZSCORE_EPS)
    return torch.from_numpy(z.astype(np.float32))


def ks_fbank(wave: np.ndarray, rate: int = KS_RATE) -> torch.Tensor:
    """Kinetics-Sounds front-end (OGM-GE's ``process_audio.py``, AST-style): Kaldi fbank of the
    mean-removed waveform, 128 mel bins, Hanning window, 10 ms shift, no dither, zero-padded
    or cut to 1024 frames, then (x + 4.503877) / (2 * 5.141276) -> (1024, 128) = (time, mel)."""
    from torchaudio.compliance import kaldi

    w = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)).unsqueeze(0)
    window = int(rate * 0.025)
    if w.shape[1] < window:                      # shorter than one Kaldi frame: pad with silence
        w = torch.nn.functional.pad(w, (0, window - w.shape[1]))
    w = w - w.mean()
    fbank = kaldi.fbank(w, htk_compat=True, sample_frequency=rate, use_energy=False,
                        window_type="hanning", num_mel_bins=KS_MEL_BINS, dither=0.0,
                        frame_shift=KS_SHIFT_MS)
    n = fbank.shape[0]
    if n < KS_FRAMES:
        fbank = torch.nn.functional.pad(fbank, (0, 0, 0, KS_FRAMES - n))
    fbank = fbank[:KS_FRAMES]
    return ((fbank - KS_NORM_MEAN) / (KS_NORM_STD * 2)).float()


@dataclass(frozen=True)
class AudioFrontEnd:
    """An audio front-end: waveform at ``sample_rate`` -> 2-D feature of ``shape``."""
    name: str
    sample_rate: int
    shape: tuple[int, int]
    compute: Callable[[np.ndarray, int], torch.Tensor]
    description: str

    def __call__(self, wave: np.ndarray) -> torch.Tensor:
        return self.compute(wave, self.sample_rate)


def cremad_front_end() -> AudioFrontEnd:
    return AudioFrontEnd("cremad", CREMAD_RATE, (CREMAD_N_FFT // 2 + 1, CREMAD_SAMPLES // CREMAD_HOP + 1),
                         cremad_spectrogram,
                         "22050 Hz, tiled to 3 s, clipped to +-1, STFT n_fft 512 hop 353 (Hann, centred), "
                         "log(|X| + 1e-7)")


def ave_front_end(sample_rate: int = AVE_RATE) -> AudioFrontEnd:
    frames = (AVE_SAMPLES - AVE_NPERSEG) // (AVE_NPERSEG - AVE_NOVERLAP) + 1
    return AudioFrontEnd("ave", int(sample_rate), (AVE_NPERSEG // 2 + 1, frames), ave_spectrogram,
                         f"{sample_rate} Hz, tiled to {AVE_SAMPLES} samples, clipped to +-1, "
                         "spectrogram nperseg 512 noverlap 353, log(S + 1e-7), z-scored per clip")


def ks_front_end() -> AudioFrontEnd:
    return AudioFrontEnd("ks", KS_RATE, (KS_FRAMES, KS_MEL_BINS), ks_fbank,
                         "16000 Hz, mean removed, Kaldi fbank 128 mel bins (Hanning, 10 ms shift), "
                         "padded / cut to 1024 frames, (x + 4.503877) / (2 * 5.141276); axes (time, mel)")


def load_audio(wav: Path, npy: Path | None, front_end: AudioFrontEnd) -> torch.Tensor:
    """A clip's audio feature, (1, *front_end.shape): from its precomputed ``.npy`` if that
    exists, else from its WAV."""
    if npy is not None and npy.is_file():
        try:
            arr = np.load(npy, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{npy}: cannot read precomputed audio ({e})") from None
        if arr.ndim == 1:
            if arr.size == 0:
                raise DataError(f"{npy}: precomputed waveform has no samples")
            return front_end(arr.astype(np.float32)).unsqueeze(0)
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if tuple(arr.shape) != tuple(front_end.shape):
            raise DataError(f"{npy}: precomputed audio has shape {tuple(arr.shape)}, expected "
                            f"{tuple(front_end.shape)} (the {front_end.name} front-end) or a 1-D "
                            f"waveform at {front_end.sample_rate} Hz")
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).unsqueeze(0)
    return front_end(read_wav(wav, front_end.sample_rate)).unsqueeze(0)


# ----------------------------------------------------------------------------- visual
def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers numerically: 2.jpg < 10.jpg, frame_9 < frame_10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_frames(folder: Path) -> list[str]:
    """Image file names in ``folder``, in numeric order ([] when the folder is missing)."""
    try:
        names = [e.name for e in os.scandir(folder)
                 if e.name.lower().endswith(IMAGE_SUFFIXES) and not e.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(names, key=natural_key)


def sample_frame_indices(available: int, wanted: int) -> list[int]:
    """``wanted`` indices spread evenly over ``available`` frames: the centre of each of
    ``wanted`` equal segments (frames repeat when fewer are available than wanted)."""
    if available <= 0:
        raise ValueError("no frames to sample from")
    return [min(available - 1, int((i + 0.5) * available / wanted)) for i in range(wanted)]


def frame_transform(train: bool, image_size: int = 224):
    """Train: RandomResizedCrop(size) + RandomHorizontalFlip; eval: Resize((size, size));
    both then ToTensor and ImageNet mean / std normalisation. Applied to each frame
    independently, as the official loaders do."""
    from torchvision import (
        transforms as T,  # imported lazily: torchvision takes seconds to import
    )

    geometry = ([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()] if train
                else [T.Resize((image_size, image_size))])
    return T.Compose(geometry + [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: frame missing") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read frame ({e})") from None


# ----------------------------------------------------------------------------- clips and splits
@dataclass
class Clip:
    """One audio-visual item of a file-backed dataset."""
    id: str
    label: int
    audio: Path                     # WAV
    audio_npy: Path                 # precomputed audio, used when it exists
    frames: Path                    # folder of frame images
    frame_names: tuple[str, ...] = ()   # filled by the media scan (numeric order)


class ClipSplit(FileSplit):
    """A split of :class:`Clip` items decoded per item:
    ``{"audio": (1, F, T) float tensor, "visual": (num_frames, 3, S, S) float tensor}``."""

    def __init__(self, clips: Sequence[Clip], front_end: AudioFrontEnd, num_frames: int,
                 image_size: int, train: bool, skipped: Iterable[str] = (),
                 extras: dict[str, np.ndarray] | None = None):
        super().__init__()
        self.clips = list(clips)
        self.ids = [c.id for c in self.clips]
        self.label_list = [int(c.label) for c in self.clips]
        self.skipped = list(skipped)
        self.extras = dict(extras or {})
        self.front_end = front_end
        self.num_frames = int(num_frames)
        self.image_size = int(image_size)
        self.train = bool(train)
        self.transform = frame_transform(self.train, self.image_size)

    def frames(self, i: int) -> torch.Tensor:
        clip = self.clips[i]
        names = clip.frame_names or tuple(list_frames(clip.frames))
        if not names:
            raise DataError(f"{clip.frames}: no frame images (clip {clip.id})")
        picked = sample_frame_indices(len(names), self.num_frames)
        return torch.stack([self.transform(open_image(clip.frames / names[k])) for k in picked])

    def load(self, i: int) -> dict[str, torch.Tensor]:
        clip = self.clips[i]
        return {"audio": load_audio(clip.audio, clip.audio_npy, self.front_end), "visual": self.frames(i)}


# ----------------------------------------------------------------------------- roots, lists, classes
def prepare_hint(name: str, root: Path | str) -> str:
    return (f"build the layout with `raygap prepare {name} RAW_DIR {root}`; "
            "docs/datasets.md describes it")


def data_root(name: str, common: DataCommon) -> Path:
    """``common.root``, else ``$RAYGAP_DATA/<name>``; it must exist."""
    if common.root:
        root = Path(os.path.expanduser(str(common.root)))
    elif os.environ.get(ENV_ROOT):
        root = Path(os.path.expanduser(os.environ[ENV_ROOT])) / name
    else:
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
        from . import cache as tc

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
