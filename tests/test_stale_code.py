"""A stored trial of a method whose file was edited since is reported as stale, and
`--rerun stale` runs exactly those again -- through real raygap processes on a copy of the
package whose method file is edited."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from raygap.grid import load_grid
from raygap.registry import METHODS
from raygap.store import Store

ROOT = Path(__file__).resolve().parent.parent


def _raygap(copy: Path, *args):
    env = {**os.environ, "PYTHONPATH": str(copy)}
    return subprocess.run([sys.executable, "-m", "raygap", *args], capture_output=True, text=True, env=env,
                          cwd=copy, timeout=120)


def test_an_edited_method_file_makes_its_stored_trials_stale(tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "raygap", copy / "raygap", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "grids", copy / "grids")
    grid = load_grid(ROOT / "grids" / "table2.yaml", profile="demo")
    concat = [t.key for t in grid.trials if t.config.method.name == "concat"]
    other = next(t.key for t in grid.trials if t.config.method.name == "gblending")
    results = tmp_path / "results"
    results.mkdir()
    with Store(results / "store.sqlite") as st:         # as a finished run leaves them
        st.register(grid)
        for key in [*concat, other]:
            name = "concat" if key in concat else "gblending"
            st.mark_running(key, {})
            st.save_done(key, {"acc": 0.5}, [{"epoch": 0}], 1.0, {"method_source": METHODS.source(name)})

    method_file = copy / "raygap" / "methods" / "concat.py"
    method_file.write_text(method_file.read_text() + "\n# an edit that may change results\n")
    r = _raygap(copy, "status", "grids/table2.yaml", "--profile", "demo", "--results", str(results))
    assert r.returncode == 0, r.stderr
    warning = [line for line in r.stderr.splitlines() if "other code" in line]
    assert len(warning) == 1, r.stderr          # concat only: gblending's file did not change
    assert f"{len(concat)} stored trial(s) of method concat" in warning[0]
    assert "raygap/methods/concat.py changed since" in warning[0] and "--rerun stale" in warning[0]

    r = _raygap(copy, "run", "grids/table2.yaml", "--profile", "demo", "--results", str(results), "--dry-run",
                "--rerun", "stale")
    assert f"would forget {len(concat)} stored trial(s)" in r.stdout, r.stdout + r.stderr
    rerun = {re.search(r" ([0-9a-f]{16}) ", line).group(1) for line in r.stdout.splitlines()
             if line.rstrip().endswith(" rerun")}
    assert rerun == set(concat) and other not in rerun


def test_dry_run_marks_stale_trials(tmp_path, monkeypatch, capsys):
    """In process: a stored digest that is not the file's marks the trial `done (stale code)`."""
    from raygap.cli import main

    grid = load_grid(ROOT / "grids" / "table3.yaml", profile="demo")
    key = grid.trials[0].key
    with Store(tmp_path / "store.sqlite") as st:
        st.register(grid)
        st.mark_running(key, {})
        st.save_done(key, {"acc": 0.5}, [{"epoch": 0}], 1.0, {"method_source": "0" * 12})
    assert main(["run", str(ROOT / "grids" / "table3.yaml"), "--profile", "demo", "--results", str(tmp_path),
                 "--dry-run"]) == 0
    out, err = capsys.readouterr()
    marked = [line for line in out.splitlines() if "(stale code)" in line]
    assert len(marked) == 1 and key in marked[0] and "1 stored trial(s) of method gap_adaptive" in err
