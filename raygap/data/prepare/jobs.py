"""The work of ``raygap prepare``: one clip's frames or audio as a :class:`Job` (ffmpeg's frame
and audio extraction, a WAV or list copied), the :class:`Plan` that queues a dataset's jobs,
and :func:`run_jobs`. Every output is written under a temporary name and renamed when complete."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from ...errors import DataError
from ...removal import remove
from ..media import IMAGE_SUFFIXES, WAV_HEADER_BYTES, list_frames, unreadable_audio

AUDIO_RATE = 16000                       # AVE and KS audio written as 16 kHz mono PCM
FFMPEG_MISSING = ("ffmpeg not found (neither on PATH nor from the imageio-ffmpeg package): `raygap prepare` "
                  "extracts frames and audio with it; install one (`pip install imageio-ffmpeg`, or the "
                  "system's: `apt-get install ffmpeg`) and run again")


def find_ffmpeg() -> str:
    from ...system import ffmpeg_exe

    path = ffmpeg_exe()
    if path is None:
        raise DataError(FFMPEG_MISSING)
    return path


class JobFailed(Exception):
    """One clip's extraction failed (the message names the file and ffmpeg's complaint)."""


def run_ffmpeg(ffmpeg: str, args: list[str], source: Path) -> None:
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise JobFailed(f"{source}: ffmpeg failed ({lines[-1] if lines else f'exit {proc.returncode}'})")


def _tmp_path(dst: Path) -> Path:
    return dst.with_name(f".{dst.name}.tmp{os.getpid()}")


def has_frames(folder: Path) -> bool:
    return bool(list_frames(folder))


def has_audio(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > WAV_HEADER_BYTES


def extract_frames(ffmpeg: str, video: Path, dst: Path, start: float | None = None,
                   duration: float | None = None) -> None:
    """Frames at 1 fps as ``dst/%05d.jpg`` (from ``start`` for ``duration`` seconds if given)."""
    tmp = _tmp_path(dst)
    remove(tmp, dst.parent, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        seek = ["-ss", f"{start:g}"] if start else []
        span = ["-t", f"{duration:g}"] if duration else []
        run_ffmpeg(ffmpeg, [*seek, "-i", str(video), *span, "-vf", "fps=1", "-q:v", "2",
                            str(tmp / "%05d.jpg")], video)
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in tmp.iterdir()):
            raise JobFailed(f"{video}: ffmpeg wrote no frames")
        remove(dst, dst.parent)
        os.replace(tmp, dst)
    finally:
        remove(tmp, dst.parent, ignore_errors=True)


def extract_audio(ffmpeg: str, video: Path, dst: Path, rate: int = AUDIO_RATE) -> None:
    """The video's audio as mono 16-bit PCM WAV at ``rate``."""
    tmp = _tmp_path(dst)
    try:
        run_ffmpeg(ffmpeg, ["-i", str(video), "-vn", "-ac", "1", "-ar", str(rate), "-c:a", "pcm_s16le",
                            "-f", "wav", str(tmp)], video)
        if not has_audio(tmp):
            raise JobFailed(f"{video}: ffmpeg wrote no audio samples")
        os.replace(tmp, dst)
    finally:
        remove(tmp, dst.parent, ignore_errors=True)


def copy_wav(src: Path, dst: Path) -> None:
    """Copy a WAV unchanged after checking that soundfile can read it and it has samples."""
    try:
        frames = sf.info(str(src)).frames
    except (RuntimeError, OSError, ValueError, TypeError) as e:
        raise JobFailed(unreadable_audio(src, e)) from None
    if frames == 0:
        raise JobFailed(f"{src}: audio file has no samples")
    tmp = _tmp_path(dst)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        remove(tmp, dst.parent, ignore_errors=True)


def need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder missing")
    return path


def need_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: {what} missing")
    return path


@dataclass
class Job:
    clip: str
    kind: str                             # "frames" or "audio"
    dst: Path                             # the folder / file it writes
    run: Callable[[str | None], None]     # called with the ffmpeg path (None when no job needs it)
    needs_ffmpeg: bool = True


@dataclass
class Plan:
    """What a dataset's preparation will do."""
    dataset: str
    clips: list[str]                                      # every clip named by the split lists
    list_texts: dict[str, bytes]                          # file name in OUT_DIR -> the list it gets
    lists: dict[str, int]                                 # split file -> rows
    jobs: list[Job] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)      # "clip: why" for clips without source media
    kept: int = 0                                         # outputs already present and kept
    notes: list[str] = field(default_factory=list)

    def queue(self, clip: str, overwrite: bool, *, frames_dst: Path, audio_dst: Path, video: Path | None,
              start: float | None = None, duration: float | None = None, audio_wav: Path | None = None,
              audio_from_video: bool = True) -> None:
        """Queue the frame and audio jobs of one clip whose outputs are not there yet.
        Audio is copied from ``audio_wav`` when given, else extracted from the video."""
        if overwrite or not has_frames(frames_dst):
            if video is None:
                self.missing.append(f"{clip}: no video found")
            else:
                self.jobs.append(Job(clip, "frames", frames_dst,
                                     lambda ff: extract_frames(ff, video, frames_dst, start, duration)))
        else:
            self.kept += 1
        if overwrite or not has_audio(audio_dst):
            if audio_wav is not None:
                self.jobs.append(Job(clip, "audio", audio_dst, lambda ff: copy_wav(audio_wav, audio_dst),
                                     needs_ffmpeg=False))
            elif audio_from_video and video is not None:
                self.jobs.append(Job(clip, "audio", audio_dst, lambda ff: extract_audio(ff, video, audio_dst)))
            else:
                self.missing.append(f"{clip}: no audio found")
        else:
            self.kept += 1


def run_jobs(jobs: list[Job], workers: int, log=print) -> list[str]:
    """Run the jobs (ffmpeg is looked up only if one needs it); returns failure messages."""
    if not jobs:
        return []
    ffmpeg = find_ffmpeg() if any(j.needs_ffmpeg for j in jobs) else None
    for folder in sorted({j.dst.parent for j in jobs}):
        folder.mkdir(parents=True, exist_ok=True)
    failures, done, step = [], 0, max(1, len(jobs) // 20)
    log(f"extracting: {len(jobs)} jobs, {workers} workers")
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(j.run, ffmpeg): j for j in jobs}
        for fut in as_completed(futures):
            job = futures[fut]
            try:
                fut.result()
            except (JobFailed, OSError) as e:
                failures.append(f"{job.clip} ({job.kind}): {e}")
            done += 1
            if done % step == 0 or done == len(jobs):
                log(f"  {done}/{len(jobs)} done, {len(failures)} failed, {time.monotonic() - t0:.0f}s")
    return sorted(failures)
