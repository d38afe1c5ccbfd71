#!/usr/bin/env bash
# Served CPU throughput of the default `rtk triton` deployment (the best trusted artifact:
# INT8 when its gate passed) against the FP32-served one (`--artifact onnx`), in one run:
# ResNet-50 at 224 px, JPEG bytes through the ensemble, gRPC at concurrency 8, on the real
# Triton server. Usage: benchmarks/cpu_serving.sh [OUT_DIR]  (default benchmarks/cpu/serving)
# RTK_SERVING_RUN=RUN_DIR reuses a trained run instead of training one (3 epochs, ~5 min).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/cpu/serving}
WORK=$(mktemp -d)
read -r PORT GRPC METRICS < <(python -c "from toolkit.triton.server import free_port as f; print(f(), f(), f())")
export PATH=$PWD/.venv/bin:$PATH
SERVER=
stop() { [ -n "$SERVER" ] && { kill -TERM "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true; }; SERVER=; }
trap 'stop; rm -rf "$WORK"' EXIT
mkdir -p "$OUT"

if [ -n "${RTK_SERVING_RUN:-}" ]; then  # reuse a trained run (its model.pt and split)
    cp -r "$RTK_SERVING_RUN" "$WORK/resnet50"
else
    python - "$WORK/data" <<'PY'
import sys
from pathlib import Path
from toolkit.data.sample import write_digits
root = Path(write_digits(sys.argv[1], size=32, per_class=40))
for png in root.rglob("*.png"):  # the ensemble is measured on JPEG bytes, as a client sends
    from PIL import Image
    Image.open(png).convert("RGB").resize((256, 256)).save(png.with_suffix(".jpg"), quality=90)
    png.unlink()
PY
    rtk finetune "$WORK/data" --out "$WORK/resnet50" --weights none --epochs 3 --batch-size 16 \
        --lr 5e-4 --augment none --no-progress
fi
rtk export "$WORK/resnet50" --int8 --calib-size 64 --max-batch 16 --format onnx | tee "$OUT/export.txt"

serve_and_bench() {  # $1: label, then rtk triton options
    label=$1; shift
    rtk triton "$WORK/resnet50" --repo "$WORK/repo_$label" --platform python "$@" | tee "$OUT/$label.triton.txt"
    rtk serve "$WORK/repo_$label" --http-port "$PORT" --grpc-port "$GRPC" \
        --metrics-port "$METRICS" --quiet > "$WORK/triton_$label.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 1 300); do
        python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/v2/health/ready', timeout=2)" 2>/dev/null && break
        kill -0 "$SERVER" 2>/dev/null || { cat "$WORK/triton_$label.log"; exit 1; }
        sleep 1
    done
    rtk bench "$WORK/resnet50" --backends triton --triton-url "127.0.0.1:$PORT" \
        --triton-grpc-url "127.0.0.1:$GRPC" --concurrency 8 \
        --duration 30 --out "$WORK/bench_$label" --json > "$WORK/bench_$label.json"
    stop
}
serve_and_bench default
serve_and_bench fp32 --artifact onnx

sed -i "s#$WORK#WORK#g" "$OUT"/*.txt  # no machine paths in the committed report
python - "$WORK" "$OUT" <<'PY'
import json, sys, time
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = {}
for label in ("default", "fp32"):
    result = json.loads((work / f"bench_{label}.json").read_text())
    grpc = [r for r in result["results"] if r.get("protocol") == "grpc" and r["status"] == "ok"]
    rows[label] = {**grpc[0], "artifact": (out / f"{label}.triton.txt").read_text().split(
        "Classifier artifact: ")[1].split(",")[0]}
    env = result["environment"]
ratio = rows["default"]["throughput"] / rows["fp32"]["throughput"]
manifest = json.loads((work / "resnet50" / "manifest.json").read_text())
int8 = manifest["artifacts"]["model.int8.onnx"]["parity"]
summary = {"date": time.strftime("%Y-%m-%d"), "cpu": env["cpu"], "cores": env["cpu_cores"],
           "model": "resnet50 at 224 px, 3 epochs from scratch on 400 digits (JPEG 256 px)",
           "protocol": "grpc", "concurrency": 8, "rows": rows, "speedup": ratio,
           "int8_gate": int8}
(out / "serving.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
lines = [f"# Served CPU throughput: default deployment vs FP32-served ({summary['date']})", "",
         f"{env['cpu']}, {env['cpu_cores']} cores; {summary['model']}; JPEG bytes through the "
         "ensemble over gRPC at concurrency 8, 30 s per deployment, one run.", "",
         "| deployment | classifier artifact | images/s | p50 ms | p99 ms |", "|---|---|---:|---:|---:|"]
for label, r in rows.items():
    lines.append(f"| {'rtk triton (default)' if label == 'default' else 'rtk triton --artifact onnx'}"
                 f" | {r['artifact']} | {r['throughput']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
lines += ["", f"Default over FP32-served: **{ratio:.2f}x**. INT8 gate on {int8['n']} held-out "
          f"images: top-1 {int8['top1']:.2%} vs {int8['reference_top1']:.2%} (PyTorch), "
          f"agreement {int8['agreement']:.2%}, {'PASS' if int8['passed'] else 'FAIL'}."]
(out / "serving.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
