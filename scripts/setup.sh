#!/usr/bin/env bash
# Install raygap with its pinned dependencies into ./.venv (idempotent; fast when warm).
# uv downloads torch/torchvision from PyPI (~35 s cold, ~2 s warm); constraints.txt pins
# every transitive dependency.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -m uv --version >/dev/null 2>&1; then
  python3 -m pip install -q --disable-pip-version-check "uv==0.13.8"
fi
[ -x .venv/bin/python ] || python3 -m uv venv -q .venv --python 3.11
python3 -m uv pip install -q --python .venv/bin/python -c constraints.txt -e ".[test]"
