#!/usr/bin/env bash
# Fetch, here (where PyPI is reachable), the wheels scripts/gpu_check.sh needs on a GPU machine
# that cannot download: CPython 3.12, manylinux x86-64, pinned to constraints.txt's versions,
# into .gpu-wheels/ (git-ignored; carry it to the GPU machine). gpu_check.sh installs, offline,
# only the ones that machine lacks (scripts/gpu_deps.py). torch, torchvision, numpy and pillow
# are never fetched: every PyTorch image has them.
#
#   bash scripts/gpu_wheels.sh           # for a stock PyTorch image (~47 MiB: scipy is 34 of it)
#   bash scripts/gpu_wheels.sh --lean    # soundfile, cffi, pycparser only (~1.5 MiB): for an image
#                                        # that has scipy, scikit-learn, PyYAML, psutil and pytest
#                                        # (`python3 -m pip list` there; docs/cluster.md)
# GPU_WHEELS=DIR: another folder. PIP_PYTHON: the python whose pip downloads (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${GPU_WHEELS:-.gpu-wheels}
PYPIP=${PIP_PYTHON:-python3}
LEAN="soundfile cffi pycparser"
STOCK="pyyaml psutil scipy scikit-learn joblib cloudpickle narwhals threadpoolctl pytest pluggy iniconfig packaging pygments pytest-timeout"
case "${1:-}" in
  "") names="$LEAN $STOCK" ;;
  --lean) names="$LEAN" ;;
  *) echo "gpu_wheels: unknown option '$1' (choose --lean or nothing)" >&2; exit 2 ;;
esac
pins=()
for n in $names; do
  pin=$(grep -i -m1 "^$n==" constraints.txt || true)
  if [ -z "$pin" ]; then echo "gpu_wheels: constraints.txt pins no $n" >&2; exit 2; fi
  pins+=("$pin")
done
mkdir -p "$DIR"
echo "gpu_wheels: ${pins[*]}"
"$PYPIP" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 \
  --platform manylinux2010_x86_64 --platform manylinux1_x86_64 -d "$DIR" "${pins[@]}" 2> >(grep -v "^WARNING: Location" >&2)
# one version of each, and only those asked for: drop what an earlier call left
"$PYPIP" - "$DIR" "${pins[@]}" <<'PY'
import re, sys
from pathlib import Path
norm = lambda s: re.sub(r"[-_.]+", "_", s).lower()
want = {tuple(norm(x) for x in p.split("==")) for p in sys.argv[2:]}
for f in Path(sys.argv[1]).glob("*.whl"):
    if tuple(norm(x) for x in f.name.split("-")[:2]) not in want:
        print(f"gpu_wheels: removed {f.name} (not asked for now)")
        f.unlink()
PY
ls -l "$DIR"/*.whl | awk '{printf "  %8.2f MB  %s\n", $5 / 1e6, $NF}'
wheels=$(cat "$DIR"/*.whl | wc -c)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 cat 2>/dev/null | wc -c)
echo "gpu_wheels: $(awk "BEGIN {print $wheels / 1048576}" | cut -c1-5) MiB of wheels in $DIR;" \
     "with the working tree ($(awk "BEGIN {print $tree / 1048576}" | cut -c1-5) MiB) that travels: $(awk "BEGIN {print ($wheels + $tree) / 1048576}" | cut -c1-5) MiB of the 64 MiB a device call carries"
if [ $((wheels + tree)) -gt $((60 * 1048576)) ]; then
  echo "gpu_wheels: over 60 MiB with the tree: use --lean where the image has scipy and scikit-learn" >&2
  exit 1
fi
