"""A file-backed clip's media decoded (``cremad``, ``ave``, ``ks``): audio, frames, the per-item split.

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
* **Clips** -- :class:`Clip` (one item's files) and :class:`ClipSplit`, the ``FileSplit``
  that decodes a clip per item (``data.pipeline: files``).

The loader plumbing the three datasets share (the data root, split and class lists, the
bad-media screening, the bundle) is :mod:`raygap.data.loader`.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..lazy import lazy
from .base import FileSplit

sf = lazy("soundfile")
torch = lazy("torch")

# ----------------------------------------------------------------------------- constants
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
NPY_DIR = "audio_npy"          # <root>/audio_npy/<clip>.npy: precomputed audio
LFS_POINTER = b"version https://git-lfs"   # how a git-lfs pointer file starts
WAV_HEADER_BYTES = 44          # a WAV of this size or less holds no samples (CREMA-D ships one)

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
