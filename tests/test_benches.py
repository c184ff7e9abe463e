"""The GPU bench runs from the checkout without Ray, as it must on a lent GPU machine:
its --smoke mode, at reduced shapes on the CPU, prints every section and its ratios."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


NO_RAY = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests' / 'no_ray'}{os.pathsep}{ROOT}"}   # `ray` fails on import
NUM = r"[\d.]+"


def test_gpu_throughput_smoke_runs_without_ray(tmp_path):
    # the bench must never import ray: the GPU machine has none
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_throughput.py"), "--smoke",
                        "--layout", str(tmp_path / "layout")],
                       capture_output=True, text=True, env=NO_RAY, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert re.search(r"cremad 1 frame\(s\): fp32 +[\d.]+ \| +[\d.]+ +bf16 +[\d.]+ \| +[\d.]+", out), out
    assert re.search(r"1 trial\(s\): +[\d.]+ .*\n +2 trial\(s\): +[\d.]+", out), out
    m = re.search(r"projection: (\d+) distinct paper trials", out)
    assert m and int(m.group(1)) > 100, out                      # read from grids/table2-7.yaml
    assert re.search(rf"\(b\) cache pipeline +{NUM} +\(b\)/\(a\) {NUM}\n +\(c\) file pipeline +{NUM}", out), out
    assert re.search(rf"^ratios: \(b\)/\(a\) {NUM} .*\(b\)/\(c\) {NUM}; bf16/fp32 train .* {NUM}; 2 packed vs 1 {NUM}$",
                     out, re.M), out


def test_data_path_smoke_measures_both_pipelines(tmp_path):
    """bench/data_path.py makes its layout, builds the cache and prints the four rates and the ratios."""
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "data_path.py"), "--smoke", "--root", str(tmp_path / "l")],
                       capture_output=True, text=True, env=NO_RAY, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    for line in ("files", "cache/host", "cache/cpu"):
        assert re.search(rf"^{re.escape(line)} +{NUM} samples/s per core", out, re.M), out
    assert (tmp_path / "l" / "raygap-cache" / "cremad22050-frames1-side32" / "manifest.json").is_file()
    assert re.search(rf"^ratios: cache/host streamed vs files {NUM}x .* host side streamed {NUM} samples/s", out, re.M), out
