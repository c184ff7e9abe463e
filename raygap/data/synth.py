"""A CREMA-D layout made from ffmpeg-generated media, for tests and benches.

``make_cremad_layout(root, clips_per_class)`` writes what ``raygap prepare cremad`` writes --
``train.csv``, ``test.csv``, ``AudioWAV/<clip>.wav`` (16 kHz mono, as CREMA-D ships) and
``Image-01-FPS/<clip>/<n>.jpg`` (1 fps) -- from ffmpeg's test sources: each clip's audio is
a sine whose frequency and each clip's video a test pattern whose hue depend on the emotion,
jittered per clip so that the classes overlap (neither modality is perfectly separable).
Real media at real sizes (``frame_size`` 480x360 is CREMA-D's), decoded by the same code
as the real dataset, without downloading it.
"""
from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..system import ffmpeg_exe
from .cremad import AUDIO_DIR, CLASS_NAMES, FRAMES_DIR, TEST_LIST, TRAIN_LIST, write_split_csv


def make_cremad_layout(root: str | Path, clips_per_class: int, *, frame_size: tuple[int, int] = (480, 360),
                       seconds: float = 2.5, test_fraction: float = 0.1, seed: int = 0,
                       workers: int = 4, allow_without_ffmpeg: bool = False) -> list[str]:
    """Write the layout under ``root`` (kept if it is already complete); returns the clip ids.
    ``allow_without_ffmpeg``: where ffmpeg is missing (the GPU bench machine), draw the same
    kind of media with numpy, PIL and soundfile instead of failing."""
    ffmpeg = ffmpeg_exe()
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows, jobs = [], []
    for k, emo in enumerate(CLASS_NAMES):
        for j in range(clips_per_class):
            clip = f"{1001 + j % 91}_{j:04d}_{emo}_XX"
            freq = 300 + 90 * k + rng.uniform(-70, 70)
            hue = 50 * k + rng.uniform(-35, 35)
            rows.append((clip, emo))
            jobs.append((clip, freq, hue))
    order = rng.permutation(len(rows))
    n_test = max(1, int(round(test_fraction * len(rows))))
    test = sorted(rows[i] for i in order[:n_test])
    train = sorted(rows[i] for i in order[n_test:])
    if (root / TRAIN_LIST).is_file() and (root / TEST_LIST).is_file() and all(
            (root / AUDIO_DIR / f"{c}.wav").is_file() for c, _ in rows):
        return [c for c, _ in rows]
    if ffmpeg is None and not allow_without_ffmpeg:
        raise DataError("ffmpeg is not installed: it generates the media (Debian/Ubuntu: apt-get install ffmpeg)")
    w, h = frame_size

    def without_ffmpeg(job):          # same content from numpy, PIL and soundfile
        import soundfile as sf
        from PIL import Image

        clip, freq, hue = job
        frames = root / FRAMES_DIR / clip
        frames.mkdir(parents=True, exist_ok=True)
        (root / AUDIO_DIR).mkdir(parents=True, exist_ok=True)
        t = np.arange(int(16000 * seconds)) / 16000
        sf.write(str(root / AUDIO_DIR / f"{clip}.wav"), (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32),
                 16000, subtype="PCM_16")
        yy, xx = np.mgrid[0:h, 0:w]
        for n in range(1, int(np.ceil(seconds)) + 1):
            hsv = np.stack([np.full((h, w), (hue % 360) / 360 * 255), 160 + 80 * ((xx // 16 + yy // 16 + n) % 2),
                            (xx * 255 // max(1, w - 1))], -1).astype(np.uint8)
            Image.fromarray(hsv, "HSV").convert("RGB").save(frames / f"{n}.jpg", quality=85)

    def one(job):
        if ffmpeg is None:
            return without_ffmpeg(job)
        clip, freq, hue = job
        frames = root / FRAMES_DIR / clip
        frames.mkdir(parents=True, exist_ok=True)
        (root / AUDIO_DIR).mkdir(parents=True, exist_ok=True)
        subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", "-y",
                        "-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate=1:duration={seconds},hue=h={hue:.1f}",
                        "-f", "lavfi", "-i", f"sine=frequency={freq:.1f}:sample_rate=16000:duration={seconds}",
                        "-map", "0:v", "-q:v", "3", str(frames / "%d.jpg"),
                        "-map", "1:a", "-ac", "1", str(root / AUDIO_DIR / f"{clip}.wav")], check=True)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(one, jobs))
    write_split_csv(root / TRAIN_LIST, train)
    write_split_csv(root / TEST_LIST, test)
    return [c for c, _ in rows]
