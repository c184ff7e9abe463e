"""The GPU bench runs from the checkout without Ray, as it must on a lent GPU machine:
its --smoke mode, at reduced shapes on the CPU, prints every section and its ratios."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_throughput_smoke_runs_without_ray():
    # a `ray` that fails on import: the bench must never import it
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests' / 'no_ray'}{os.pathsep}{ROOT}"}
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_throughput.py"), "--smoke"],
                       capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert re.search(r"cremad 1 frame\(s\): fp32 +[\d.]+ \| +[\d.]+ +bf16 +[\d.]+ \| +[\d.]+", out), out
    assert re.search(r"1 trial\(s\): +[\d.]+ .*\n +2 trial\(s\): +[\d.]+", out), out
    m = re.search(r"projection: (\d+) distinct paper trials", out)
    assert m and int(m.group(1)) > 100, out                      # read from grids/table2-7.yaml
    assert re.search(r"^ratios: bf16/fp32 train .* [\d.]+; 2 packed vs 1 [\d.]+$", out, re.M), out
