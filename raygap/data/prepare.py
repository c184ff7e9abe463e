"""``raygap prepare DATASET RAW_DIR OUT_DIR [--option KEY=VALUE ...]``: build the layout that the
``cremad``, ``ave`` and ``ks`` loaders read (docs/datasets.md) from the public downloads.

* **cremad** -- RAW_DIR holds ``AudioWAV/*.wav`` and ``VideoFlash/*.flv`` (the CREMA-D
  repository). WAVs are copied unchanged to ``AudioWAV/`` (the loader resamples them), frames
  are extracted at 1 fps to ``Image-01-FPS/<clip>/%05d.jpg``, and ``train.csv`` / ``test.csv``
  (``clip,LABEL``; the label is the clip name's third field) are copied from
  ``train_csv=`` / ``test_csv=`` or from RAW_DIR when it has them, else generated: a
  stratified, seeded split holding out 744/7442 of the clips (the paper's 6698 / 744).
* **ave** -- RAW_DIR holds ``AVE/<vid>.mp4``, ``trainSet.txt``, ``valSet.txt``, ``testSet.txt``
  (and ``Annotations.txt``). Frames at 1 fps *within the event segment* go to
  ``Image-01-FPS-SE/<vid>/``, the clip's audio as 16 kHz mono WAV to ``Audio/<vid>.wav``; the
  lists are copied.
* **ks** -- RAW_DIR holds ``<clip>.mp4`` files (searched recursively, so class sub-folders
  are fine) and ``my_train.txt`` / ``my_test.txt`` (or ``train_list=`` / ``test_list=``).
  Frames at 1 fps go to ``Image-01-FPS/<clip>/``, audio as 16 kHz mono WAV to
  ``Audio/<clip>.wav``; the lists (and ``classes.txt`` if present) are copied.

Video decoding uses the system's ``ffmpeg`` from PATH (``apt-get install ffmpeg``); it is only
needed when frames or audio are still to be extracted. Outputs already present are kept
(``overwrite=true`` redoes them), every output is written under a temporary name and renamed
when complete, and clips that fail are listed in ``OUT_DIR/prepare_failures.txt`` (exit 1).
Options common to all: ``workers=N`` (parallel ffmpeg processes), ``overwrite=true``.
"""
from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf

from ..errors import ConfigError, DataError
from . import ave, cremad, ks
from .base import carve_validation
from .media import IMAGE_SUFFIXES, WAV_HEADER_BYTES, list_frames, unreadable_audio

AUDIO_RATE = 16000                       # AVE and KS audio written as 16 kHz mono PCM
CREMAD_TEST_FRACTION = 744 / 7442        # the paper's CREMA-D proportions (6698 train / 744 test)
FAILURES_FILE = "prepare_failures.txt"
REPORT_FILE = "prepare_report.json"
FFMPEG_MISSING = ("ffmpeg not found (neither on PATH nor from the imageio-ffmpeg package): `raygap prepare` "
                  "extracts frames and audio with it; install one (`pip install imageio-ffmpeg`, or the "
                  "system's: `apt-get install ffmpeg`) and run again")


# ----------------------------------------------------------------------------- options
@dataclass(frozen=True)
class Option:
    type: type
    default: Any
    help: str


COMMON_OPTIONS = {
    "workers": Option(int, min(8, os.cpu_count() or 1), "parallel ffmpeg processes"),
    "overwrite": Option(bool, False, "redo outputs that already exist"),
    "cache": Option(bool, True, "then decode the layout into the tensor cache (`raygap cache`: the "
                                "dataset's default frames and image size) for data.pipeline: cache"),
}
DATASET_OPTIONS: dict[str, dict[str, Option]] = {
    "cremad": {
        "train_csv": Option(str, "", "use this train.csv instead of generating one"),
        "test_csv": Option(str, "", "use this test.csv instead of generating one"),
        "seed": Option(int, 0, "seed of the generated train / test split"),
        "test_fraction": Option(float, CREMAD_TEST_FRACTION, "share of clips held out for test when generating"),
    },
    "ave": {},
    "ks": {
        "train_list": Option(str, "", "my_train.txt to use (default: RAW_DIR/my_train.txt)"),
        "test_list": Option(str, "", "my_test.txt to use (default: RAW_DIR/my_test.txt)"),
    },
}


def _convert(key: str, value: Any, opt: Option) -> Any:
    if opt.type is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"expected true/false, got {value!r}", key=key)
    try:
        return opt.type(value)
    except (TypeError, ValueError):
        raise ConfigError(f"expected {opt.type.__name__}, got {value!r}", key=key) from None


def parse_options(dataset: str, options: dict[str, Any]) -> dict[str, Any]:
    """Validate ``options`` (strings from the command line, or typed values) and fill defaults."""
    if dataset not in DATASET_OPTIONS:
        near = difflib.get_close_matches(dataset, list(DATASET_OPTIONS), n=1, cutoff=0.0)
        raise ConfigError(f"cannot prepare {dataset!r} (choices: {', '.join(DATASET_OPTIONS)})",
                          key="dataset", hint=f"nearest: {near[0]!r}" if near else None)
    spec = {**COMMON_OPTIONS, **DATASET_OPTIONS[dataset]}
    out = {k: o.default for k, o in spec.items()}
    for key, value in (options or {}).items():
        if key not in spec:
            near = difflib.get_close_matches(key, list(spec), n=1, cutoff=0.0)
            raise ConfigError(f"unknown option for {dataset} (options: {', '.join(spec)})",
                              key=f"--option {key}", hint=f"nearest: {near[0]!r}" if near else None)
        out[key] = _convert(f"--option {key}", value, spec[key])
    if out["workers"] < 1:
        raise ConfigError("must be at least 1", key="--option workers")
    if "seed" in out and out["seed"] < 0:
        raise ConfigError("must be 0 or more", key="--option seed")
    if "test_fraction" in out and not 0 < out["test_fraction"] < 1:
        raise ConfigError("must be between 0 and 1", key="--option test_fraction")
    return out


# ----------------------------------------------------------------------------- ffmpeg and files
def find_ffmpeg() -> str:
    from ..system import ffmpeg_exe

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
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        seek = ["-ss", f"{start:g}"] if start else []
        span = ["-t", f"{duration:g}"] if duration else []
        run_ffmpeg(ffmpeg, [*seek, "-i", str(video), *span, "-vf", "fps=1", "-q:v", "2",
                            str(tmp / "%05d.jpg")], video)
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in tmp.iterdir()):
            raise JobFailed(f"{video}: ffmpeg wrote no frames")
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
        tmp.unlink(missing_ok=True)


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
        tmp.unlink(missing_ok=True)


def copy_list(src: Path, dst: Path) -> None:
    """Copy a split list into the layout (nothing to do when it is already there)."""
    if dst.exists() and os.path.samefile(src, dst):
        return
    tmp = _tmp_path(dst)
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder missing")
    return path


def need_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: {what} missing")
    return path


# ----------------------------------------------------------------------------- jobs
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
    write_lists: Callable[[], None]                       # writes the split lists into OUT_DIR
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


# ----------------------------------------------------------------------------- CREMA-D
def cremad_label(clip: str) -> str:
    """The emotion label of a CREMA-D clip name (third field): ``1001_DFA_ANG_XX`` -> ``ANG``."""
    label = cremad.emotion_of(clip)
    if label not in cremad.CLASS_NAMES:
        raise ValueError(f"{clip!r}: emotion {label!r} is not one of {' '.join(cremad.CLASS_NAMES)}")
    return label


def cremad_split_rows(clips: list[str], test_fraction: float = CREMAD_TEST_FRACTION,
                      seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """A stratified, seeded train / test split of clip names: (train rows, test rows) as
    sorted ``(clip, LABEL)`` pairs; ``test_fraction`` of each emotion is held out."""
    clips = sorted(clips)
    labels = [cremad_label(c) for c in clips]
    codes = [cremad.CLASS_NAMES.index(y) for y in labels]
    tr, te = carve_validation(codes, test_fraction, seed)
    return [(clips[i], labels[i]) for i in tr], [(clips[i], labels[i]) for i in te]


def plan_cremad(raw: Path, out: Path, opts: dict) -> Plan:
    wav_dir = need_dir(raw / cremad.AUDIO_DIR, "CREMA-D AudioWAV")
    flv_dir = need_dir(raw / "VideoFlash", "CREMA-D VideoFlash")
    wavs = {p.stem: p for p in wav_dir.glob("*.wav")}
    videos = {p.stem: p for p in flv_dir.iterdir() if p.suffix.lower() in (".flv", ".mp4")}
    notes = []

    # split lists: given as options, found in RAW_DIR, or generated from the clips present
    given = (opts["train_csv"], opts["test_csv"])
    if any(given) and not all(given):
        raise ConfigError("give both train_csv= and test_csv= (or neither)", key="--option train_csv")
    if not any(given) and (raw / cremad.TRAIN_LIST).is_file() and (raw / cremad.TEST_LIST).is_file():
        given = (str(raw / cremad.TRAIN_LIST), str(raw / cremad.TEST_LIST))
    rows: dict[str, list[tuple[str, str]]] = {}
    if all(given):
        for name, src in zip((cremad.TRAIN_LIST, cremad.TEST_LIST), given):
            path = need_file(Path(src).expanduser(), f"CREMA-D {name}")
            rows[name] = []
            for clip, label, line in cremad.read_split_csv(path):
                if label not in cremad.CLASS_NAMES:
                    raise DataError(f"{path}:{line}: label {label!r} is not one of {' '.join(cremad.CLASS_NAMES)}")
                rows[name].append((clip, label))
        notes.append(f"split lists copied from {given[0]} and {given[1]}")
    else:
        usable = []
        for clip in sorted(set(wavs) & set(videos)):
            try:
                cremad_label(clip)
                usable.append(clip)
            except ValueError as e:
                notes.append(f"ignored {e}")
        rows[cremad.TRAIN_LIST], rows[cremad.TEST_LIST] = cremad_split_rows(
            usable, opts["test_fraction"], opts["seed"])
        notes.append(f"split lists generated from the {len(usable)} clips with both a WAV and a video: "
                     f"stratified, test fraction {opts['test_fraction']:.5f}, seed {opts['seed']}")

    def write_lists() -> None:
        for name, r in rows.items():
            cremad.write_split_csv(out / name, r)

    clips = sorted({c for r in rows.values() for c, _ in r})
    plan = Plan("cremad", clips, write_lists, {k: len(v) for k, v in rows.items()}, notes=notes)
    for clip in clips:
        plan.queue(clip, opts["overwrite"], frames_dst=out / cremad.FRAMES_DIR / clip,
                   audio_dst=out / cremad.AUDIO_DIR / f"{clip}.wav", video=videos.get(clip),
                   audio_wav=wavs.get(clip), audio_from_video=False)
    return plan


# ----------------------------------------------------------------------------- AVE
def plan_ave(raw: Path, out: Path, opts: dict) -> Plan:
    lists = [need_file(raw / name, f"AVE {name}") for name in ave.LISTS.values()]
    if (raw / ave.ANNOTATIONS).is_file():
        lists.append(raw / ave.ANNOTATIONS)
    video_dir = raw / "AVE" if (raw / "AVE").is_dir() else raw
    videos = {p.stem: p for p in video_dir.glob("*.mp4")}
    counts: dict[str, int] = {}
    listed: set[str] = set()
    segments: dict[str, tuple[int, int]] = {}       # vid -> event (start, end); split lists come first
    for path in lists:
        rows = ave.read_ave_list(path)
        if path.name != ave.ANNOTATIONS:
            counts[path.name] = len(rows)
            listed.update(r.vid for r in rows)
        for r in rows:
            segments.setdefault(r.vid, (r.start, r.end))

    def write_lists() -> None:
        for src in lists:
            copy_list(src, out / src.name)

    clips = sorted(listed)
    plan = Plan("ave", clips, write_lists, counts)
    for vid in clips:
        start, end = segments[vid]
        plan.queue(vid, opts["overwrite"], frames_dst=out / ave.FRAMES_DIR / vid,
                   audio_dst=out / ave.AUDIO_DIR / f"{vid}.wav", video=videos.get(vid),
                   start=float(start), duration=float(end - start))
    return plan


# ----------------------------------------------------------------------------- Kinetics-Sounds
def plan_ks(raw: Path, out: Path, opts: dict) -> Plan:
    sources = {
        ks.TRAIN_LIST: Path(opts["train_list"]).expanduser() if opts["train_list"] else raw / ks.TRAIN_LIST,
        ks.TEST_LIST: Path(opts["test_list"]).expanduser() if opts["test_list"] else raw / ks.TEST_LIST,
    }
    counts, clips = {}, set()
    for name, src in sources.items():
        rows = ks.read_ks_list(need_file(src, f"Kinetics-Sounds {name}"))
        counts[name] = len(rows)
        clips.update(c for c, _, _ in rows)
    out_abs = out.resolve()
    videos: dict[str, Path] = {}
    for p in sorted(raw.rglob("*.mp4")):
        if out_abs in p.resolve().parents and out_abs != raw.resolve():
            continue                                  # OUT_DIR inside RAW_DIR: not a source
        videos.setdefault(p.stem, p)
    classes = raw / "classes.txt"

    def write_lists() -> None:
        for name, src in sources.items():
            copy_list(src, out / name)
        if classes.is_file():
            copy_list(classes, out / classes.name)

    plan = Plan("ks", sorted(clips), write_lists, counts)
    for clip in plan.clips:
        plan.queue(clip, opts["overwrite"], frames_dst=out / ks.FRAMES_DIR / clip,
                   audio_dst=out / ks.AUDIO_DIR / f"{clip}.wav", video=videos.get(clip))
    return plan


PLANNERS = {"cremad": plan_cremad, "ave": plan_ave, "ks": plan_ks}


# ----------------------------------------------------------------------------- entry points
def prepare(dataset: str, raw_dir: str | os.PathLike, out_dir: str | os.PathLike, log=print,
            **options) -> dict:
    """Build ``dataset``'s layout in ``out_dir`` from the downloads in ``raw_dir``.

    Returns a report -- clips, split-list rows, jobs run, outputs kept, clips without
    source media, failures -- also written to ``out_dir/prepare_report.json``; clips with
    problems are listed in ``out_dir/prepare_failures.txt``."""
    opts = parse_options(dataset, options)
    raw = Path(raw_dir).expanduser()
    out = Path(out_dir).expanduser()
    if not raw.is_dir():
        raise DataError(f"{raw}: raw download folder missing")
    plan = PLANNERS[dataset](raw, out, opts)
    for note in plan.notes:
        log(f"{dataset}: {note}")
    if any(j.needs_ffmpeg for j in plan.jobs):
        find_ffmpeg()                     # fail before writing anything
    out.mkdir(parents=True, exist_ok=True)
    failures = run_jobs(plan.jobs, opts["workers"], log=log)
    plan.write_lists()

    report = {
        "dataset": dataset, "raw_dir": str(raw), "out_dir": str(out),
        "clips": len(plan.clips), "lists": plan.lists, "jobs": len(plan.jobs),
        "kept_existing": plan.kept, "missing_source": plan.missing, "failed": failures,
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=1))
    problems = plan.missing + failures
    failures_path = out / FAILURES_FILE
    if problems:
        failures_path.write_text("".join(f"{line}\n" for line in problems))
    elif failures_path.exists():
        failures_path.unlink()
    lists = ", ".join(f"{k} {v} rows" for k, v in plan.lists.items())
    log(f"{dataset}: {len(plan.clips)} clips ({lists}); {len(plan.jobs) - len(failures)} outputs written, "
        f"{plan.kept} kept, {len(problems)} problems"
        + (f" (listed in {failures_path})" if problems else "") + f" -> {out}")
    if opts["cache"] and len(plan.clips) > len(problems):
        from ..registry import DATASETS
        from .cache import build_dataset

        entry = DATASETS.get(dataset)
        report["cache"] = [str(p) for p in build_dataset(dataset, entry.params(), str(out),
                                                         workers=opts["workers"], log=log)]
    return report


def main_prepare(dataset: str, raw_dir: str, out_dir: str, options: dict) -> int:
    """The ``raygap prepare`` verb: 0 when every clip is ready, 1 when some failed or lack
    source media (listed in OUT_DIR/prepare_failures.txt), 2 on bad input (one line)."""
    try:
        report = prepare(dataset, raw_dir, out_dir, **(options or {}))
    except ConfigError as e:
        print(f"raygap: error: {e.line()}", file=sys.stderr)
        return 2
    except DataError as e:
        print(f"raygap: data error: {e}", file=sys.stderr)
        return 2
    return 1 if (report["failed"] or report["missing_source"]) else 0
