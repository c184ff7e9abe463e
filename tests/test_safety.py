"""Data safety, as a user meets it: a real ``raygap run --profile demo`` subprocess, then
status / export / dry runs / train runs / damaged stores against what it left.

Covers: tables per profile and the defaults of status/export (never an emptier table),
non-destructive dry runs, ``train --fresh`` and a foreign checkpoint, symlinks in the
results, the umask, and the store faults (corrupt, truncated, locked, read-only, full)."""
from __future__ import annotations

import json
import shlex
import shutil
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from functools import partial
from pathlib import Path

import pytest
import yaml

from _proc import Raygap, mount_namespace, raygap
from raygap.cli import main as cli_main
from raygap.store import Store
from _tiny import avdigits

# rows win over the profile: the demo profile's avdigits column, seeds [0, 1, 2] and CPU
# resources, with one tiny epoch per trial
ROW = {"method": {"name": "concat"}, "model": {"width": 4}, "train": {"epochs": 1, "batch_size": 256}}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One real demo-profile run of a small grid; tests copy its results before damaging them."""
    d = tmp_path_factory.mktemp("demo")
    g = d / "t3.yaml"
    g.write_text(yaml.safe_dump({"name": "t3", "base": {"method": {"name": "concat"}}, "rows": {"Concat": ROW},
                                 "columns": {"data.name": ["cremad", "ave", "ks"]}, "seeds": [0, 1, 2],
                                 "metrics": ["acc"], "resources": {"cpu": 4, "gpu": 0.5}}))
    code, out, err = raygap("run", g, "--profile", "demo", "--results", d / "results", "--num-cpus", "2", timeout=600)
    assert code == 0, out[-3000:] + err[-3000:]
    return g, d / "results"


def copy_results(demo, tmp_path) -> tuple[Path, Path]:
    g, results = demo
    shutil.copytree(results, tmp_path / "results", symlinks=True, ignore=shutil.ignore_patterns("ray"))
    return g, tmp_path / "results"


# ----------------------------------------------------------------------------- tables per profile
def test_status_and_export_default_to_the_profile_the_grid_ran_with(demo, tmp_path, capsys):
    g, results = copy_results(demo, tmp_path)
    table = results / "t3" / "demo" / "table.csv"
    before = table.read_text()
    assert "(n=3)" in before and "–" not in before
    code, out, err = raygap("status", g, "--results", results)
    assert code == 0 and "total: 3 done, 0 running, 0 stale, 0 failed, 0 interrupted, 0 missing" in out
    assert "profile demo: the settings t3 last ran with" in err
    code, out, err = raygap("export", g, "--results", results, "--format", "csv")
    assert code == 0 and out.strip() == before.strip() and "profile demo" in err
    assert table.read_text() == before
    # the grid's own (paper) settings are another table in another folder
    assert cli_main(["export", str(g), "--results", str(results), "--profile", "paper", "--format", "csv"]) == 0
    assert "– (0/3)" in capsys.readouterr().out
    assert table.read_text() == before and (results / "t3" / "paper" / "table.csv").exists()


def cli(capsys, *args) -> tuple[int, str, str]:
    """raygap's main() in this process (the checks below that a process boundary cannot change);
    the data-safety cases as a user meets them run ``raygap``, a real process."""
    capsys.readouterr()
    code = cli_main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_grid_that_never_ran_is_one_line(demo, tmp_path, capsys):
    g, results = copy_results(demo, tmp_path)
    other = tmp_path / "never.yaml"
    other.write_text(yaml.safe_dump({"name": "never", "rows": {"A": {}}}))
    for verb in ("status", "export"):
        code, out, err = (raygap if verb == "status" else partial(cli, capsys))(verb, str(other), "--results",
                                                                               str(results))
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert "grid 'never' has never run" in err and "--profile" in err
    assert not (results / "never").exists()


def test_export_never_replaces_a_table_with_an_emptier_one(demo, tmp_path, capsys):
    g, results = copy_results(demo, tmp_path)
    folder = results / "t3" / "demo"
    before = {p.name: p.read_text() for p in folder.glob("*.*")}
    key = load_keys(g, "demo")[0]
    Store(results / "store.sqlite").forget([key])          # one done trial less in the store
    code, _, err = raygap("export", str(g), "--results", str(results))
    assert code == 2 and "they hold 3 done cell(s), this export 2 of 3; pass --force" in err
    assert err.count("\n") == 2 and "Traceback" not in err                   # the profile note, the refusal
    assert {p.name: p.read_text() for p in folder.glob("*.*")} == before
    assert cli_main(["export", str(g), "--results", str(results), "--force"]) == 0
    assert json.loads((folder / "table.json").read_text())["done"] == 2


def test_a_table_json_whose_done_count_overflows_keeps_the_tables(demo, tmp_path):
    """``done: 1e999`` reads as infinity, which no count can be compared with (was a traceback)."""
    g, results = copy_results(demo, tmp_path)
    folder = results / "t3" / "demo"
    (folder / "table.json").write_text('{"done": 1e999}\n')
    before = {p.name: p.read_text() for p in folder.glob("*.*")}
    code, _, err = raygap("export", str(g), "--results", str(results))
    assert code == 2 and "Traceback" not in err and err.count("\n") == 2, err   # the profile note, the refusal
    assert f"{folder / 'table.json'} is unreadable" in err and "pass --force" in err
    assert {p.name: p.read_text() for p in folder.glob("*.*")} == before


def load_keys(g: Path, profile: str | None) -> list[str]:
    from raygap.grid import load_grid

    return [t.key for t in load_grid(g, profile=profile).trials]


def test_a_dry_run_never_forgets(demo, tmp_path, capsys):
    g, results = copy_results(demo, tmp_path)
    db = results / "store.sqlite"
    before = db.read_bytes()
    code, out, _ = raygap("run", str(g), "--profile", "demo", "--results", str(results), "--dry-run", "--rerun", "all")
    assert code == 0 and "would forget 3 stored trial(s)" in out and out.count(" rerun") == 3
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(*) FROM trials WHERE status='done'").fetchone()[0] == 3
    assert db.read_bytes() == before


# ----------------------------------------------------------------------------- symlinks, umask
def test_figures_never_write_through_a_symlink(demo, tmp_path, capsys):
    g, results = copy_results(demo, tmp_path)
    figs = results / "t3" / "demo" / "figures"
    png = sorted(figs.glob("*_accuracy.png"))[0]
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    png.unlink()
    png.symlink_to(victim)
    code, out, err = raygap("export", str(g), "--results", str(results))
    assert code == 2 and f"{png}: is a symlink (to {victim}): raygap does not write through it" in err, out + err
    assert victim.read_text() == "precious" and png.is_symlink()                   # refused, never written through
    # a folder under results that leads out of it is refused, whole
    shutil.rmtree(figs)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (results / "t3" / "demo").rename(tmp_path / "moved")
    (results / "t3" / "demo").symlink_to(outside)
    capsys.readouterr()
    assert cli_main(["export", str(g), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "is a symlink to" in err and "raygap does not write through it" in err
    assert list(outside.iterdir()) == []


def test_exported_files_follow_the_umask(demo, tmp_path):
    g, results = copy_results(demo, tmp_path)
    shutil.rmtree(results / "t3" / "demo")
    code, _, err = raygap("export", g, "--results", results, umask=0o002)
    assert code == 0, err
    files = list((results / "t3" / "demo").rglob("*.*"))
    assert len(files) >= 6
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {"0o664"}


# ----------------------------------------------------------------------------- raygap train
TRAIN = {"data": avdigits(visual_corrupt=0.3), "model": {"backbone": "small", "width": 4},
         "optim": {"lr": 0.1}, "train": {"epochs": 1, "batch_size": 256, "device": "cpu", "threads": 2}}


def test_train_fresh_removes_only_its_own_files_and_refuses_a_foreign_checkpoint(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(TRAIN))
    out = tmp_path / "work"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "sub").mkdir()
    code, _, err = raygap("train", str(cfg), "--out", str(out))
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == {"notes.txt", "sub", "config.json", "checkpoint.pt", "result.json"}
    # another config in the same folder: refused before anything is written
    other = tmp_path / "d.yaml"
    other.write_text(yaml.safe_dump({**TRAIN, "seed": 1}))
    before = (out / "result.json").read_bytes()
    code, _, err = raygap("train", str(other), "--out", str(out))
    assert code == 2 and err.count("\n") == 1 and "--out: holds trial" in err and "pass --fresh" in err
    assert (out / "result.json").read_bytes() == before
    # --fresh: only raygap's files go
    code, stdout, err = raygap("train", str(other), "--out", str(out), "--fresh")
    assert code == 0 and "--fresh: removed checkpoint.pt, config.json, result.json" in stdout, err
    assert (out / "notes.txt").read_text() == "mine" and (out / "sub").is_dir()
    assert json.loads((out / "result.json").read_text())["key"] == json.loads((out / "config.json").read_text())["key"]


def test_train_on_cuda_without_cuda_is_refused_at_load(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**TRAIN, "train": {**TRAIN["train"], "device": "cuda"}}))
    code, _, err = raygap("train", str(cfg), "--out", str(tmp_path / "o"))
    assert code == 2 and err.count("\n") == 1 and "train.device: cuda, but" in err, err
    assert "nearest valid choice: auto" in err and not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- store faults
def test_a_corrupt_or_truncated_store_is_one_line(demo, tmp_path, capsys):
    g, results = copy_results(demo, tmp_path)
    db = results / "store.sqlite"
    with sqlite3.connect(db) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    good = db.read_bytes()
    for damage in (b"this is not a database" * 200, good[: len(good) // 3]):
        for p in results.glob("store.sqlite-*"):
            p.unlink()
        db.write_bytes(damage)
        for i, args in enumerate((["status", str(g)], ["run", str(g), "--profile", "demo"])):
            code, _, err = (raygap if i == 0 else partial(cli, capsys))(*args, "--results", str(results))
            assert code == 2 and err.count("\n") == 1 and err.startswith(f"raygap: results error: {db}: "), err
            assert "not a readable SQLite trial store" in err and f"mv {db} {db}.bad" in err, err


def test_a_locked_store_is_waited_on_with_a_message(demo, tmp_path):
    g, results = copy_results(demo, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sqlite3, sys
        c = sqlite3.connect({str(results / 'store.sqlite')!r}, isolation_level=None)
        c.execute("BEGIN EXCLUSIVE")
        print("locked", flush=True)
        sys.stdin.readline()                 # held until the test says so
        c.execute("ROLLBACK")
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    run = Raygap("run", str(g), "--profile", "demo", "--results", str(results))   # all done: no Ray, one write
    line = run.wait_for("is locked by another process", timeout=120)
    assert "store.sqlite" in line and "waiting for it" in line and "Ctrl-C stops" in line
    time.sleep(3)
    assert run.p.poll() is None                         # still waiting, not failed
    holder.communicate("go\n", timeout=30)
    code, out = run.finish(120)
    assert code == 0 and "3 reused from the store" in out and "Traceback" not in out, out


def test_a_read_only_results_folder_can_still_be_inspected(demo, tmp_path):
    g, results = copy_results(demo, tmp_path)
    r = shlex.quote(str(results))
    with mount_namespace(f"mount --bind {r} {r}\nmount -o remount,ro,bind {r} {r}\n"
                         f"if touch {r}/probe 2>/dev/null; then echo {r} is writable; exit 1; fi") as inside:
        code, out, err = raygap("status", g, "--results", results, prefix=inside)
        assert code == 0 and "total: 3 done" in out, out + err
        code, _, err = raygap("run", g, "--profile", "demo", "--results", results, prefix=inside)
    assert code == 2 and err.count("\n") == 1 and "read-only" in err and "Traceback" not in err, err


def test_a_full_disk_is_one_line_and_loses_nothing(demo, tmp_path):
    g, results = copy_results(demo, tmp_path)
    mnt = tmp_path / "small"
    mnt.mkdir()
    size = sum(p.stat().st_size for p in results.rglob("*") if p.is_file()) + 2_000_000
    m, full = shlex.quote(str(mnt)), mnt / "results"
    with mount_namespace(f"mount -t tmpfs -o size={size} tmpfs {m}\ncp -a {shlex.quote(str(results))} {m}/results\n"
                         f"rm -rf {m}/results/t3/demo\nhead -c {size} /dev/zero > {m}/filler 2>/dev/null || true"
                         ) as inside:
        for args in (["export", g], ["run", g, "--profile", "demo", "--rerun", "all"]):
            code, _, err = raygap(*args, "--results", full, prefix=inside)
            errors = [ln for ln in err.splitlines() if "error" in ln]
            assert code == 2 and len(errors) == 1 and "the disk is full" in errors[0] and "Traceback" not in err, err
        code, out, err = raygap("status", g, "--results", full, prefix=inside)
    assert code == 0 and "total: 3 done" in out, out + err                 # nothing finished was lost
