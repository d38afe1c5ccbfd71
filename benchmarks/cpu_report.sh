#!/usr/bin/env bash
# Reproduces benchmarks/cpu/: ResNet-50 at 224 px on this machine's CPU, every local backend
# (eager FP32, bf16 autocast, torch.compile, ONNX Runtime FP32/FP16/INT8) and Triton (HTTP and
# gRPC sweep, 30 s soak), plus rtk's training step against a plain eager-FP32 loop.
# The model is trained for one epoch from scratch on 300 digits: accuracy is not the point,
# speed at the real input size is (parity with PyTorch is still checked before timing).
# Usage: benchmarks/cpu_report.sh [OUT_DIR]   (default benchmarks/cpu; needs `make setup`)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/cpu}
WORK=$(mktemp -d)
PORT=${RTK_BENCH_PORT:-18200}
export PATH=$PWD/.venv/bin:$PATH
python -c "from toolkit.data.sample import write_digits; write_digits('$WORK/data', size=32, per_class=30)"
rtk finetune "$WORK/data" --out "$WORK/resnet50" --weights none --epochs 1 --batch-size 16 \
    --lr 5e-4 --augment none --no-progress
rtk export "$WORK/resnet50" --fp16 --int8 --calib-size 64 --max-batch 16
rtk triton "$WORK/resnet50" --repo "$WORK/repo" --platform python --max-batch 16
rtk serve "$WORK/repo" --http-port "$PORT" --grpc-port $((PORT + 1)) --metrics-port $((PORT + 2)) \
    --quiet > "$WORK/triton.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT
ready() { python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/v2/health/ready', timeout=2)" 2>/dev/null; }
until ready; do
    kill -0 $SERVER 2>/dev/null || { cat "$WORK/triton.log"; exit 1; }; sleep 1
done
rtk bench "$WORK/resnet50" --batch-sizes 1,16 --duration 8 --triton-url "127.0.0.1:$PORT" \
    --concurrency 1,4,8 --soak 30 --out "$OUT"
kill -TERM $SERVER; wait $SERVER || true; trap 'rm -rf "$WORK"' EXIT
python benchmarks/train_throughput.py --arch resnet50 --image-size 224 --batch-size 16 \
    --steps 8 --warmup-steps 2 --data "$WORK/data" --out "$OUT"
