"""A project of one's own: `raygap init DIR` writes the project examples/own_method holds (a method
and a dataset as plug-in files, a grid beside Concat, OGM-GE and PMR, a profile, a README, a
test), refuses a folder with anything in it, and the project runs as its README says through a
real `raygap` process on the embedded Ray. A profile the project lacks is raygap's own, said."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _proc import raygap  # noqa: E402

from raygap.errors import ConfigError  # noqa: E402
from raygap.gridfile import PROFILES_DIR, load_profile  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "own_method"


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and "results" not in p.relative_to(folder).parts}


def test_init_writes_the_example_project_and_refuses_a_folder_with_anything_in_it(tmp_path):
    code, out, err = raygap("init", str(tmp_path / "proj"), timeout=60)
    assert code == 0, err
    written = files_of(tmp_path / "proj")
    assert written == files_of(EXAMPLE)                 # examples/own_method is what init writes
    assert {"README.md", "my_method.py", "my_data.py", "grids/mine.yaml", "grids/profiles/demo.yaml",
            "tests/test_mine.py"} <= set(written)
    grid = yaml.safe_load(written["grids/mine.yaml"])
    assert grid["plugins"] == ["../my_method.py", "../my_data.py"]
    assert [r["method"]["name"] for r in grid["rows"].values()] == ["concat", "ogm_ge", "pmr", "mine"]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine\n")
    for target in (tmp_path / "full", tmp_path / "full" / "notes.txt"):
        code, out, err = raygap("init", str(target), timeout=60)
        assert code == 2 and err.count("\n") == 1 and str(target) in err and "Traceback" not in err, err
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine\n" and len(list((tmp_path / "full").iterdir())) == 1


def test_the_example_project_runs_as_its_readme_says(tmp_path):
    """The README's command, word for word, from the project's folder (a copy: its results stay out
    of the repository): 4 rows x 2 seeds of 4 epochs on the CPU, its table written."""
    project = tmp_path / "own_method"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("results", "__pycache__"))
    readme = (project / "README.md").read_text()
    commands = re.findall(r"```\n(raygap run [^\n]*)\n```", readme)
    assert commands == ["raygap run grids/mine.yaml --profile demo"], commands
    code, out, err = raygap(*commands[0].split()[1:], cwd=project, timeout=600)
    assert code == 0, out + err
    assert "8 distinct trial(s): 0 reused from the store, 8 run now, 0 failed" in out, out
    assert "raygap's own" not in err                    # the project's own demo profile, not raygap's
    table = (project / "results" / "mine" / "demo" / "table.md").read_text()
    for row in ("Concat", "OGM-GE", "PMR", "Mine"):
        assert re.search(rf"^\| {row} \| \d+\.\d\d ± \d+\.\d\d \(n=2\)", table, re.M), table


def test_the_example_projects_own_test_passes(tmp_path):
    project = tmp_path / "own_method"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("results", "__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=project,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]


def test_a_profile_the_project_lacks_is_raygaps_own_and_said(tmp_path):
    (tmp_path / "grids" / "profiles").mkdir(parents=True)
    g = tmp_path / "grids" / "g.yaml"
    g.write_text("name: g\nrows: {A: {}}\nbase: {model: {backbone: small, width: 4}, train: {epochs: 1}}\n")
    (tmp_path / "grids" / "profiles" / "demo.yaml").write_text("overlay: {train: {epochs: 2}}\nseeds: [7]\n")
    own = load_profile("demo", grid_dir=g.parent)
    assert own["_path"] == str(tmp_path / "grids" / "profiles" / "demo.yaml") and own["_note"] is None
    assert own["seeds"] == [7]
    theirs = load_profile("paper", grid_dir=g.parent)
    assert theirs["_path"] == str(PROFILES_DIR / "paper.yaml")
    assert theirs["_note"] == (f"profile paper: raygap's own ({PROFILES_DIR / 'paper.yaml'}); "
                               f"{tmp_path / 'grids' / 'profiles'} has no paper.yaml")
    with pytest.raises(ConfigError, match=r"no profile 'dmeo' in .* \(choices: demo, demo_tuned, paper; nearest: 'demo'\)"):
        load_profile("dmeo", grid_dir=g.parent)
    # through the command: the project's own demo (seed 7), raygap's paper said in one line
    code, out, err = raygap("run", str(g), "--profile", "demo", "--dry-run", "--results", str(tmp_path / "r"),
                            timeout=120)
    assert code == 0 and "seed 7" in out and err == "", (out, err)
    code, out, err = raygap("run", str(g), "--profile", "paper", "--dry-run", "--results", str(tmp_path / "r"),
                            timeout=120)
    assert code == 0 and err.splitlines() == [f"raygap: {theirs['_note']}"], (out, err)
