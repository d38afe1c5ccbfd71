#!/usr/bin/env bash
# Prepared GPU benchmark: one-GPU machine with torch, torchvision, onnx and onnxruntime (CPU)
# only; finishes in well under 10 minutes on an H100. Usage: benchmarks/gpu_run.sh OUT_DIR
#   1. generated 224 px data (10 classes x 300 images), a few hundred fine-tuning steps
#      with AMP and torch.compile (rtk finetune --device cuda);
#   2. training images/s: rtk's step against a plain eager-FP32 loop (train_throughput.py);
#   3. export (ONNX FP32/FP16/INT8, gated) and rtk bench on CUDA and CPU, report to OUT_DIR.
# rtk's own light dependencies (click, rich, matplotlib) must be importable; TensorRT rows
# appear as "unavailable" unless the tensorrt package is installed.
set -euo pipefail
OUT=${1:?usage: benchmarks/gpu_run.sh OUT_DIR}
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
WORK=$(mktemp -d)
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"

python - "$WORK/data" <<'PY'
import sys, numpy as np
from pathlib import Path
from PIL import Image
rng = np.random.default_rng(0)
for c in range(10):
    folder = Path(sys.argv[1]) / f"class_{c}"
    folder.mkdir(parents=True)
    base = rng.integers(0, 255, (8, 8, 3))
    for i in range(300):
        img = np.kron(base, np.ones((32, 32, 1))) + rng.normal(0, 40, (256, 256, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)
PY

python -m toolkit finetune "$WORK/data" --out "$WORK/run" --weights none --epochs 6 \
    --batch-size 64 --lr 2e-4 --device cuda --no-progress 2>&1 | tee "$OUT/finetune.log"
python benchmarks/train_throughput.py --device cuda --batch-size 64 --steps 40 \
    --data "$WORK/data" --out "$OUT" 2>&1 | tee -a "$OUT/finetune.log"
python -m toolkit export "$WORK/run" --fp16 --int8 --format onnx 2>&1 | tee "$OUT/export.log"
python -m toolkit bench "$WORK/run" --device all --batch-sizes 1,8,32,64 --duration 5 \
    --out "$OUT" 2>&1 | tee "$OUT/bench.log"
cp "$WORK/run/manifest.json" "$OUT/manifest.json"
