#!/usr/bin/env bash
# The GPU checks of one lent machine, in one go, without Ray (docs/cluster.md, "Checking a GPU machine"):
#   deps     the carried wheels (bash scripts/gpu_wheels.sh, here, beforehand) the image lacks, installed
#            offline into a temp folder on PYTHONPATH; every module the steps import, imported
#   env      the GPU, torch, torchvision (fails without a usable CUDA device)
#   pytest   pytest -m gpu tests/test_gpu.py
#   data     a generated CREMA-D layout and its tensor cache (scripts/gpu_trials.py)
#   train    raygap train of the paper's method (gap_adaptive, ResNet-18, cache pipeline, fp32, deterministic)
#   resume   the same trial SIGKILLed after an epoch's checkpoint, run again: resumed, finished, vs `train`
#   warmup   a leader keeps its warm-up's end; a variant (method.rho) starts from it, vs trained alone
#   bench    bench/gpu_throughput.py
#   outputs  $OUT holds only small files (no checkpoint: trial folders live in a temp folder, removed)
# Every step runs, each under its own timeout and all under GPU_CHECK_TOTAL_S; the script exits 1
# naming the failed steps. Logs, JSON and $OUT/summary.txt go to $OUT (default results/gpu-check).
#   bash scripts/gpu_check.sh            # on the GPU machine (at most GPU_CHECK_TOTAL_S=560 s)
#   bash scripts/gpu_check.sh --smoke    # the same steps at tiny shapes on the CPU (tests/test_gpu_check.py)
# GPU_CHECK_STEPS="pytest resume": only those steps. GPU_CHECK_FAIL=STEP[,STEP:hang]: replace a step's
# command by one that fails (or hangs past its timeout), to check the check. PYTHON: the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SMOKE=${GPU_CHECK_SMOKE:-0}
for a in "$@"; do
  case "$a" in
    --smoke) SMOKE=1 ;;
    *) echo "gpu_check: unknown argument '$a' (the only option is --smoke)" >&2; exit 2 ;;
  esac
done
ALL="deps env pytest data train resume warmup bench outputs"
STEPS_RUN=${GPU_CHECK_STEPS:-$ALL}
STEPS_RUN=${STEPS_RUN//,/ }
for s in $STEPS_RUN; do
  case " $ALL " in *" $s "*) ;; *) echo "gpu_check: GPU_CHECK_STEPS: no step '$s' (steps: $ALL)" >&2; exit 2 ;; esac
done
OUT=${OUT:-results/gpu-check}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/raygap-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM
# tests/no_ray first: `import ray` fails, whatever the image holds; $WORK/site: the wheels deps installs
export PYTHONPATH="$ROOT/tests/no_ray:$ROOT:$WORK/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
if [ "$SMOKE" = 1 ]; then
  MODE=smoke; T=600; TOTAL=${GPU_CHECK_TOTAL_S:-1800}; SM=--smoke
  BENCH=(bench/gpu_throughput.py --smoke --layout "$WORK/bench-layout")
else
  MODE=gpu; T=0; TOTAL=${GPU_CHECK_TOTAL_S:-560}; SM=
  # --replay method: one replayed section per method (the full replay's real-size host work takes minutes of CPU)
  BENCH=(bench/gpu_throughput.py --steps "${STEPS:-20}" --clips-per-class "${CLIPS:-100}" --workers "${WORKERS:-8}"
         --replay method --layout "$WORK/bench-layout")
fi
limit() { [ "$T" -gt 0 ] && echo "$T" || echo "$1"; }     # smoke: every step gets T seconds
DEADLINE=$((SECONDS + TOTAL))
INJECT=",${GPU_CHECK_FAIL:-},"
ROWS=()
FAILED=()

step() {  # step NAME TIMEOUT_S COMMAND...: run it, log to $OUT/NAME.log, record ok / failed
  local name=$1 lim=$2 t0=$SECONDS rc left took
  shift 2
  case " $STEPS_RUN " in *" $name "*) ;; *) return 0 ;; esac
  left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 10 ]; then
    ROWS+=("$(printf '%-8s FAILED   not run: out of time (GPU_CHECK_TOTAL_S=%s)' "$name" "$TOTAL")")
    FAILED+=("$name")
    return 0
  fi
  [ "$lim" -gt "$left" ] && lim=$left
  case "$INJECT" in
    *",$name,"*) set -- sh -c 'echo "GPU_CHECK_FAIL: this step'"'"'s command replaced by one that fails"; exit 3' ;;
    *",$name:hang,"*) set -- sh -c 'echo "GPU_CHECK_FAIL: this step'"'"'s command replaced by one that hangs"; sleep 3600' ;;
  esac
  echo "== gpu_check $name (timeout ${lim}s): $*"
  timeout -k 10 "$lim" "$@" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  took=$((SECONDS - t0))
  if [ "$rc" -eq 0 ]; then
    ROWS+=("$(printf '%-8s ok       %4d s' "$name" "$took")")
  else
    FAILED+=("$name")
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
      ROWS+=("$(printf '%-8s FAILED   %4d s  timed out after %d s (see %s.log)' "$name" "$took" "$lim" "$name")")
    else
      ROWS+=("$(printf '%-8s FAILED   %4d s  exit %d (see %s.log)' "$name" "$took" "$rc" "$name")")
    fi
  fi
  echo "== gpu_check $name: exit $rc after ${took}s"
}

ENV_PY='import sys, torch, torchvision
print("torch", torch.__version__, "torchvision", torchvision.__version__, "cuda", torch.version.cuda, "python", sys.version.split()[0])
if sys.argv[1] == "smoke":
    print("smoke mode: the CPU, tiny shapes"); sys.exit(0)
if not torch.cuda.is_available():
    print("FAILED: CUDA is not usable here (torch.cuda.is_available() is False)"); sys.exit(1)
p = torch.cuda.get_device_properties(0)
print(f"device: {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}, {torch.cuda.device_count()} visible")'
GPU_SMI='nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "nvidia-smi failed"'

step deps "${GPU_DEPS_S:-120}" sh -c '"$1" scripts/gpu_deps.py install --wheels "$2" --target "$3" && "$1" scripts/gpu_deps.py check' \
  sh "$PY" "${GPU_WHEELS:-.gpu-wheels}" "$WORK/site"
if [ "$MODE" = gpu ]; then
  step env "$(limit 60)" sh -c "$GPU_SMI"'; "$0" -c "$1" gpu' "$PY" "$ENV_PY"
else
  step env "$(limit 60)" "$PY" -c "$ENV_PY" smoke
fi
step pytest "$(limit "${GPU_TEST_S:-240}")" "$PY" -m pytest -m gpu tests/test_gpu.py -q -rs -p no:cacheprovider \
  --basetemp "$WORK/pytest"
for s in data train resume warmup; do
  lim_var="GPU_$(echo "$s" | tr a-z A-Z)_S"
  case $s in data) d=120 ;; train) d=150 ;; resume) d=180 ;; warmup) d=150 ;; esac
  step "$s" "$(limit "${!lim_var:-$d}")" "$PY" scripts/gpu_trials.py "$s" --work "$WORK" --out "$OUT" $SM
done
step bench "$(limit "${GPU_BENCH_S:-300}")" "$PY" "${BENCH[@]}"
step outputs 60 sh -c 'big=$(find "$1" -type f \( -size +1M -o -name "*.pt" -o -name "*.pt.tmp" \) ! -name outputs.log)
  if [ -n "$big" ]; then echo "large files or checkpoints in $1:"; echo "$big"; exit 1; fi
  echo "$(find "$1" -type f | wc -l) files, $(du -sk "$1" | cut -f1) KiB in $1: none over 1 MB, no checkpoint"' sh "$OUT"

# ----------------------------------------------------------------------------- the summary
n_run=${#ROWS[@]}
{
  if [ ${#FAILED[@]} -eq 0 ]; then
    echo "gpu_check ($MODE): all $n_run steps passed"
  else
    echo "gpu_check ($MODE): FAILED steps: ${FAILED[*]} (of $n_run)"
  fi
  printf '  %s\n' "${ROWS[@]}"
  echo "figures:"
  fig() { [ -f "$OUT/$1.log" ] && grep -E "$2" "$OUT/$1.log" | head -n "${3:-8}" | sed -E "s/^ *\|? *//; /^$1:/! s/^/$1: /; s/^/  /"; }
  fig env '.'
  fig deps '^deps: (installed|no wheels|MISSING|nothing to install|.* has no pip|pip install failed)'
  [ -f "$OUT/pytest.log" ] && echo "  pytest -m gpu: $(grep -E '(passed|failed|skipped|error)' "$OUT/pytest.log" | tail -n 1)"
  fig data '^data:'
  fig train '^ *\| *reported epoch|^train:'
  fig resume '^resume:'
  fig warmup '^warmup:'
  fig bench '^(device|ratios|projection)|packed|determin|lower bound|estimate|\(b\)/\(a\)|FAILED|Error' 30
} > "$OUT/summary.txt"
echo "==== $OUT/summary.txt"
cat "$OUT/summary.txt"
[ ${#FAILED[@]} -eq 0 ]
