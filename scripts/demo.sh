#!/usr/bin/env bash
# The main job, end to end on CPU with the embedded sample data (scikit-learn's 1,797 real
# handwritten digits): inspect -> finetune -> export (FP32/FP16/INT8, gated) -> eval ->
# Triton repository -> real Triton server -> a request through the JPEG-in ensemble ->
# benchmark report -> rtk tune (a short search for the fastest deployment within a p99
# budget). Everything lands in ./demo (git-ignored). Re-running starts afresh.
#
# Offline machines cannot fetch ImageNet weights, so the demo trains from scratch
# (--weights none) at 64 px; on your own data drop those flags to get the product defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=${DEMO:-demo}
RUN=$DEMO/digits
PORT=${RTK_DEMO_PORT:-18000}
rm -rf "$DEMO" && mkdir -p "$DEMO"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. Sample data: real handwritten digits as PNG class folders"
rtk sample-data "$DEMO/data"
rtk inspect "$DEMO/data"

step "2. Fine-tune ResNet-50 (from scratch, 64 px, bf16 autocast on CPU)"
rtk finetune "$DEMO/data" --out "$RUN" --weights none --image-size 64 \
    --epochs 4 --batch-size 32 --lr 5e-4 --augment none --no-progress

step "3. Export: ONNX FP32, FP16 and INT8, each gated against PyTorch"
# --qat: when post-training INT8 fails its gate (it did for this model before model.pt became
# the EMA weights; on the x86-vnni CPU measured since, the single shot passes), a short
# quantization-aware fine-tune, distilled from model.pt, is gated in its place.
# Exit 3 is an honest outcome, not a crash: an artifact failed its accuracy gate and is marked
# untrusted (INT8 can, on a CPU whose int8 kernels lose more accuracy). Nothing serves an
# untrusted artifact, so the demo goes on with the trusted ones; anything else stops it.
BACKENDS="torch onnxruntime onnxruntime-fp16 onnxruntime-int8"
rtk export "$RUN" --fp16 --int8 --qat --max-batch 32 || {
    rc=$?; [ "$rc" = 3 ] || exit "$rc"
    BACKENDS="torch onnxruntime onnxruntime-fp16"
    echo "INT8 was refused by its gate on this machine (exit 3, reason above): the demo goes on" \
         "with the trusted FP32 and FP16 graphs; rtk triton and rtk tune pick trusted ones only."
}

step "4. Evaluate every local backend on the held-out split"
for b in $BACKENDS; do
    rtk eval "$RUN" --backend "$b" --json | python -c \
        "import json,sys; r=json.load(sys.stdin); print(f\"{r['backend']:<18} accuracy {r['accuracy']:.4f}  n={r['n']}\")"
done

step "5. Triton model repository (JPEG-in ensemble) and a real Triton server"
# The local server runs from its own environment (numpy<2 for its Python backend stub), made
# by `make setup` (rtk triton-env); rtk's environment keeps its own numpy.
python -c "import numpy; print('rtk environment: numpy', numpy.__version__)"
rtk triton-env --check
rtk triton "$RUN" --repo "$DEMO/model_repository" --platform python
rtk serve "$DEMO/model_repository" --http-port "$PORT" --grpc-port $((PORT + 1)) \
    --metrics-port $((PORT + 2)) --quiet > "$DEMO/triton.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
ready() { python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/v2/health/ready', timeout=2)" 2>/dev/null; }
for i in $(seq 1 180); do
    ready && break
    kill -0 $SERVER 2>/dev/null || { cat "$DEMO/triton.log"; exit 1; }
    [ "$i" = 180 ] && { echo "Triton was not ready after 180 s"; cat "$DEMO/triton.log"; exit 1; }
    sleep 1
done

step "6. Requests through the ensemble: PNG bytes in, labels out"
rtk predict "$RUN" "$DEMO"/data/3/digit_0003.png "$DEMO"/data/7/digit_0007.png \
    --backend triton --url "127.0.0.1:$PORT" --topk 3
rtk eval "$RUN" --backend triton --url "127.0.0.1:$PORT" --json | python -c \
    "import json,sys; r=json.load(sys.stdin); print(f\"triton ensemble    accuracy {r['accuracy']:.4f}  n={r['n']}\")"

step "7. Benchmark report"
rtk bench "$RUN" --batch-sizes 1,16 --duration 4 --triton-url "127.0.0.1:$PORT" \
    --concurrency 1,4 --out "$DEMO/bench"

step "8. rtk tune: the fastest trusted deployment with p99 <= 200 ms (1 minute budget)"
kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true; trap - EXIT
rtk tune "$RUN" --p99-ms 200 --budget-minutes 1 --seconds 3 --out "$DEMO/tune" \
    --repo "$DEMO/model_repository_tuned"

step "Done"
echo "Run bundle: $RUN   Triton repository: $DEMO/model_repository   Report: $DEMO/bench/report.md"
echo "Tuned repository: $DEMO/model_repository_tuned   Tune report: $DEMO/tune/tune.md"
echo "The whole run on one page (open it in a browser): $(rtk report "$RUN" --bench "$DEMO/bench" --tune "$DEMO/tune")"
