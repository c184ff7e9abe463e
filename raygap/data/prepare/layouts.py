"""Each dataset's raw download, read into a :class:`~raygap.data.prepare.jobs.Plan`: its split
lists (given, found in RAW_DIR, or for CREMA-D generated: stratified and seeded) and the frame
and audio jobs of every clip they name whose outputs are not there yet."""
from __future__ import annotations

from pathlib import Path

from ...errors import ConfigError, DataError
from .. import ave, cremad, ks
from ..base import carve_validation
from .jobs import Plan, need_dir, need_file

CREMAD_TEST_FRACTION = 744 / 7442        # the paper's CREMA-D proportions (6698 train / 744 test)


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

    texts = {name: cremad.split_csv_text(r).encode() for name, r in rows.items()}
    clips = sorted({c for r in rows.values() for c, _ in r})
    plan = Plan("cremad", clips, texts, {k: len(v) for k, v in rows.items()}, notes=notes)
    for clip in clips:
        plan.queue(clip, opts["overwrite"], frames_dst=out / cremad.FRAMES_DIR / clip,
                   audio_dst=out / cremad.AUDIO_DIR / f"{clip}.wav", video=videos.get(clip),
                   audio_wav=wavs.get(clip), audio_from_video=False)
    return plan


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

    clips = sorted(listed)
    plan = Plan("ave", clips, {src.name: src.read_bytes() for src in lists}, counts)
    for vid in clips:
        start, end = segments[vid]
        plan.queue(vid, opts["overwrite"], frames_dst=out / ave.FRAMES_DIR / vid,
                   audio_dst=out / ave.AUDIO_DIR / f"{vid}.wav", video=videos.get(vid),
                   start=float(start), duration=float(end - start))
    return plan


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

    texts = {name: src.read_bytes() for name, src in sources.items()}
    if classes.is_file():
        texts[classes.name] = classes.read_bytes()
    plan = Plan("ks", sorted(clips), texts, counts)
    for clip in plan.clips:
        plan.queue(clip, opts["overwrite"], frames_dst=out / ks.FRAMES_DIR / clip,
                   audio_dst=out / ks.AUDIO_DIR / f"{clip}.wav", video=videos.get(clip))
    return plan


PLANNERS = {"cremad": plan_cremad, "ave": plan_ave, "ks": plan_ks}
