"""The Python packages scripts/gpu_check.sh's steps import, on a machine that cannot download.

    python3 scripts/gpu_deps.py install --wheels .gpu-wheels --target DIR
    python3 scripts/gpu_deps.py check                    # (DIR on PYTHONPATH)

``install``: of the wheels ``scripts/gpu_wheels.sh`` fetched beforehand, the ones whose
distribution this Python does not have are installed offline (``pip install --no-index
--no-deps --target DIR``: the image's own site-packages is never touched, and a package the
image already has -- in whatever version -- is kept, never shadowed). Says which it installed
and which it kept.
``check``: imports, in a fresh process, every module the steps import (raygap's own imports on
the train / bench / test paths without Ray); exits 1 naming each one that fails, and how to bring it.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
from pathlib import Path

# module -> distribution, for every module the steps import (raygap's imports on the paths
# `raygap train`, bench/gpu_throughput.py, tests/test_gpu.py and scripts/gpu_trials.py take,
# traced without Ray). torch, torchvision, numpy and pillow (and typing-extensions, which
# soundfile needs) come with any PyTorch image and are never carried; the others are what
# scripts/gpu_wheels.sh fetches, with their own dependencies (cffi, pycparser; joblib,
# cloudpickle, narwhals, threadpoolctl; pytest's).
MODULES = {
    "torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "PIL": "pillow",
    "yaml": "pyyaml",                      # raygap.config
    "scipy": "scipy",                      # mixtures, media (spectrograms), report
    "sklearn": "scikit-learn",             # metrics (f1), mixtures (GaussianMixture), avdigits
    "soundfile": "soundfile",              # reading / writing wav (data.media, data.synth)
    "psutil": "psutil",                    # raygap.interrupts
    "pytest": "pytest",                    # the `pytest -m gpu` step
    "raygap.cli": "raygap", "raygap.trial": "raygap",   # the checkout itself, without Ray
}
NOT_CARRIED = {"torch", "torchvision", "numpy", "pillow"}


def norm(name: str) -> str:
    """A distribution name as wheel file names and the metadata compare it (PEP 503)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_name(path: Path) -> tuple[str, str]:
    """(normalised distribution, version) from a wheel's file name."""
    name, version = path.name.split("-")[:2]
    return norm(name), version


def installed() -> dict[str, str]:
    """Normalised distribution -> version of every distribution this Python sees (sys.path)."""
    out = {}
    for d in md.distributions():
        name = d.metadata["Name"]
        if name:
            out.setdefault(norm(name), d.version)
    return out


def install(wheels: Path, target: Path) -> int:
    files = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not files:
        print(f"deps: no wheels in {wheels} (bash scripts/gpu_wheels.sh fetches them): nothing to install")
        return 0
    have = installed()
    missing, kept = [], []
    for f in files:
        name, version = wheel_name(f)
        if name in have:
            kept.append(f"{name} {have[name]}" + ("" if have[name] == version else f" (carried {version} not used)"))
        else:
            missing.append(f)
    if kept:
        print(f"deps: already here, kept: {', '.join(kept)}")
    if not missing:
        print("deps: nothing to install")
        return 0
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        print(f"deps: {sys.executable} has no pip: cannot install {', '.join(f.name for f in missing)}")
        return 1
    target.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--disable-pip-version-check", "--target", str(target), *map(str, missing)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"deps: pip install failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()[-1500:]}")
        return 1
    print(f"deps: installed into {target} (offline, from {wheels}): "
          + ", ".join(" ".join(wheel_name(f)) for f in missing))
    return 0


PROBE = """
import importlib, importlib.metadata as md, json, sys
out = {}
for mod, dist in json.loads(sys.argv[1]).items():
    try:
        m = importlib.import_module(mod)
        try:
            v = md.version(dist)
        except md.PackageNotFoundError:
            v = getattr(m, "__version__", "?")
        out[mod] = [True, v, (getattr(m, "__file__", None) or "?")]
    except Exception as e:
        out[mod] = [False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200], None]
print(json.dumps(out))
"""


def check(modules: dict[str, str]) -> int:
    """Import every module in a fresh process (this environment's PYTHONPATH); 1 if one fails."""
    r = subprocess.run([sys.executable, "-c", PROBE, json.dumps(modules)], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"deps: the import probe failed (exit {r.returncode}): {r.stderr.strip()[-1500:]}")
        return 1
    res = json.loads(r.stdout.strip().splitlines()[-1])
    ok = list(dict.fromkeys(f"{modules[m]} {v}" for m, (good, v, _) in res.items() if good))
    bad = {m: v for m, (good, v, _) in res.items() if not good}
    print(f"deps: importable: {', '.join(ok)}")
    for m, why in bad.items():
        dist = modules[m]
        fix = ("a PyTorch image has it: this Python is not the one that holds torch?" if dist in NOT_CARRIED
               else "the checkout's raygap does not import (run from the checkout's root, PYTHONPATH=.)"
               if dist == "raygap" else "bash scripts/gpu_wheels.sh fetches it into .gpu-wheels; carry .gpu-wheels")
        print(f"deps: MISSING {m} ({dist}): {why}; {fix}")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    i = sub.add_parser("install", help="install the carried wheels this Python lacks, offline")
    i.add_argument("--wheels", default=os.environ.get("GPU_WHEELS", ".gpu-wheels"))
    i.add_argument("--target", required=True, help="folder to install into (put it on PYTHONPATH)")
    sub.add_parser("check", help="import every module the steps import")
    args = ap.parse_args()
    if args.what == "install":
        return install(Path(args.wheels), Path(args.target))
    return check(MODULES)


if __name__ == "__main__":
    sys.exit(main())
