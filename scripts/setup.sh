#!/usr/bin/env bash
# Install raygap with its pinned dependencies into ./.venv (idempotent; fast when warm).
#
# Nothing is installed outside .venv, so this works with a PEP 668 "externally managed"
# system python (Debian 12, Ubuntu 24.04), with pyenv and with conda: the venv is made
# first, and the installer (uv) is installed inside it. Python 3.11 or 3.12: the first of
# $RAYGAP_PYTHON, python3 (the one you have selected), python3.11, python3.12 that is one of them.
# uv downloads torch/torchvision from PyPI (a CUDA build, ~5.5 GB in the venv; ~35 s cold,
# ~2 s warm); constraints.txt pins every transitive dependency. RAYGAP_TORCH=cpu installs
# PyTorch's CPU build instead (docs/install.md). RAYGAP_EXTRAS=mlflow,wandb adds optional extras
# (the `raygap run --tracker` loggers; pinned in pyproject.toml and constraints.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.8
ok_version='import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 12) else 1)'

say() { echo "setup: $*" >&2; }

pick_python() {
  local c
  for c in ${RAYGAP_PYTHON:+"$RAYGAP_PYTHON"} python3 python3.11 python3.12; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c "$ok_version" >/dev/null 2>&1; then
      command -v "$c"
      return 0
    fi
  done
  return 1
}

if [ -x .venv/bin/python ] && ! .venv/bin/python -c "$ok_version" >/dev/null 2>&1; then
  say ".venv holds Python $(.venv/bin/python -c 'import platform; print(platform.python_version())' 2>/dev/null || echo '?'), not 3.11 or 3.12: remove it (rm -rf .venv) and run this again"
  exit 2
fi

if [ ! -x .venv/bin/python ]; then
  if ! PY=$(pick_python); then
    say "needs Python 3.11 or 3.12; found $(python3 --version 2>&1 || echo 'no python3'). Install one (e.g. pyenv install 3.12) or set RAYGAP_PYTHON=/path/to/python3.12"
    exit 2
  fi
  say "creating .venv with $PY ($("$PY" --version 2>&1))"
  # Debian/Ubuntu ship venv without ensurepip unless python3-venv is installed: fall back to a
  # venv without pip (the installer is then put into it by the system pip or a uv on PATH).
  if ! "$PY" -m venv .venv >/dev/null 2>&1; then
    say "$PY -m venv failed (no ensurepip): a venv without pip instead"
    rm -rf .venv
    "$PY" -m venv --without-pip .venv
  fi
fi

if ! .venv/bin/python -m uv --version >/dev/null 2>&1; then
  if .venv/bin/python -m pip --version >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
  elif command -v uv >/dev/null 2>&1; then
    uv pip install -q --python .venv/bin/python "uv==$UV_VERSION"
  elif PY=$(pick_python) && "$PY" -m pip --version >/dev/null 2>&1; then
    # pip >= 22.3 installs into another environment with --python: only .venv is touched
    say "uv into .venv with $PY's pip (--python .venv/bin/python)"
    "$PY" -m pip --python .venv/bin/python install -q --disable-pip-version-check "uv==$UV_VERSION"
  else
    say "cannot put uv into .venv: no pip in it or next to $(.venv/bin/python --version 2>&1). On Debian/Ubuntu: sudo apt-get install python3-venv (or python3-pip), then rm -rf .venv and run this again"
    exit 2
  fi
fi

torch_index=()
if [ "${RAYGAP_TORCH:-}" = "cpu" ]; then
  # PyTorch's CPU wheels (2.14.1+cpu satisfies the torch==2.14.1 pin; no nvidia-* packages)
  torch_index=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
  say "RAYGAP_TORCH=cpu: torch, torchvision and torchaudio from PyTorch's CPU index"
fi
# --compile-bytecode: write every installed module's .pyc now. Python would write them on first
# import, but not where PYTHONDONTWRITEBYTECODE is set (CI images, containers): then every process
# (each Ray worker, each trial) compiles torch, Ray, scipy and sklearn from source again -- measured
# here: `import torch` 3.2 s -> 1.5 s, a 2-epoch CPU trial 11.4 s -> 6.4 s; the install takes ~30 s longer.
extras=test
asked=${RAYGAP_EXTRAS:-}
# CI (CI=true, as .ci/run runs) installs the tracker extras too, so their tests run there instead
# of skipping; RAYGAP_EXTRAS, when set, is taken as it is.
if [ "${CI:-}" = true ] && [ -z "${RAYGAP_EXTRAS+x}" ]; then
  asked=mlflow,wandb
fi
for e in ${asked//,/ }; do
  case "$e" in
    mlflow|wandb|tensorboard) extras="$extras,$e" ;;
    *) say "RAYGAP_EXTRAS: no extra '$e' (choose from mlflow, wandb, tensorboard)"; exit 2 ;;
  esac
done
[ "$extras" = test ] || say "extras: ${extras#test,}"
.venv/bin/python -m uv pip install -q --compile-bytecode --python .venv/bin/python "${torch_index[@]}" -c constraints.txt -e ".[$extras]"

# CI: the report page's test (tests/test_report_page.py) opens report.html in Debian's headless
# Chromium. Where CI runs as root with apt and no chromium, it is installed (system package; the
# test skips, saying so, where there is none). Nothing of this runs outside CI.
if [ "${CI:-}" = true ] && ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  say "CI: installing Debian's chromium for the report page's browser test"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } >/dev/null 2>&1; then
    say "CI: chromium could not be installed (apt-get failed): the report page's browser test will skip"
  fi
fi
