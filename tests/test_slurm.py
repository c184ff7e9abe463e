"""scripts/slurm/raygap.sbatch, run here with stand-ins for SLURM and Ray (`scontrol`,
`srun`, `ray`, `raygap` that record what they are asked to do): the commands it runs on a
two-node allocation, and SLURM's walltime SIGTERM passed on to raygap, whose exit code the
job keeps. The `raygap run --address` path itself runs for real in test_multinode.py
(two Ray nodes on this machine; two `ray start` processes cannot join on loopback)."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "slurm" / "raygap.sbatch"

STUBS = {
    "scontrol": 'echo "$*" >> "$LOG.scontrol"; printf "gpu-node-1\\ngpu-node-2\\n"',
    "hostname": 'echo "10.1.2.3 fe80::1"',
    # srun -N 1 -n 1 -w NODE CMD...: run CMD here, tagged with the node
    "srun": ('while [ "${1#-}" != "$1" ]; do case "$1" in -w) node=$2; shift 2;; *) shift;; esac; done\n'
             'echo "$node: $*" >> "$LOG.srun"; exec "$@"'),
    "ray": 'echo "$*" >> "$LOG.ray"; trap "exit 0" TERM; while true; do sleep 0.1; done',
    "raygap": ('echo "$*" >> "$LOG.raygap"; trap \'echo TERM >> "$LOG.raygap"; exit 130\' TERM\n'
               'for i in $(seq 1 "${RAYGAP_STUB_SECONDS:-1}0"); do sleep 0.1; done; exit "${RAYGAP_STUB_EXIT:-0}"'),
}


@pytest.fixture
def env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        p = bin_dir / name
        p.write_text("#!/usr/bin/env bash\n" + body + "\n")
        p.chmod(0o755)
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(tmp_path / "log"),
            "RAYGAP_VENV": str(tmp_path / "venv"), "SLURM_JOB_NODELIST": "gpu-node-[1-2]",
            "SLURM_CPUS_PER_TASK": "16", "SLURM_GPUS_PER_TASK": "2", "RESULTS": "/shared/raygap/results",
            "HEAD_WAIT": "0", "WORKER_WAIT": "0"}


def lines(env, what: str) -> list[str]:
    p = Path(env["LOG"] + "." + what)
    return p.read_text().splitlines() if p.exists() else []


def test_the_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_a_two_node_allocation_starts_the_head_joins_the_worker_and_runs_the_grid(env, tmp_path):
    r = subprocess.run(["bash", str(SCRIPT)], env={**env, "GRID": "grids/table2.yaml"}, cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(lines(env, "ray")) == [          # (started in the background: in either order)
        "start --address=10.1.2.3:6379 --num-cpus=16 --num-gpus=2 --block",
        "start --head --node-ip-address=10.1.2.3 --port=6379 --num-cpus=16 --num-gpus=2 --include-dashboard=false "
        "--block"]
    srun = lines(env, "srun")
    assert srun[0] == "gpu-node-1: hostname --ip-address"                     # the head's address, first
    assert sorted(srun[1:]) == ["gpu-node-1: ray start --head --node-ip-address=10.1.2.3 --port=6379 --num-cpus=16 "
                                "--num-gpus=2 --include-dashboard=false --block",
                                "gpu-node-2: ray start --address=10.1.2.3:6379 --num-cpus=16 --num-gpus=2 --block"]
    assert lines(env, "raygap") == ["run grids/table2.yaml --profile paper --address 10.1.2.3:6379 "
                                    "--storage /shared/raygap/results/ray --results /shared/raygap/results"]
    assert "exit 0" in r.stdout


def test_the_walltime_sigterm_reaches_raygap_and_its_exit_code_is_the_job_s(env):
    p = subprocess.Popen(["bash", str(SCRIPT)], env={**env, "RAYGAP_STUB_SECONDS": "60"}, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 90
    while time.time() < deadline and not lines(env, "raygap"):
        time.sleep(0.2)
    assert lines(env, "raygap"), "raygap never started"
    p.send_signal(signal.SIGTERM)            # what `#SBATCH --signal=B:TERM@300` does
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 130, out
    assert lines(env, "raygap")[-1] == "TERM" and "exit 130" in out


def test_one_job_runs_every_table_by_default(env):
    # one driver over every grid (one store): not several jobs sharing a store on NFS (issue 25)
    r = subprocess.run(["bash", str(SCRIPT)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    tables = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "grids").glob("table*.yaml"))
    assert len(tables) >= 6 and lines(env, "raygap") == [
        f"run {' '.join(tables)} --profile paper --address 10.1.2.3:6379 --storage /shared/raygap/results/ray "
        "--results /shared/raygap/results"]
