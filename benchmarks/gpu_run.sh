#!/usr/bin/env bash
# Prepared GPU benchmark for a one-GPU machine (torch, torchvision, pillow, numpy; rtk runs
# from the tree, not installed). Usage: benchmarks/gpu_run.sh OUT_DIR
#
# Every stage runs under `timeout`, clipped to what is left of BUDGET_S (default 400 s, so
# the whole script stays under 7 minutes), and writes OUT_DIR/<stage>.json; a stage that
# fails or times out leaves its JSON out and the rest still run. The last step merges the
# stage JSONs into OUT_DIR/results.json: gpu_name, date, finetune_end_to_end_images_per_s,
# train_step_images_per_s, data_pipeline_images_per_s {cpu, gpu}, git_commit (+ the stages).
# Files in OUT_DIR: run.log, <stage>.json for pipeline, finetune, step, parity, inference;
# results.json (7 files).
#   data      12,000 generated 256 px JPEGs in 10 classes (not kept)
#   pipeline  decode + standard augmentation alone: PIL in workers vs nvJPEG + batched; 100
#             batches timed after the workers' num_workers x prefetch_factor prefetched ones
#   finetune  rtk finetune, ResNet-50, 224 px, batch 64, 4 epochs; mean img/s of epochs 2-4
#   step      the training step alone (compiled bf16) and the plain eager-FP32 reference
#             (TF32 off: strict FP32)
#   parity    eval inputs of the GPU path vs the CPU path, top-1 agreement of the run's model
#   inference torch-half (fp16, CUDA graphs) and torch-amp from uint8 host arrays, bs 1/64/256
#             (benchmarks/gpu_inference.py; inference_best_images_per_s, _backend, bs1 p50)
# git_commit: $RTK_GIT_COMMIT, else `git rev-parse HEAD`, else the file benchmarks/GIT_COMMIT,
# which `benchmarks/gpu_run.sh --stamp` writes in a checkout: run it before copying the tree
# to a machine without its .git (the copy then carries the commit).
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu_run.sh OUT_DIR | --stamp}
HERE=$(cd "$(dirname "$0")" && pwd)
if [[ $OUT == --stamp ]]; then
    git -C "$HERE" rev-parse HEAD >"$HERE/GIT_COMMIT" && cat "$HERE/GIT_COMMIT"
    exit
fi
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)  # absolute before the cd below
cd "$HERE/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
LOG=$OUT/run.log
BUDGET_S=${BUDGET_S:-400}
COMMIT=${RTK_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || cat benchmarks/GIT_COMMIT 2>/dev/null)}
[[ -n $COMMIT ]] || echo "== no commit: no .git, RTK_GIT_COMMIT or benchmarks/GIT_COMMIT" >>"$LOG"

stage() {  # stage NAME TIMEOUT_S CMD...: CMD under timeout, its output appended to run.log
    local name=$1 limit=$2 left=$((BUDGET_S - SECONDS - 15))  # 15 s kept for the merge
    shift 2
    ((left < limit)) && limit=$left
    if ((limit < 10)); then echo "== $name skipped: budget spent" >>"$LOG"; return 0; fi
    echo "== $name (timeout ${limit}s): $*" >>"$LOG"
    local start=$SECONDS
    timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
    echo "== $name rc=$? in $((SECONDS - start)) s" >>"$LOG"
}

TT=(python3 benchmarks/train_throughput.py --arch resnet50 --image-size 224 --batch-size 64
    --device "${DEVICE:-cuda}" --data "$WORK/data")  # DEVICE=cpu: a smoke test of this script
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >>"$LOG" 2>&1
stage data 60 "${TT[@]}" --stage data --make-jpegs 12000  # 160+ batches of 64 for pipeline
stage pipeline 90 "${TT[@]}" --stage pipeline --steps 100 --json "$OUT/pipeline.json"
stage finetune 200 "${TT[@]}" --stage finetune --epochs 4 --bundle "$WORK/run" \
    --json "$OUT/finetune.json"
stage step 120 "${TT[@]}" --stage step --steps 40 --warmup-steps 5 --json "$OUT/step.json"
stage parity 60 "${TT[@]}" --stage parity --steps 10 --bundle "$WORK/run" \
    --json "$OUT/parity.json"
stage inference 90 python3 benchmarks/gpu_inference.py --bundle "$WORK/run" \
    --device "${DEVICE:-cuda}" --seconds 2 --json "$OUT/inference.json"
# (further stages go here, each writing $OUT/<stage>.json; the merge picks them up)

python3 - "$OUT" "$COMMIT" <<'PY' >>"$LOG" 2>&1
import datetime, json, sys
from pathlib import Path

out, commit = Path(sys.argv[1]), sys.argv[2] or None
stages = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))
          if p.name != "results.json"}
get = lambda stage, key: stages.get(stage, {}).get(key)  # noqa: E731
env = next((s["environment"] for s in stages.values() if "environment" in s), {})
gpu_name = env.get("gpu")
if gpu_name is None:
    try:
        import torch
        gpu_name = torch.cuda.get_device_name(0)
    except Exception as exc:  # no GPU or no driver: say so, do not invent one
        gpu_name = f"unavailable ({exc})"
results = {
    "gpu_name": gpu_name,
    "date": datetime.date.today().isoformat(),
    "finetune_end_to_end_images_per_s": get("finetune", "finetune_end_to_end_images_per_s"),
    "train_step_images_per_s": get("step", "train_step_images_per_s"),
    "data_pipeline_images_per_s": get("pipeline", "data_pipeline_images_per_s")
                                  or {"cpu": None, "gpu": None},
    "git_commit": commit,
    "plain_eager_fp32_images_per_s": get("step", "plain_eager_fp32_images_per_s"),
    "eval_parity": get("parity", "eval_parity"),
    "inference_best_images_per_s": get("inference", "inference_best_images_per_s"),
    "inference_best_backend": get("inference", "inference_best_backend"),
    "inference_bs1_p50_ms": get("inference", "inference_bs1_p50_ms"),
    "batch_size": 64, "image_size": 224, "arch": "resnet50",
    "environment": env,
    "stages": {k: {f: v for f, v in s.items() if f != "environment"} for k, s in stages.items()},
}
(out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
print(json.dumps({k: results[k] for k in list(results)[:6]}, indent=2))
PY
echo "results: $OUT/results.json ($SECONDS s)" | tee -a "$LOG"
