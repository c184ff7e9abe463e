"""Inputs that ended in a traceback or were taken silently (issue 25's list), each through a
real ``raygap`` process: one line naming what is wrong, exit 2, no traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TABLE3 = str(ROOT / "grids" / "table3.yaml")


def raygap(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raygap", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def one_line(r: subprocess.CompletedProcess) -> str:
    text = r.stdout + r.stderr
    assert r.returncode == 2 and "Traceback" not in text, text
    assert len(text.strip().splitlines()) == 1, text
    return text.strip()


@pytest.mark.parametrize("flag, value, words", [
    ("--max-failures", "-5", "--max-failures: expects a number of retries (at least 0), got -5"),
    ("--num-cpus", "0", "--num-cpus: expects a number of CPUs (at least 1), got 0"),
    ("--num-cpus", "two", "--num-cpus: expects an integer, got 'two'"),
])
def test_run_counts_out_of_range_are_refused(flag, value, words, tmp_path):
    line = one_line(raygap("run", TABLE3, "--profile", "demo", "--dry-run", flag, value, cwd=tmp_path))
    assert words in line, line


def test_a_5000_digit_integer_in_set_or_yaml(tmp_path):
    digits = "9" * 5000
    line = one_line(raygap("run", TABLE3, "--profile", "demo", "--dry-run", "--set", f"train.epochs={digits}",
                           cwd=tmp_path))
    assert "train.epochs" in line and "an integer of more than 4300 digits" in line, line
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"train: {{epochs: {digits}}}\n")
    line = one_line(raygap("train", str(cfg), cwd=tmp_path))
    assert str(cfg) in line and "an integer of more than 4300 digits" in line, line


def test_prepare_into_an_out_dir_that_is_a_file(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "out").write_text("a user's file\n")
    line = one_line(raygap("prepare", "ave", str(tmp_path / "raw"), str(tmp_path / "out"), cwd=tmp_path))
    assert f"{tmp_path / 'out'}: OUT_DIR exists and is not a folder" in line, line
    assert (tmp_path / "out").read_text() == "a user's file\n"


@pytest.mark.parametrize("vid, problem", [("..", "is a relative folder name"), (".", "is a relative folder name"),
                                          ("a/b", "holds a path separator"), ("x" * 201, "is longer than 200 bytes")])
def test_a_clip_id_that_is_not_one_file_name_touches_nothing(vid, problem, tmp_path):
    """A split list names a clip ``..``: its frames folder would be OUT itself (issue 25: prepare
    then replaced it). One line naming the list, the line and the id; OUT is left as it was."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    (raw / "AVE").mkdir(parents=True)
    out.mkdir()
    (out / "keep.txt").write_text("a user's file\n")
    good = "Church bell&abc&good&0&1\n"
    (raw / "trainSet.txt").write_text(good + f"Church bell&{vid}&good&0&1\n")
    for name in ("testSet.txt", "valSet.txt"):
        (raw / name).write_text(good)
    line = one_line(raygap("prepare", "ave", str(raw), str(out), cwd=tmp_path))
    assert f"{raw / 'trainSet.txt'}:2: clip id {vid!r} {problem}" in line, line
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_a_row_label_with_a_newline_is_one_line(tmp_path):
    # it would break its table.md row and its LaTeX line; the description may span lines (it is
    # printed on one, see test_store_export)
    grid = tmp_path / "g.yaml"
    grid.write_text('name: g\ndescription: "two\\nlines"\nrows: {"A\\nB": {}}\ncolumns: {data.name: [avdigits]}\n')
    line = one_line(raygap("run", str(grid), "--dry-run", cwd=tmp_path))
    assert str(grid) in line and "rows" in line and "holds a newline" in line and "'A B'" in line, line
