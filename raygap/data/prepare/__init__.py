"""``raygap prepare DATASET RAW_DIR OUT_DIR [--option KEY=VALUE ...] [--force]``: build the layout that the
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
(``overwrite=true`` redoes them), split lists already in OUT_DIR too (other lists need
``--force``: their digest is part of every trial's key), every output is written under a temporary name and renamed
when complete, and clips that fail are listed in ``OUT_DIR/prepare_failures.txt`` (exit 1).
Options common to all: ``workers=N`` (parallel ffmpeg processes), ``overwrite=true``.

One module a job: ``options`` (what ``--option`` accepts), ``layouts`` (each dataset's download
read into a plan), ``jobs`` (extracting and copying, one clip at a time), and here
:func:`prepare`, which puts them together (the ``raygap prepare`` verb calls it).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ...atomic import atomic_write, refuse_link
from ...errors import DataError
from ...removal import remove
from ..splits import lists_digest, split_files
from .jobs import find_ffmpeg, run_jobs
from .layouts import PLANNERS
from .options import parse_options

FAILURES_FILE = "prepare_failures.txt"
REPORT_FILE = "prepare_report.json"
ADVICE = "nothing else was changed; fix this and run `raygap prepare` again"


def _lists_to_replace(dataset: str, out: Path, texts: dict[str, bytes], force: bool) -> str | None:
    """None when every list ``texts`` holds is in ``out`` as it is, or not there yet; else the
    line saying what ``--force`` replaces (without ``force``: a :class:`DataError` saying so)."""
    have = {n: (out / n).read_bytes() for n in texts if (out / n).is_file()}
    differ = sorted(n for n, b in have.items() if b != texts[n])
    if not differ:
        return None
    names = set(sum(split_files(dataset), ()))
    old = lists_digest({n: b for n, b in have.items() if n in names})
    new = lists_digest({n: b for n, b in {**have, **texts}.items() if n in names})
    what = f"{', '.join(differ)} in {out} (split digest {old}) with other lists (split digest {new})"
    if not force:
        raise DataError(f"{out}: holds other split lists than this prepare makes ({', '.join(differ)}; "
                        f"split digest {old} there, {new} here): kept; pass --force to replace them "
                        f"(trials on each split keep their own keys)")
    return f"{dataset}: --force: replacing {what}; trials on the old split keep their own keys"


def prepare(dataset: str, raw_dir: str | os.PathLike, out_dir: str | os.PathLike,
            options: dict[str, Any] | None = None, log=print, force: bool = False) -> dict:
    """Build ``dataset``'s layout in ``out_dir`` from the downloads in ``raw_dir``, with
    ``options`` (``--option``'s strings, or typed values; checked by :func:`parse_options`).
    Split lists already in ``out_dir`` are kept; other lists than those there are a
    :class:`DataError` with nothing touched, unless ``force`` (then one line says what is replaced).

    Returns a report -- clips, split-list rows, jobs run, outputs kept, clips without
    source media, failures -- also written to ``out_dir/prepare_report.json``; clips with
    problems are listed in ``out_dir/prepare_failures.txt``. Neither is written through a link."""
    opts = parse_options(dataset, options)
    raw = Path(raw_dir).expanduser()
    out = Path(out_dir).expanduser()
    if not raw.is_dir():
        raise DataError(f"{raw}: raw download folder missing")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: OUT_DIR exists and is not a folder; give a folder (it is made if missing)")
    plan = PLANNERS[dataset](raw, out, opts)
    for name in [*plan.list_texts, REPORT_FILE, FAILURES_FILE]:
        refuse_link(out / name)           # fail before reading or writing anything there
    replaced = _lists_to_replace(dataset, out, plan.list_texts, force)
    if any(j.needs_ffmpeg for j in plan.jobs):
        find_ffmpeg()                     # fail before writing anything
    for note in plan.notes:
        log(f"{dataset}: {note}")
    if replaced:
        log(replaced)
    out.mkdir(parents=True, exist_ok=True)
    failures = run_jobs(plan.jobs, opts["workers"], log=log)
    for name, text in plan.list_texts.items():
        if not (out / name).is_file() or (out / name).read_bytes() != text:
            atomic_write(out / name, text, root=out, advice=ADVICE)

    report = {
        "dataset": dataset, "raw_dir": str(raw), "out_dir": str(out),
        "clips": len(plan.clips), "lists": plan.lists, "jobs": len(plan.jobs),
        "kept_existing": plan.kept, "missing_source": plan.missing, "failed": failures,
    }
    atomic_write(out / REPORT_FILE, json.dumps(report, indent=1), root=out, advice=ADVICE)
    problems = plan.missing + failures
    failures_path = out / FAILURES_FILE
    if problems:
        atomic_write(failures_path, "".join(f"{line}\n" for line in problems), root=out, advice=ADVICE)
    elif failures_path.exists():
        remove(failures_path, out)
    lists = ", ".join(f"{k} {v} rows" for k, v in plan.lists.items())
    log(f"{dataset}: {len(plan.clips)} clips ({lists}); {len(plan.jobs) - len(failures)} outputs written, "
        f"{plan.kept} kept, {len(problems)} problems"
        + (f" (listed in {failures_path})" if problems else "") + f" -> {out}")
    if opts["cache"] and len(plan.clips) > len(problems):
        from ...registry import DATASETS
        from ..cache import build_dataset

        entry = DATASETS.get(dataset)
        report["cache"] = [str(p) for p in build_dataset(dataset, entry.params(), str(out),
                                                         workers=opts["workers"], log=log)]
    return report
