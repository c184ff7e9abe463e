"""Every file raygap writes under results/ goes through one link-safe writer (raygap.atomic):
a figures folder that is a link out of the table folder, or a link where a table, a figure,
``.drawn.json``, ``figures/error.txt``, a report or a pulled mirror copy goes, is one line,
exit 2, with nothing written (issue 25: export wrote through both). Through real ``raygap
export`` / ``report`` / ``pull`` processes over a real store."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from raygap.store import Store
from raygap.store.mirror import Mirror
from test_figures import _finish, _grid


def raygap(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raygap", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def one_line(r: subprocess.CompletedProcess) -> str:
    """The one error line (beside export's note of which settings it reads: "no profile ...")."""
    text = r.stdout + r.stderr
    lines = [ln for ln in text.strip().splitlines() if "the settings figs last ran with" not in ln]
    assert r.returncode == 2 and "Traceback" not in text and len(lines) == 1, text
    return lines[0]


def results_with_one_done_trial(tmp_path: Path) -> Path:
    grid = _grid(tmp_path)
    with Store(tmp_path / "store.sqlite") as store:
        store.register(grid)
        _finish(store, grid.trials[0].key, 0.8)
    return tmp_path / "figs" / "noprofile"                 # the table folder export writes


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def test_a_figures_folder_linked_out_of_results_is_refused_with_nothing_written(tmp_path):
    tables = results_with_one_done_trial(tmp_path)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    tables.mkdir(parents=True)
    (tables / "figures").symlink_to(outside)
    line = one_line(raygap("export", tmp_path / "figs.yaml", "--results", tmp_path, cwd=tmp_path))
    assert f"{tables / 'figures'}: is a symlink to {outside}, outside {tables}: raygap does not write through it" \
        in line, line
    assert list(outside.iterdir()) == [] and files_under(tables) == ["figures"]      # no table either


@pytest.mark.parametrize("name", ["figures/error.txt", "figures/.drawn.json", "figures/A_seed0_accuracy.png",
                                  "figures/table_acc.png", "table.md", "table.json", "trials.csv"])
def test_a_link_where_export_writes_is_refused_with_nothing_written(name, tmp_path):
    tables = results_with_one_done_trial(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tables / name).parent.mkdir(parents=True, exist_ok=True)
    (tables / name).symlink_to(victim)
    line = one_line(raygap("export", tmp_path / "figs.yaml", "--results", tmp_path, cwd=tmp_path))
    assert f"{tables / name}: is a symlink (to {victim}): raygap does not write through it" in line, line
    assert victim.read_text() == "precious" and (tables / name).is_symlink()
    assert files_under(tables) == [name]                                             # nothing else written


def test_a_link_where_report_writes_is_refused_with_nothing_written(tmp_path):
    tables = results_with_one_done_trial(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    tables.mkdir(parents=True)
    (tables / "report.html").symlink_to(victim)
    line = one_line(raygap("report", tmp_path / "figs.yaml", "--results", tmp_path, cwd=tmp_path))
    assert f"{tables / 'report.html'}: is a symlink (to {victim}): raygap does not write through it" in line, line
    assert victim.read_text() == "precious" and files_under(tables) == ["report.html"]


def test_export_without_links_writes_tables_and_figures(tmp_path):
    # the positive control of the refusals above: the same store exports
    tables = results_with_one_done_trial(tmp_path)
    r = raygap("export", tmp_path / "figs.yaml", "--results", tmp_path, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert {"table.md", "trials.csv", "figures/.drawn.json", "figures/A_seed0_accuracy.png"} <= set(files_under(tables))


def test_pull_writes_no_mirror_copy_through_a_link(tmp_path):
    results_with_one_done_trial(tmp_path)
    storage = tmp_path / "bucket"
    m = Mirror(str(storage), tmp_path)
    assert m.push_store() is True
    table = tmp_path / "figs" / "noprofile" / "table.md"
    table.parent.mkdir(parents=True)
    table.write_text("| row | acc |\n")
    assert m.push_tables([table]) is True
    laptop = tmp_path / "laptop"
    (laptop / "figs" / "noprofile").mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (laptop / "figs" / "noprofile" / "table.md").symlink_to(victim)
    line = one_line(raygap("pull", "--storage", storage, "--results", laptop, cwd=tmp_path))
    assert f"{laptop / 'figs' / 'noprofile' / 'table.md'}: is a symlink (to {victim}): raygap does not write " \
           "through it" in line, line
    assert victim.read_text() == "precious" and files_under(laptop) == ["figs/noprofile/table.md"]   # no store either
    # a folder on the way that leads out of the results folder: refused as well
    (laptop / "figs" / "noprofile" / "table.md").unlink()
    (laptop / "figs" / "noprofile").rmdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (laptop / "figs" / "noprofile").symlink_to(outside)
    line = one_line(raygap("pull", "--storage", storage, "--results", laptop, cwd=tmp_path))
    assert "is a symlink to" in line and "raygap does not write through it" in line, line
    assert list(outside.iterdir()) == [] and not (laptop / "store.sqlite").exists()
