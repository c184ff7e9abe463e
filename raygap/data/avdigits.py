"""``avdigits``: an embedded, offline audio-visual digit dataset with imbalance knobs.

Each sample pairs a real handwritten digit image (scikit-learn's ``load_digits``: 1797
8x8 images of the UCI hand-written digits test set) with a spoken clip of the same digit
drawn from a bank of eSpeak NG renderings (``assets/avdigits_bank.npz``, made by
``scripts/render_avdigits_bank.py``: 10 digit words x 40 voices at 8 kHz), expanded with
seeded augmentation (speed, time shift, gain, additive noise). Audio becomes a
standardised log-mel spectrogram (1, n_mels, frames); the image a single frame (1, 1, H, W).

The point of the dataset is controllable modality imbalance: a fraction of the samples
in every split can have its visual or audio stream corrupted (noise / blank / silence /
a shuffled stream of another digit), and Gaussian noise can weaken the visual stream
globally. The per-sample truth is kept in ``split.extras["corrupt_visual"]`` and
``split.extras["corrupt_audio"]``.

Everything is computed in memory in a few seconds and is bit-reproducible for the same
params and ``split_seed``. Every random decision draws from its own generator, seeded by
(``split_seed``, stream, split), so e.g. turning up ``visual_corrupt`` leaves the audio
and the splits untouched. See ``docs/avdigits.md``.
"""
from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..lazy import lazy
from ..registry import DATASETS
from .base import DataCommon, DataLayout, DatasetBundle, ModalitySpec, TensorSplit, carve_validation

torch = lazy("torch")
F = lazy("torch.nn.functional")
AF = lazy("torchaudio.functional")

BANK_PATH = Path(__file__).with_name("assets") / "avdigits_bank.npz"
CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SPLITS = ("train", "val", "test")

SAMPLE_RATE = 8000
N_FFT = 256
HOP = 64
LOG_EPS = 1e-6
CHUNK = 512           # waveforms turned into spectrograms per batch (bounds peak memory)

# Random streams: each decision has its own generator, so knobs do not disturb each other.
_SALT = 0xA7D161          # keeps these streams apart from other uses of split_seed
_STREAM = {"heldout": 1, "order": 2, "audio": 3, "visual_noise": 4,
           "corrupt_visual": 5, "corrupt_audio": 6, "text": 7, "corrupt_text": 8}

# The optional text stream: the digit's word with typos, one-hot over a-z + padding
ALPHABET = "abcdefghijklmnopqrstuvwxyz"
PAD = len(ALPHABET)                  # index of the padding symbol
TEXT_DIM = len(ALPHABET) + 1         # 27: a-z, pad
TEXT_LEN = 8                         # characters kept (words are 3-5 letters; longer typo'd words are cut)
MAX_WORD = max(len(w) for w in CLASS_NAMES)   # 5: typo decisions drawn per sample
TYPO_OPS = ("substitution", "deletion", "insertion", "swap")


@dataclass
class AVDigitsParams:
    """avdigits' own keys of the ``data`` section."""
    num_samples: int = field(default=0, metadata={
        "range": (0, 500_000),
        "help": "total samples over all splits; 0 = one per image (1797). When larger, images "
                "are reused within their own split, each time with a freshly augmented clip"})
    test_fraction: float = field(default=0.2, metadata={
        "range": (0.05, 0.5), "help": "fraction of the images held out for test (stratified)"})
    heldout_voices: int = field(default=0, metadata={
        "range": (0, 39), "help": "voices used only for val/test (0: every split draws from all voices)"})
    image_size: int = field(default=8, metadata={
        "range": (8, 128), "help": "image side in pixels; > 8 upsamples the 8x8 digits bilinearly"})
    visual_noise: float = field(default=0.0, metadata={
        "range": (0.0, 10.0), "help": "std of Gaussian noise added to every image (pixels in [0, 1])"})
    visual_corrupt: float = field(default=0.0, metadata={
        "range": (0.0, 1.0), "help": "fraction of samples in every split whose image is corrupted"})
    visual_corrupt_mode: str = field(default="noise", metadata={
        "choices": ["noise", "blank", "shuffle"],
        "help": "noise: uniform [0,1] noise; blank: zeros; shuffle: the image of a sample with another label"})
    audio_corrupt: float = field(default=0.0, metadata={
        "range": (0.0, 1.0), "help": "fraction of samples in every split whose audio is corrupted"})
    audio_corrupt_mode: str = field(default="noise", metadata={
        "choices": ["noise", "silence", "shuffle"],
        "help": "noise: white noise at the level of a random clip; silence: zeros; "
                "shuffle: the clip of a sample with another label"})
    audio_snr_db: float = field(default=20.0, metadata={
        "range": (-20.0, 100.0), "help": "SNR of the additive white noise on every clip (dB)"})
    audio_speed: float = field(default=0.1, metadata={
        "range": (0.0, 0.5), "help": "speed perturbation: resample by a factor in [1-s, 1+s]"})
    audio_shift: float = field(default=1.0, metadata={
        "range": (0.0, 1.0), "help": "random time shift as a fraction of the free room in the window (0: centred)"})
    audio_gain_db: float = field(default=6.0, metadata={
        "range": (0.0, 30.0), "help": "random gain in [-g, +g] dB"})
    clip_seconds: float = field(default=1.0, metadata={
        "range": (0.25, 4.0), "help": "audio window; clips are padded / cropped to it (8 kHz)"})
    n_mels: int = field(default=40, metadata={
        "range": (8, 128), "help": "mel bins of the log-mel spectrogram (n_fft 256, hop 64)"})
    nan_train: int = field(default=0, metadata={
        "range": (0, 100_000),
        "help": "fault injection: this many training spectrograms are NaN (what a corrupt "
                "precomputed feature file decodes to); exercises divergence handling"})
    text: bool = field(default=False, metadata={
        "help": "add a third modality 'text': the digit's word with typos, one-hot characters "
                f"({TEXT_LEN} x {TEXT_DIM}, kind sequence)"})
    text_typo: float = field(default=0.3, metadata={
        "range": (0.0, 1.0),
        "help": "per-character typo probability of the text: substitution, deletion, insertion or "
                "adjacent swap, equally likely"})
    text_corrupt: float = field(default=0.0, metadata={
        "range": (0.0, 1.0),
        "help": "fraction of samples in every split whose word is replaced by another digit's word"})
    target: str = field(default="class", metadata={
        "choices": ["class", "regression"],
        "help": "class: the digit (10 classes); regression: the score digit*6/9 - 3 in [-3, 3]"})


# ----------------------------------------------------------------------------- sources
@functools.lru_cache(maxsize=1)
def load_bank(path: str = str(BANK_PATH)) -> dict:
    """The rendered speech bank: float32 clips (list), digit and voice per clip, metadata."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: avdigits speech bank missing (regenerate it with "
                        f"scripts/render_avdigits_bank.py)")
    with np.load(p, allow_pickle=False) as z:
        audio, offsets, lengths = z["audio"], z["offsets"], z["lengths"]
        if int(z["sample_rate"]) != SAMPLE_RATE:
            raise DataError(f"{p}: sample rate {int(z['sample_rate'])}, expected {SAMPLE_RATE}")
        clips = [audio[o:o + n].astype(np.float32) / 32767.0 for o, n in zip(offsets, lengths, strict=True)]
        for c in clips:
            c.flags.writeable = False
        voice_names = [str(v) for v in z["voice_names"]]
        digits, voice = z["digits"].astype(np.int64), z["voice"].astype(np.int64)
        # clip_of[v, d]: the bank index of digit d spoken by voice v
        clip_of = np.full((len(voice_names), 10), -1, dtype=np.int64)
        clip_of[voice, digits] = np.arange(len(clips))
        if (clip_of < 0).any():
            raise DataError(f"{p}: some (voice, digit) pairs have no clip")
        return {"clips": clips, "clip_of": clip_of, "voice_names": voice_names,
                "version": str(z["espeak_version"]), "size_bytes": p.stat().st_size}


def _digits_csv() -> Path | None:
    """The CSV inside the installed scikit-learn that ``load_digits`` reads, found
    without importing scikit-learn (whose import costs seconds on a small machine)."""
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=1)
def load_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: images (1797, 8, 8) float32 in [0, 1] and labels (1797,).

    Reads the data file ``sklearn.datasets.load_digits`` reads (64 pixel columns and the
    label, values 0..16) straight from the installed package; falls back to calling
    ``load_digits()`` should that file move. Both give the same arrays (tested)."""
    csv = _digits_csv()
    if csv is not None:
        data = np.loadtxt(csv, delimiter=",")
        pixels, target = data[:, :-1].reshape(-1, 8, 8), data[:, -1]
    else:
        from sklearn.datasets import load_digits
        d = load_digits()
        pixels, target = d.images, d.target
    images = (pixels / 16.0).astype(np.float32)
    labels = target.astype(np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def _rng(seed: int, stream: str, split: str | None = None) -> np.random.Generator:
    key = [_SALT, int(seed), _STREAM[stream]] + ([SPLITS.index(split)] if split else [])
    return np.random.default_rng(key)


# ----------------------------------------------------------------------------- splitting
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


# ----------------------------------------------------------------------------- audio
def augment_clips(clips: list[np.ndarray], p: AVDigitsParams, rng: np.random.Generator) -> np.ndarray:
    """Speed-perturb, gain, place in the window and add white noise at ``audio_snr_db``.

    Returns float32 waveforms (len(clips), clip_seconds * 8000)."""
    n, width = len(clips), int(round(p.clip_seconds * SAMPLE_RATE))
    speed = rng.uniform(1 - p.audio_speed, 1 + p.audio_speed, n)
    gain = 10 ** (rng.uniform(-p.audio_gain_db, p.audio_gain_db, n) / 20)
    place = 0.5 + p.audio_shift * (rng.random(n) - 0.5)        # position of the word in the free room
    out = np.zeros((n, width), dtype=np.float32)
    level = np.empty(n, dtype=np.float64)
    for i, clip in enumerate(clips):
        m = max(1, int(round(len(clip) / speed[i])))
        x = np.interp(np.arange(m) * speed[i], np.arange(len(clip)), clip) * gain[i]
        level[i] = np.sqrt(np.mean(x ** 2))
        if m <= width:
            start = int(round(place[i] * (width - m)))
            out[i, start:start + m] = x
        else:
            start = int(round(place[i] * (m - width)))
            out[i] = x[start:start + width]
    noise_std = level * 10 ** (-p.audio_snr_db / 20)
    for s in range(0, n, CHUNK):
        e = min(n, s + CHUNK)
        out[s:e] += (rng.standard_normal((e - s, width)) * noise_std[s:e, None]).astype(np.float32)
    return out


def corrupt_audio(wave: np.ndarray, labels: np.ndarray, mask: np.ndarray, mode: str,
                  rng: np.random.Generator) -> np.ndarray:
    """Replace the masked waveforms so they carry no information about their label."""
    idx = np.flatnonzero(mask)
    if len(idx) == 0:
        return wave
    out = wave.copy()
    if mode == "silence":
        out[idx] = 0.0
    elif mode == "noise":
        # the level of a random sample of the split (any label), so it says nothing about the digit
        rms = np.sqrt(np.mean(wave.astype(np.float64) ** 2, axis=1))[rng.integers(0, len(wave), len(idx))]
        out[idx] = (rng.standard_normal((len(idx), wave.shape[1])) * rms[:, None]).astype(np.float32)
    elif mode == "shuffle":
        out[idx] = wave[pick_donors(labels, idx, rng)]
    else:
        raise ConfigError(f"unknown audio_corrupt_mode {mode!r}", key="data.audio_corrupt_mode")
    return out


def log_mel(wave: np.ndarray, n_mels: int) -> torch.Tensor:
    """Log-mel power spectrogram (N, 1, n_mels, frames): n_fft 256, hop 64, Hann window."""
    fbank = AF.melscale_fbanks(N_FFT // 2 + 1, 0.0, SAMPLE_RATE / 2, n_mels, SAMPLE_RATE)  # (freq, mel)
    window = torch.hann_window(N_FFT)
    parts = []
    for s in range(0, len(wave), CHUNK):
        x = torch.from_numpy(wave[s:s + CHUNK])
        spec = torch.view_as_real(torch.stft(x, N_FFT, HOP, window=window, center=True,
                                             return_complex=True)).pow(2).sum(-1)
        parts.append(torch.log(torch.matmul(fbank.T, spec) + LOG_EPS))
    return torch.cat(parts).unsqueeze(1)


# ----------------------------------------------------------------------------- visual
def prepare_images(images: np.ndarray, size: int) -> torch.Tensor:
    """(N, 8, 8) -> (N, 1, size, size), bilinear upsampling when size > 8."""
    x = torch.from_numpy(np.array(images, dtype=np.float32)).unsqueeze(1)
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


def corrupt_visual(img: torch.Tensor, labels: np.ndarray, mask: np.ndarray, mode: str,
                   rng: np.random.Generator) -> torch.Tensor:
    """Replace the masked images so they carry no information about their label."""
    idx = np.flatnonzero(mask)
    if len(idx) == 0:
        return img
    out = img.clone()
    ti = torch.from_numpy(idx)
    if mode == "blank":
        out[ti] = 0.0
    elif mode == "noise":
        out[ti] = torch.from_numpy(rng.random((len(idx), *img.shape[1:]), dtype=np.float32))
    elif mode == "shuffle":
        out[ti] = img[torch.from_numpy(pick_donors(labels, idx, rng))]
    else:
        raise ConfigError(f"unknown visual_corrupt_mode {mode!r}", key="data.visual_corrupt_mode")
    return out


# ----------------------------------------------------------------------------- text
def typo(word: str, hit: np.ndarray, op: np.ndarray, letter: np.ndarray, shift: np.ndarray) -> str:
    """``word`` with a typo at each original character ``i`` where ``hit[i]``, applied in order.

    ``op[i]`` picks the typo: 0 substitution (the letter ``shift[i]`` places further along
    the alphabet, cyclically, so never itself), 1 deletion, 2 insertion (``letter[i]`` after
    the character), 3 swap with the next character (the previous one for the last)."""
    tokens = [(c, i) for i, c in enumerate(word)]           # (character, original position or -1)
    for i in range(len(word)):
        if not hit[i]:
            continue
        pos = next(k for k, t in enumerate(tokens) if t[1] == i)
        kind = int(op[i])
        if kind == 0:
            tokens[pos] = (ALPHABET[(ALPHABET.index(tokens[pos][0]) + int(shift[i])) % 26], i)
        elif kind == 1:
            del tokens[pos]
        elif kind == 2:
            tokens.insert(pos + 1, (ALPHABET[int(letter[i])], -1))
        else:
            other = pos + 1 if pos + 1 < len(tokens) else pos - 1
            if other >= 0:
                tokens[pos], tokens[other] = tokens[other], tokens[pos]
    return "".join(c for c, _ in tokens)


def typo_words(digits: np.ndarray, p: float, rng: np.random.Generator) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The words of ``digits`` with per-character typos of probability ``p``.

    Every sample draws ``MAX_WORD`` decisions whatever its word, so the draws of one sample do
    not depend on the other samples' words. Returns (texts, typos per sample, count per op)."""
    n = len(digits)
    hit = rng.random((n, MAX_WORD)) < p
    op = rng.integers(0, len(TYPO_OPS), (n, MAX_WORD))
    letter = rng.integers(0, 26, (n, MAX_WORD))
    shift = rng.integers(1, 26, (n, MAX_WORD))
    lengths = np.array([len(CLASS_NAMES[d]) for d in digits], dtype=np.int64)
    hit &= np.arange(MAX_WORD)[None, :] < lengths[:, None]      # only the word's own characters
    texts = [typo(CLASS_NAMES[d], hit[i], op[i], letter[i], shift[i]) for i, d in enumerate(digits)]
    ops = np.bincount(op[hit], minlength=len(TYPO_OPS))
    return texts, hit.sum(axis=1), ops


def one_hot_text(texts: list[str]) -> torch.Tensor:
    """(N, TEXT_LEN, TEXT_DIM) float32: one row per character (a-z), then padding rows;
    characters beyond ``TEXT_LEN`` are cut."""
    idx = np.full((len(texts), TEXT_LEN), PAD, dtype=np.int64)
    for i, t in enumerate(texts):
        t = t[:TEXT_LEN]
        idx[i, :len(t)] = [ALPHABET.index(c) for c in t]
    return F.one_hot(torch.from_numpy(idx), TEXT_DIM).float()


def decode_text(x: torch.Tensor) -> str:
    """The string a (TEXT_LEN, TEXT_DIM) one-hot row encodes (padding dropped)."""
    return "".join(ALPHABET[i] for i in x.argmax(-1).tolist() if i != PAD)


def regression_target(digits: np.ndarray) -> np.ndarray:
    """The regression score of a digit: digit * 6/9 - 3, in [-3, 3] (float32)."""
    return (np.asarray(digits, dtype=np.float64) * 6.0 / 9.0 - 3.0).astype(np.float32)


# ----------------------------------------------------------------------------- builder
@DATASETS.register("avdigits", params=AVDigitsParams, in_memory=True,
                   layout=lambda p: DataLayout(["audio", "visual"] + (["text"] if p.text else []),
                                               "regression" if p.target == "regression" else "classification"))
def build(params: AVDigitsParams, common: DataCommon) -> DatasetBundle:
    """Embedded audio-visual digits (sklearn digit images + eSpeak NG spoken digits)."""
    p, seed = params, int(common.split_seed)
    bank = load_bank()
    images, labels = load_images()
    num_voices = len(bank["voice_names"])
    if p.heldout_voices >= num_voices:
        raise ConfigError(f"{p.heldout_voices} held-out voices leave none of the bank's "
                          f"{num_voices} for training", key="data.heldout_voices")

    # voices: the held-out ones (if any) serve val/test only
    perm = _rng(seed, "heldout").permutation(num_voices)
    heldout = np.sort(perm[num_voices - p.heldout_voices:])
    seen = np.sort(perm[: num_voices - p.heldout_voices])
    voices_for = {"train": seen, "val": heldout if len(heldout) else seen,
                  "test": heldout if len(heldout) else seen}

    image_split = split_images(labels, p.test_fraction, common.val_fraction, seed)
    counts = allocate(p.num_samples, {s: len(v) for s, v in image_split.items()})
    pixels = prepare_images(images, p.image_size)

    raw = {}
    for s in SPLITS:
        img, rep = sample_images(image_split[s], labels[image_split[s]], counts[s], _rng(seed, "order", s))
        y = labels[img]
        n = len(img)

        # audio: a clip of the same digit from an allowed voice, freshly augmented
        rng_a = _rng(seed, "audio", s)
        voice = voices_for[s][rng_a.integers(0, len(voices_for[s]), n)]
        clips = [bank["clips"][bank["clip_of"][v, d]] for v, d in zip(voice, y, strict=True)]
        wave = augment_clips(clips, p, rng_a)
        rng_ca = _rng(seed, "corrupt_audio", s)
        mask_a = pick_corrupted(n, p.audio_corrupt, rng_ca)
        wave = corrupt_audio(wave, y, mask_a, p.audio_corrupt_mode, rng_ca)

        # visual: the image, globally noised, then corrupted
        vis = pixels[torch.from_numpy(img)]
        if p.visual_noise > 0:
            noise = _rng(seed, "visual_noise", s).standard_normal(tuple(vis.shape), dtype=np.float32)
            vis = vis + p.visual_noise * torch.from_numpy(noise)
        rng_v = _rng(seed, "corrupt_visual", s)
        mask_v = pick_corrupted(n, p.visual_corrupt, rng_v)
        vis = corrupt_visual(vis, y, mask_v, p.visual_corrupt_mode, rng_v)

        raw[s] = dict(img=img, rep=rep, y=y, voice=voice, mel=log_mel(wave, p.n_mels),
                      vis=vis.unsqueeze(1), mask_a=mask_a, mask_v=mask_v)

        if p.text:
            # text: the word of the digit (another digit's word where corrupted), with typos
            rng_ct = _rng(seed, "corrupt_text", s)
            mask_t = pick_corrupted(n, p.text_corrupt, rng_ct)
            written = y.copy()
            written[mask_t] = (y[mask_t] + rng_ct.integers(1, 10, int(mask_t.sum()))) % 10
            texts, typos, ops = typo_words(written, p.text_typo, _rng(seed, "text", s))
            raw[s].update(text=one_hot_text(texts), words=np.array(texts, dtype=str), written=written,
                          typos=typos, ops=ops, mask_t=mask_t)

    # standardise audio per mel bin with the clean training clips' statistics
    # (all training clips when every one of them is corrupted)
    train = raw["train"]
    ref = train["mel"][torch.from_numpy(~train["mask_a"])] if (~train["mask_a"]).any() else train["mel"]
    mean = ref.double().mean(dim=(0, 1, 3), keepdim=True)
    std = ref.double().std(dim=(0, 1, 3), keepdim=True).clamp_min(1e-6)

    splits = {}
    for s, r in raw.items():
        audio = ((r["mel"].double() - mean) / std).float()
        if s == "train" and p.nan_train:
            audio[: min(p.nan_train, len(audio))] = float("nan")
        ids = [f"img{i:04d}_v{v:02d}_k{k}" for i, v, k in zip(r["img"], r["voice"], r["rep"], strict=True)]
        tensors = {"audio": audio, "visual": r["vis"].contiguous()}
        extras = {"corrupt_visual": r["mask_v"], "corrupt_audio": r["mask_a"],
                  "image_index": r["img"], "voice": r["voice"]}
        if p.text:
            tensors["text"] = r["text"]
            extras.update(corrupt_text=r["mask_t"], text=r["words"], text_digit=r["written"],
                          text_typos=r["typos"])
        if p.target == "regression":
            labels = torch.from_numpy(regression_target(r["y"]))
            extras["digit"] = r["y"]
        else:
            labels = torch.from_numpy(r["y"])
        splits[s] = TensorSplit(tensors, labels, ids, extras=extras)

    frames = int(round(p.clip_seconds * SAMPLE_RATE)) // HOP + 1
    modalities = [ModalitySpec("audio", "spectrogram", (1, p.n_mels, frames)),
                  ModalitySpec("visual", "frames", (1, 1, p.image_size, p.image_size))]
    if p.text:
        modalities.append(ModalitySpec("text", "sequence", (TEXT_LEN, TEXT_DIM)))
    info = {
        "counts": {s: len(sp) for s, sp in splits.items()},
        "images": {s: len(v) for s, v in image_split.items()},
        "class_counts": {s: np.bincount(raw[s]["y"], minlength=10).tolist() for s in SPLITS},
        "voices": bank["voice_names"],
        "heldout_voices": [bank["voice_names"][v] for v in heldout],
        "bank_version": bank["version"],
        "bank_clips": len(bank["clips"]),
        "bank_bytes": bank["size_bytes"],
        "corrupt_visual": {s: float(r["mask_v"].mean()) for s, r in raw.items()},
        "corrupt_audio": {s: float(r["mask_a"].mean()) for s, r in raw.items()},
        "visual_corrupt_mode": p.visual_corrupt_mode,
        "audio_corrupt_mode": p.audio_corrupt_mode,
        "sample_rate": SAMPLE_RATE,
    }
    if p.text:
        info["text"] = {
            "typo": p.text_typo,
            "alphabet": ALPHABET + " (then pad)",
            "length": TEXT_LEN,
            "corrupt_text": {s: float(r["mask_t"].mean()) for s, r in raw.items()},
            "typos_per_char": {s: float(r["typos"].sum() / max(1, sum(len(CLASS_NAMES[d]) for d in r["written"])))
                               for s, r in raw.items()},
            "typo_ops": {s: dict(zip(TYPO_OPS, r["ops"].tolist(), strict=True)) for s, r in raw.items()},
            "truncated": {s: int(sum(len(t) > TEXT_LEN for t in r["words"])) for s, r in raw.items()},
        }
    if p.target == "regression":
        info["target"] = "regression: digit * 6/9 - 3"
        return DatasetBundle(name="avdigits", modalities=modalities, num_classes=1, class_names=["score"],
                             train=splits["train"], val=splits["val"], test=splits["test"],
                             task="regression", info=info)
    return DatasetBundle(name="avdigits", modalities=modalities, num_classes=10,
                         class_names=list(CLASS_NAMES), train=splits["train"], val=splits["val"],
                         test=splits["test"], info=info)
