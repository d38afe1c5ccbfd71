"""Inference stage of benchmarks/gpu_run.sh: PyTorch GPU backends from uint8 host arrays.

Times rtk's backends exactly as a caller uses them: a NumPy uint8 NHWC batch in host memory,
logits back in host memory, every copy included. Writes the fields that results.json reads:
inference_best_images_per_s {"1", "64", "256"}, inference_best_backend, inference_bs1_p50_ms.
Without --bundle (the fine-tuning stage failed or was skipped), a ResNet-50 bundle with random
weights is made: speed does not depend on the weights.

  python3 benchmarks/gpu_inference.py --bundle RUN --json OUT/inference.json [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def random_bundle(root: Path, arch: str, crop: int):
    """A bundle whose model.pt holds random weights (for timing only; never for accuracy)."""
    import torch

    from toolkit.core.bundle import Bundle
    from toolkit.core.contract import input_spec
    from toolkit.train.model import build_model
    from toolkit.data.transforms import recipe

    model = build_model(arch, 10, "none")
    bundle = Bundle.create(root, arch=arch, classes=[str(i) for i in range(10)], num_classes=10,
                           preprocessing=recipe(image_size=crop), input=input_spec(crop),
                           output={"name": "logits", "dtype": "float32", "shape": [-1, 10]})
    torch.save({"state_dict": model.state_dict(), "arch": arch}, root / "model.pt")
    bundle.record_artifact("model.pt")
    return bundle


def time_backend(bundle, name: str, device: str, sizes: list[int], seconds: float) -> list[dict]:
    from toolkit.backends import open_backend
    from toolkit.bench.harness import Timing, time_calls

    crop = bundle.preprocessing["crop"]
    rng = np.random.default_rng(0)
    rows = []
    start = time.perf_counter()
    with open_backend(name, bundle, device) as backend:
        for bs in sizes:
            batch = rng.integers(0, 256, (bs, crop, crop, 3), dtype=np.uint8)
            try:
                stats = time_calls(lambda b=batch: backend(b), bs, Timing(duration=seconds, warmup=1.0),
                                   device=device)
                rows.append({"backend": name, "batch_size": bs, "status": "ok", **stats})
            except Exception as exc:  # out of memory and friends: a row, not a crash
                rows.append({"backend": name, "batch_size": bs, "status": f"error: {exc}"[:200]})
            print(json.dumps(rows[-1]), flush=True)
    rows.append({"backend": name, "setup_and_timing_s": round(time.perf_counter() - start, 1)})
    return rows


def best(rows: list[dict]) -> dict:
    ok = [r for r in rows if r.get("status") == "ok"]
    per_bs = {}
    for r in ok:
        key = str(r["batch_size"])
        if key not in per_bs or r["throughput"] > per_bs[key]["throughput"]:
            per_bs[key] = r
    top = per_bs.get("256") or max(ok, key=lambda r: r["throughput"], default=None)
    return {"inference_best_images_per_s": {k: round(v["throughput"], 1) for k, v in per_bs.items()},
            "inference_best_backend": top["backend"] if top else None,
            "inference_bs1_p50_ms": min((r["p50_ms"] for r in ok if r["batch_size"] == 1),
                                        default=None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-sizes", default="1,64,256")
    parser.add_argument("--backends", default="torch-half,torch-amp")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()

    from toolkit.core.bundle import Bundle

    if args.bundle and (args.bundle / "model.pt").is_file():
        bundle = Bundle.load(args.bundle)
    else:
        bundle = random_bundle(Path(tempfile.mkdtemp()) / "run", args.arch, args.image_size)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    rows = []
    for name in args.backends.split(","):
        rows += time_backend(bundle, name, args.device, sizes, args.seconds)
    result = {**best(rows), "device": args.device, "input": "uint8 NHWC host arrays, copies included",
              "h2d_bytes_per_image": args.image_size * args.image_size * 3, "inference": rows}
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in list(result)[:3]}, indent=2))


if __name__ == "__main__":
    main()
