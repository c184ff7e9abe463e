"""avdigits' audio stream: a bank clip augmented (speed, gain, place in the window, white
noise), corrupted where the mask says, and turned into a log-mel spectrogram."""
from __future__ import annotations

import numpy as np

from ...errors import ConfigError
from ...lazy import lazy
from .params import AVDigitsParams
from .sampling import pick_donors
from .sources import SAMPLE_RATE

torch = lazy("torch")
AF = lazy("torchaudio.functional")

N_FFT = 256
HOP = 64
LOG_EPS = 1e-6
CHUNK = 512           # waveforms turned into spectrograms per batch (bounds peak memory)


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
