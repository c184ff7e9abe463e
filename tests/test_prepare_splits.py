"""`raygap prepare` keeps the split lists it finds in OUT (a different split needs --force and
says what it replaces), writes no report through a link, and the split lists' digest is part of
a trial's key (issue 25: a second prepare replaced the lists and trials on both splits shared
one table cell). Every refusal through a real ``raygap`` process: one line, exit 2."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from raygap.config import resolve
from raygap.data.splits import check_split, lists_digest
from raygap.errors import DataError
from test_real_datasets import EMOTIONS, write_frames, write_wav


def raygap(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raygap", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=180)


def cremad_raw(raw: Path, out: Path) -> list[str]:
    """12 CREMA-D clips (a WAV and a stand-in video each) and, in OUT, their frames (no ffmpeg needed)."""
    clips = [f"{a}_DFA_{e}_XX" for a in (1001, 1002) for e in EMOTIONS]
    (raw / "VideoFlash").mkdir(parents=True)
    for c in clips:
        write_wav(raw / "AudioWAV" / f"{c}.wav", 16000, 0.5, 440.0)
        (raw / "VideoFlash" / f"{c}.flv").write_bytes(b"FLV")
        write_frames(out / "Image-01-FPS" / c)
    return clips


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_split_lists_are_kept_and_a_different_split_needs_force(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    clips = cremad_raw(raw, out)
    r = raygap("prepare", "cremad", raw, out, "--option", "cache=false", "--option", "seed=0", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    first = snapshot(out)
    train0, test0 = first["train.csv"][0], first["test.csv"][0]
    assert len(train0.splitlines()) + len(test0.splitlines()) == 12

    # the same split again: the lists are kept as they are (not rewritten)
    r = raygap("prepare", "cremad", raw, out, "--option", "cache=false", "--option", "seed=0", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    again = snapshot(out)
    assert again["train.csv"] == first["train.csv"] and again["test.csv"] == first["test.csv"]

    # another split without --force: one line, exit 2, nothing touched
    r = raygap("prepare", "cremad", raw, out, "--option", "cache=false", "--option", "seed=1", cwd=tmp_path)
    text = r.stdout + r.stderr
    assert r.returncode == 2 and "Traceback" not in text and len(text.strip().splitlines()) == 1, text
    old = lists_digest({"train.csv": train0, "test.csv": test0})
    assert f"{out}: holds other split lists than this prepare makes (test.csv, train.csv; split digest {old} there" \
        in text and "pass --force to replace them" in text, text
    assert snapshot(out) == again

    # with --force: one line says what it replaces, and the lists are the seed-1 split
    r = raygap("prepare", "cremad", raw, out, "--option", "cache=false", "--option", "seed=1", "--force",
               cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    said = [ln for ln in r.stdout.splitlines() if "--force" in ln]
    assert len(said) == 1 and said[0].startswith(f"cremad: --force: replacing test.csv, train.csv in {out} "
                                                 f"(split digest {old}) with other lists"), r.stdout
    train1, test1 = (out / "train.csv").read_bytes(), (out / "test.csv").read_bytes()
    assert (train1, test1) != (train0, test0)
    assert sorted(ln.split(",")[0] for ln in (train1 + test1).decode().splitlines()) == sorted(clips)
    assert f"split digest {lists_digest({'train.csv': train1, 'test.csv': test1})})" in said[0]


@pytest.mark.parametrize("name", ["prepare_report.json", "prepare_failures.txt", "train.csv"])
def test_no_report_or_list_is_written_through_a_link(name, tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    cremad_raw(raw, out)
    (raw / "VideoFlash" / "1001_DFA_NEU_XX.flv").unlink()      # one clip's video gone: a failures file is due
    (out / "Image-01-FPS" / "1001_DFA_NEU_XX").rename(tmp_path / "moved")
    victim = tmp_path / "victim.txt"
    victim.write_text("a user's file\n")
    (out / name).symlink_to(victim)
    r = raygap("prepare", "cremad", raw, out, "--option", "cache=false", cwd=tmp_path)
    text = r.stdout + r.stderr
    assert r.returncode == 2 and "Traceback" not in text and len(text.strip().splitlines()) == 1, text
    assert f"{out / name}: is a symlink (to {victim}): raygap does not write through it" in text, text
    assert victim.read_text() == "a user's file\n" and (out / name).is_symlink()
    assert not (out / "AudioWAV").exists() and not any(p.name.endswith(".csv") and not p.is_symlink()
                                                       for p in out.iterdir())


def test_lists_digest_by_hand():
    # sha256 over each list in name order: name, NUL, length as 8 big-endian bytes, bytes
    a, b = b"x,ANG\n", b"y,SAD\n"
    h = hashlib.sha256(b"test.csv\0" + bytes([0] * 7 + [6]) + b + b"train.csv\0" + bytes([0] * 7 + [6]) + a)
    assert lists_digest({"train.csv": a, "test.csv": b}) == h.hexdigest()[:12]


def test_the_split_digest_is_part_of_the_trial_key(tmp_path, monkeypatch):
    monkeypatch.delenv("RAYGAP_DATA", raising=False)
    root = tmp_path / "cremad"
    cfg = resolve({"data": {"name": "cremad", "root": str(root)}})
    no_lists = cfg.key()
    assert no_lists == cfg.key(split=None)              # no lists here: the key as before digests
    root.mkdir()
    (root / "train.csv").write_text("1001_DFA_ANG_XX,ANG\n")
    assert cfg.key() == no_lists                        # a required list missing: no digest either
    (root / "test.csv").write_text("1002_DFA_ANG_XX,ANG\n")
    one = cfg.key()
    assert one != no_lists and one == cfg.key(split=lists_digest(
        {"train.csv": b"1001_DFA_ANG_XX,ANG\n", "test.csv": b"1002_DFA_ANG_XX,ANG\n"}))
    (root / "test.csv").write_text("1003_DFA_ANG_XX,ANG\n")       # another split: another key
    two = cfg.key()
    assert two not in (one, no_lists)
    # a worker finding other lists than those the trial was keyed with refuses it
    with pytest.raises(DataError, match="the split lists here .* are not those this trial was keyed with"):
        check_split(cfg, one)
    check_split(cfg, two)
    check_split(cfg, no_lists)                           # keyed where no lists were seen: accepted
    # an in-memory dataset has no split lists: its key does not depend on any folder
    demo = resolve({"data": {"name": "avdigits", "root": str(root)}})
    assert demo.key() == demo.key(split=None)
