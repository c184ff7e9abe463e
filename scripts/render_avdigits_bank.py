#!/usr/bin/env python
"""Render the spoken-digit bank used by the ``avdigits`` dataset.

Speaks the ten English digit words ("zero" .. "nine") with eSpeak NG in a fixed table
of voices (English accents x voice variants x pitch x speed), resamples every clip to
8 kHz mono, trims leading/trailing silence, peak-normalises it and stores the whole
bank as int16 in one compressed ``.npz``:

    audio        int16 (total,)   all clips concatenated
    offsets      int64 (n,)       start of clip i in ``audio``
    lengths      int64 (n,)       length of clip i in samples
    digits       int64 (n,)       the digit spoken in clip i (0..9)
    voice        int64 (n,)       index of clip i's voice in ``voice_names``
    voice_names  str   (V,)       e.g. ``"en-us+m3 p50 s160"`` (language+variant, pitch, speed)
    sample_rate  int64 ()         8000
    espeak_version str ()         ``espeak-ng --version`` (+ Debian package version)
    render_command str ()         the command template each clip was rendered with

Needs the ``espeak-ng`` executable (Debian: ``apt-get install espeak-ng``). Usage::

    python scripts/render_avdigits_bank.py [--out raygap/data/assets/avdigits_bank.npz]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SAMPLE_RATE = 8000

# eSpeak NG English voices (all from the gmw/ language family shipped in espeak-ng-data).
LANGUAGES = ["en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan",
             "en-gb-x-gbcwmd", "en-029", "en-us-nyc"]
# Voice variants (espeak-ng-data/voices/!v): male, female and Klatt-synthesiser voices.
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "klatt", "klatt3"]
PITCHES = [35, 50, 65]      # espeak-ng -p (0..99, default 50)
SPEEDS = [135, 160, 185]    # espeak-ng -s, words per minute (default 175)
NUM_VOICES = 40

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "raygap" / "data" / "assets" / "avdigits_bank.npz"
COMMAND = "espeak-ng -v {language}+{variant} -p {pitch} -s {speed} -w <file.wav> <word>"


def voice_table(n: int = NUM_VOICES) -> list[dict]:
    """The fixed voice table: voice k cycles languages (period 8), variants (period 13),
    pitches (period 3) and speeds (period 9), so every (language, variant) pair is
    distinct for up to lcm(8, 13) = 104 voices."""
    table = []
    for k in range(n):
        v = dict(language=LANGUAGES[k % len(LANGUAGES)], variant=VARIANTS[k % len(VARIANTS)],
                 pitch=PITCHES[k % len(PITCHES)], speed=SPEEDS[(k // len(PITCHES)) % len(SPEEDS)])
        v["name"] = f"{v['language']}+{v['variant']} p{v['pitch']} s{v['speed']}"
        table.append(v)
    return table


def espeak_version() -> str:
    """``espeak-ng --version`` without its data path, plus the Debian package version
    when dpkg knows it, e.g. ``eSpeak NG text-to-speech: 1.51 (Debian espeak-ng 1.51+dfsg-10+deb12u2)``."""
    out = subprocess.run(["espeak-ng", "--version"], check=True, capture_output=True, text=True)
    version = out.stdout.split("Data at:")[0].strip()
    if shutil.which("dpkg-query"):
        pkg = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "espeak-ng"],
                             capture_output=True, text=True)
        if pkg.returncode == 0 and pkg.stdout.strip():
            version += f" (Debian espeak-ng {pkg.stdout.strip()})"
    return version


def render(word: str, voice: dict, workdir: Path) -> np.ndarray:
    """Speak ``word`` with ``voice``; return float32 mono audio at SAMPLE_RATE."""
    wav = workdir / f"{voice['name'].replace(' ', '_').replace('+', '_')}_{word}.wav"
    subprocess.run(["espeak-ng", "-v", f"{voice['language']}+{voice['variant']}",
                    "-p", str(voice["pitch"]), "-s", str(voice["speed"]), "-w", str(wav), word],
                   check=True, capture_output=True)
    x, sr = sf.read(wav, dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    g = np.gcd(sr, SAMPLE_RATE)
    return resample_poly(x, SAMPLE_RATE // g, sr // g).astype(np.float32)


def trim_silence(x: np.ndarray, threshold_db: float = -40.0, frame: int = 80,
                 margin: int = 160) -> np.ndarray:
    """Drop leading/trailing 10 ms frames whose RMS is ``threshold_db`` below the loudest
    frame, keeping ``margin`` samples (20 ms) of context on each side."""
    n = len(x) // frame
    rms = np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(20 * np.log10(rms / rms.max()) > threshold_db)
    start = max(0, loud[0] * frame - margin)
    stop = min(len(x), (loud[-1] + 1) * frame + margin)
    return x[start:stop]


def to_int16(x: np.ndarray, peak: float = 0.9) -> np.ndarray:
    """Peak-normalise to ``peak`` of full scale and quantise."""
    x = x * (peak / max(float(np.abs(x).max()), 1e-9))
    return np.round(x * 32767).astype(np.int16)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--voices", type=int, default=NUM_VOICES, help="number of voices (table rows)")
    ap.add_argument("--jobs", type=int, default=8, help="concurrent espeak-ng processes")
    args = ap.parse_args(argv)

    if shutil.which("espeak-ng") is None:
        print("espeak-ng not found (Debian: apt-get install espeak-ng)", file=sys.stderr)
        return 2
    version = espeak_version()
    voices = voice_table(args.voices)
    jobs = [(vi, d) for vi in range(len(voices)) for d in range(len(DIGIT_WORDS))]

    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        clips = list(pool.map(lambda j: to_int16(trim_silence(render(DIGIT_WORDS[j[1]], voices[j[0]], Path(tmp)))),
                              jobs))

    lengths = np.array([len(c) for c in clips], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        audio=np.concatenate(clips),
        offsets=offsets,
        lengths=lengths,
        digits=np.array([d for _, d in jobs], dtype=np.int64),
        voice=np.array([v for v, _ in jobs], dtype=np.int64),
        voice_names=np.array([v["name"] for v in voices]),
        sample_rate=np.int64(SAMPLE_RATE),
        espeak_version=np.array(version),
        render_command=np.array(COMMAND),
    )
    secs = lengths / SAMPLE_RATE
    print(f"{version}\n{len(clips)} clips, {len(voices)} voices, clip length "
          f"{secs.min():.2f}-{secs.max():.2f} s (mean {secs.mean():.2f} s), "
          f"{args.out.stat().st_size / 1e6:.2f} MB -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
