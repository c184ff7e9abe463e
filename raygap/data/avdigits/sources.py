"""avdigits' two sources: the rendered speech bank (``assets/avdigits_bank.npz``, 10 digit words x
40 eSpeak NG voices at 8 kHz) and scikit-learn's 1797 8x8 digit images, read once per process."""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

from ...errors import DataError

BANK_PATH = Path(__file__).parent.parent / "assets" / "avdigits_bank.npz"
CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SAMPLE_RATE = 8000


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
