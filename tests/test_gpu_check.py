"""scripts/gpu_check.sh cannot rot: its CPU smoke mode runs every step (without Ray) and passes,
leaves only small files in $OUT and no temp folder; a failing or hanging step makes it exit 1
naming the step, and the steps after it still run; scripts/gpu_deps.py installs the carried
wheels a Python lacks, offline, and names a module the steps need that is missing."""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["deps", "env", "pytest", "data", "train", "resume", "warmup", "bench", "outputs"]


def gpu_check(tmp_path, *args, timeout=2300, **env):
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    tmp.mkdir(parents=True)
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), *args], capture_output=True, text=True,
                       cwd=tmp_path, timeout=timeout,
                       env={**os.environ, "OUT": str(out), "PYTHON": sys.executable, "TMPDIR": str(tmp), **env})
    return r, out, tmp


def rows(summary: str) -> dict[str, str]:
    lines = summary.splitlines()
    body = lines[1:lines.index("figures:")]
    return {line.split()[0]: line.split()[1] for line in body}


@pytest.mark.timeout(2400)       # ~4 min of CPU (2 cores); on a CPU shared with other work it took 7-11 min
def test_the_smoke_run_passes_every_step_and_keeps_only_small_outputs(tmp_path):
    r, out, tmp = gpu_check(tmp_path, "--smoke")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    summary = (out / "summary.txt").read_text()
    assert summary.splitlines()[0] == f"gpu_check (smoke): all {len(STEPS)} steps passed", summary
    assert rows(summary) == {s: "ok" for s in STEPS}, summary
    assert r.stdout.rstrip().endswith(summary.rstrip())
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".pt", ".tmp") or p.stat().st_size > 1_000_000], files
    assert {"summary.txt", "pytest.log", "bench.log", "resume.json", "warmup.json"} <= {p.name for p in files}
    assert (out / "train" / "result.json").is_file() and not (out / "train" / "checkpoint.pt").exists()
    assert not [p for p in tmp.iterdir() if p.name.startswith("raygap-gpu-check")]   # the work folder: removed
    # pytest -m gpu ran (its tests skip on the CPU); the bench printed its ratios
    assert "skipped" in (out / "pytest.log").read_text()
    assert "ratios:" in (out / "bench.log").read_text()
    # killed after epoch 0's checkpoint, run again: epochs 1 and 2 trained, the same history
    res = json.loads((out / "resume.json").read_text())
    assert (res["checkpoint_epoch"], res["resumed_epochs"], res["max_abs_diff"], res["ok"]) == (0, [1, 2], 0, True)
    assert res["first_exit"] == -9 and res["second_exit"] == 0
    # a variant started from the leader's warm-up (W = 1) trains epochs 1 and 2 only, as if alone
    w = json.loads((out / "warmup.json").read_text())
    assert (w["forked_trained_epochs"], w["warmup_from"], w["max_abs_diff"]) == ([1, 2], w["leader"], 0)
    assert w["variant"] != w["leader"] and w["other_differences"] == []
    for fig in ("resume: killed after epoch 0", "warmup: leader", "pytest -m gpu:", "bench: ratios:"):
        assert fig in summary, summary


def test_a_failing_step_fails_the_check_and_the_steps_after_it_still_run(tmp_path):
    r, out, _ = gpu_check(tmp_path, "--smoke", GPU_CHECK_STEPS="env,outputs", GPU_CHECK_FAIL="env")
    assert r.returncode == 1, r.stdout
    summary = (out / "summary.txt").read_text()
    assert summary.splitlines()[0] == "gpu_check (smoke): FAILED steps: env (of 2)", summary
    assert rows(summary) == {"env": "FAILED", "outputs": "ok"}
    assert "exit 3 (see env.log)" in summary


def test_a_hanging_step_is_stopped_and_the_total_time_limit_holds(tmp_path):
    # env hangs (sleep 3600): stopped at the 15 s left of GPU_CHECK_TOTAL_S; outputs then has no time
    r, out, _ = gpu_check(tmp_path, "--smoke", timeout=120, GPU_CHECK_STEPS="env outputs", GPU_CHECK_FAIL="env:hang",
                          GPU_CHECK_TOTAL_S="15")
    assert r.returncode == 1, r.stdout
    summary = (out / "summary.txt").read_text()
    assert summary.splitlines()[0] == "gpu_check (smoke): FAILED steps: env outputs (of 2)", summary
    assert "timed out after 15 s" in summary and "not run: out of time (GPU_CHECK_TOTAL_S=15)" in summary


def test_gpu_mode_without_a_usable_gpu_fails(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: GPU mode would pass")
    r, out, _ = gpu_check(tmp_path, timeout=300, GPU_CHECK_STEPS="env")
    assert r.returncode == 1, r.stdout
    assert (out / "summary.txt").read_text().splitlines()[0] == "gpu_check (gpu): FAILED steps: env (of 1)"
    assert "FAILED: CUDA is not usable here (torch.cuda.is_available() is False)" in (out / "env.log").read_text()


def test_bad_arguments_are_one_line_and_exit_2(tmp_path):
    r, _, _ = gpu_check(tmp_path, "--fast", timeout=60)
    assert (r.returncode, r.stderr) == (2, "gpu_check: unknown argument '--fast' (the only option is --smoke)\n")
    r, _, _ = gpu_check(tmp_path / "second", timeout=60, GPU_CHECK_STEPS="pytest,resum")
    assert r.returncode == 2 and r.stderr.startswith("gpu_check: GPU_CHECK_STEPS: no step 'resum' (steps: deps "), r.stderr


def make_wheel(folder: Path, dist: str, version: str, module: str, source: str) -> Path:
    """A minimal pure-Python wheel (PEP 427), written by hand: no download."""
    tag = f"{dist}-{version}"
    path = folder / f"{tag}-py3-none-any.whl"
    files = {f"{module}/__init__.py": source,
             f"{tag}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n",
             f"{tag}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{tag}.dist-info/RECORD"] = "".join(f"{n},,\n" for n in [*files, f"{tag}.dist-info/RECORD"])
    with zipfile.ZipFile(path, "w") as z:
        for n, text in files.items():
            z.writestr(n, text)
    return path


def test_gpu_deps_installs_only_the_missing_wheels_offline_into_the_target(tmp_path):
    import yaml

    wheels, target = tmp_path / "wheels", tmp_path / "site"
    wheels.mkdir()
    make_wheel(wheels, "raygap_probe", "1.0", "raygap_probe", "VALUE = 42\n")
    make_wheel(wheels, "PyYAML", "0.0.1", "yaml", "raise ImportError('the carried stand-in must not be used')\n")
    cmd = [sys.executable, str(ROOT / "scripts" / "gpu_deps.py"), "install", "--wheels", str(wheels), "--target", str(target)]
    env = {**os.environ, "PIP_NO_INDEX": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"deps: installed into {target} (offline, from {wheels}): raygap_probe 1.0\n" in r.stdout
    assert f"kept: pyyaml {yaml.__version__} (carried 0.0.1 not used)" in r.stdout
    assert (target / "raygap_probe" / "__init__.py").is_file() and not (target / "yaml").exists()
    env["PYTHONPATH"] = str(target)
    probe = subprocess.run([sys.executable, "-c", "import raygap_probe; print(raygap_probe.VALUE)"],
                           capture_output=True, text=True, env=env, timeout=60)
    assert probe.stdout == "42\n", probe.stderr
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)   # now present: kept
    assert again.returncode == 0 and "raygap_probe 1.0" in again.stdout and "deps: nothing to install" in again.stdout


def test_gpu_deps_check_names_a_module_the_steps_need_that_is_missing(tmp_path):
    blocked = tmp_path / "blocked" / "soundfile"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('no libsndfile here')\n")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_deps.py"), "check"], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(blocked.parent)}, timeout=300)
    assert r.returncode == 1, r.stdout
    assert ("deps: MISSING soundfile (soundfile): ImportError: no libsndfile here; "
            "bash scripts/gpu_wheels.sh fetches it into .gpu-wheels; carry .gpu-wheels\n") in r.stdout
    assert "scikit-learn" in r.stdout.splitlines()[0]        # the importable ones are listed


def test_histories_are_compared_without_timings_and_the_largest_difference_is_located():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_trials", ROOT / "scripts" / "gpu_trials.py")
    gt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gt)
    a = [{"epoch": 0, "val_acc": 0.5, "train_loss": 2.0, "train_seconds": 1.0, "device": "cuda:0 (H200)"},
         {"epoch": 1, "val_acc": 0.75, "train_loss": 1.5, "stage": "adaptive", "lr": 0.002}]
    b = [{"epoch": 0, "val_acc": 0.5, "train_loss": 2.125, "train_seconds": 9.0, "device": "cpu"},
         {"epoch": 1, "val_acc": 0.5, "train_loss": 1.5, "stage": "warmup", "lr": 0.002}]
    # |0.75 - 0.5| = 0.25 beats |2.0 - 2.125| = 0.125; seconds and the device are not compared
    assert gt.largest_difference(a, b) == (0.25, "val_acc at epoch 1", ["epoch 1: stage 'adaptive' vs 'warmup'"])
    assert gt.largest_difference(a, a) == (0.0, "", [])
    assert gt.largest_difference(a, a[:1])[2] == ["2 vs 1 epochs"]
