#!/usr/bin/env bash
# Check scripts/setup.sh the way new users meet it, each from a fresh clone of this checkout:
#   system   Debian's own /usr/bin/python3 first on PATH (PEP 668 "externally managed")
#   noensure a python whose `-m venv` fails for want of ensurepip (Debian without python3-venv)
#   py312    a pyenv Python 3.12 (RAYGAP_PYTHON)
# Each prints its wall time and `raygap --version`; `--train` also trains one epoch of
# configs/demo.yaml in each. Not part of CI (each install takes seconds to minutes and needs
# PyPI); CI runs setup.sh with the machine's python.
#
#   bash scripts/check_setup.sh [--train] [system|noensure|py312 ...]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
train=0
if [ "${1:-}" = "--train" ]; then train=1; shift; fi
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(system noensure py312)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
plain_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin      # no pyenv, no cargo
fails=0

for c in "${cases[@]}"; do
  dir="$work/$c"
  git clone -q "$repo" "$dir"
  env_args=(PATH="$plain_path")
  case "$c" in
    system) ;;
    noensure)
      mkdir -p "$work/noensure-bin"
      cat > "$work/noensure-bin/python3" <<'EOF'
#!/bin/bash
if [ "$1" = "-m" ] && [ "$2" = "venv" ] && [ "$3" != "--without-pip" ]; then
  echo "The virtual environment was not created successfully because ensurepip is not available." >&2
  exit 1
fi
exec /usr/bin/python3 "$@"
EOF
      chmod +x "$work/noensure-bin/python3"
      env_args=(PATH="$work/noensure-bin:$plain_path" RAYGAP_PYTHON="$work/noensure-bin/python3") ;;
    py312)
      py=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12.*/bin/python3.12 2>/dev/null | tail -1)
      if [ -z "$py" ]; then echo "py312: no pyenv Python 3.12 here: skipped"; continue; fi
      env_args+=(RAYGAP_PYTHON="$py") ;;
    *) echo "unknown case $c (system, noensure, py312)" >&2; exit 2 ;;
  esac
  t0=$(date +%s)
  if (cd "$dir" && env -u VIRTUAL_ENV -u PYENV_VERSION "${env_args[@]}" bash scripts/setup.sh >"$work/$c.log" 2>&1); then
    t1=$(date +%s)
    echo "$c: setup ok in $((t1 - t0)) s: $("$dir/.venv/bin/raygap" --version)"
    grep '^setup:' "$work/$c.log" | sed "s/^/  $c: /" || true
    if [ $train = 1 ]; then
      (cd "$dir" && env -u VIRTUAL_ENV -u PYENV_VERSION "${env_args[@]}" .venv/bin/raygap train configs/demo.yaml --set train.epochs=1 | tail -1)
      echo "$c: one demo epoch trained in $(( $(date +%s) - t1 )) s"
    fi
  else
    echo "$c: setup FAILED after $(( $(date +%s) - t0 )) s:"; tail -5 "$work/$c.log"; fails=1
  fi
done
exit $fails
