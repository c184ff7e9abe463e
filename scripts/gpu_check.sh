#!/usr/bin/env bash
# The GPU checks of one lent machine, in one go: the GPU tests, the throughput bench, and a
# `raygap train` of the paper's method (ResNet-18, cache pipeline, bf16) on the bench's CREMA-D
# layout. Runs from the checkout without Ray (PYTHONPATH=.). Logs go to $OUT (default results/gpu-check).
#   bash scripts/gpu_check.sh
set -u
OUT=${OUT:-results/gpu-check}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}. PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
timeout "${GPU_TEST_S:-240}" $PY -m pytest -m gpu tests/test_gpu.py -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/pytest_gpu.log"
timeout "${GPU_BENCH_S:-300}" $PY bench/gpu_throughput.py --steps "${STEPS:-20}" --clips-per-class "${CLIPS:-100}" \
    --workers "${WORKERS:-8}" 2>&1 | tee "$OUT/bench.log"
cat > "$OUT/train.yaml" <<YAML
method: {name: gap_adaptive, warmup_epochs: 2}
data: {name: cremad, root: results/bench/cremad-layout, pipeline: cache}
model: {backbone: resnet18}
optim: {name: sgd, lr: 0.002}
train: {epochs: 4, batch_size: 64, device: cuda, amp: bf16}
YAML
timeout "${GPU_TRAIN_S:-180}" $PY -m raygap train "$OUT/train.yaml" --out "$OUT/train" 2>&1 | tee "$OUT/train.log"
