"""Served latency per model of the ensemble, before and after a scheduling change, in one run.

For each repository variant of one run (`rtk triton --platform python` with the options
given per variant), on the real local Triton server:
- each model of the ensemble on its own (preprocess: one JPEG's bytes; classifier: a uint8
  crop; postprocess, NumPy only: logits) and the JPEG-in ensemble (the run's held-out images
  as bytes), at concurrency 1 and 8, for --seconds each: p50, p99, max, requests over 200 ms;
- a burst: 256 clients each sending one request at once; the worst request.

  python benchmarks/serving_latency.py RUN --out benchmarks/cpu/serving/latency.json \
      --variant "queue_policy=--max-queue-size 64 --queue-timeout-ms 5000" --variant "default="
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np



def percentiles(lat_ms) -> dict:
    a = np.asarray(lat_ms, float)
    return {"requests": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2), "max_ms": round(float(a.max()), 1),
            "over_200_ms": int((a > 200).sum()), "p99_over_p50": round(float(np.percentile(a, 99) /
                                                                            np.percentile(a, 50)), 1)}


def tensor_clients(url: str, model: str, name: str, array: np.ndarray, dtype: str, seconds: float,
                   concurrency: int = 1) -> dict:
    """`concurrency` gRPC clients, each sending one request at a time to one model."""
    import tritonclient.grpc as grpc

    lat: list[float] = []
    gate = threading.Barrier(concurrency)

    def one() -> None:
        client = grpc.InferenceServerClient(url)
        inp = grpc.InferInput(name, list(array.shape), dtype)
        inp.set_data_from_numpy(array)
        for _ in range(10):
            client.infer(model, [inp])
        gate.wait()
        mine, stop = [], time.perf_counter() + seconds
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            client.infer(model, [inp])
            mine.append((time.perf_counter() - t0) * 1000)
        lat.extend(mine)
        client.close()
    threads = [threading.Thread(target=one) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {**percentiles(lat), "requests_per_s": round(len(lat) / seconds, 1)}


def burst(bundle, url: str, payload: bytes, n: int = 256) -> dict:
    from toolkit.bench.triton import open_client

    clients = [open_client(bundle, "grpc", url) for _ in range(n)]
    gate, lat, failed = threading.Barrier(n), [], []

    def one(c):
        gate.wait()
        t0 = time.perf_counter()
        try:
            c([payload])
            lat.append((time.perf_counter() - t0) * 1000)
        except Exception as exc:  # noqa: BLE001 - a rejected request is counted
            failed.append(str(exc)[:120])
    threads = [threading.Thread(target=one, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in clients:
        c.close()
    return {"clients": n, "answered": len(lat), "failed": len(failed),
            "worst_ms": round(max(lat), 1) if lat else None,
            "first_error": failed[0] if failed else None}


def measure(run: Path, options: list[str], seconds: float, work: Path) -> dict:
    from toolkit.bench.common import sample_paths
    from toolkit.bench.triton import load
    from toolkit.core.bundle import Bundle
    from toolkit.triton.server import TritonServer, free_port

    bundle = Bundle.load(run)
    repo = work / "repo"
    subprocess.run([sys.executable, "-m", "toolkit", "triton", str(run), "--repo", str(repo),
                    "--platform", "python", "--name", "digits", *options], check=True,
                   capture_output=True)
    server = TritonServer(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                          heal=False).start()
    url, crop = server.endpoints["grpc"], bundle.preprocessing.crop
    out = {"options": " ".join(options)}
    try:
        payloads = [[p.read_bytes()] for p in sample_paths(bundle, 64)]
        steps = {"preprocess": ("digits_preprocess", "image",
                                np.array([[payloads[0][0]]], dtype=object), "BYTES"),
                 "classifier": ("digits_classifier", "input", np.zeros((1, crop, crop, 3), np.uint8),
                                "UINT8"),
                 "postprocess": ("digits_postprocess", "raw_logits",
                                 np.zeros((1, len(bundle.classes)), np.float32), "FP32")}
        for c in (1, 8):
            for role, (model, name, array, dtype) in steps.items():
                out[f"{role}_c{c}"] = tensor_clients(url, model, name, array, dtype, seconds, c)
            res = load(bundle, "grpc", url, payloads=payloads, concurrency=c, seconds=seconds)
            out[f"ensemble_jpeg_c{c}"] = {**percentiles(res["lat_ms"]), "failed": res["failed"],
                                          "images_per_s": round(res["throughput"], 1)}
        out["burst_c256"] = burst(bundle, url, payloads[0][0])
    finally:
        server.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--variant", action="append", required=True, help="NAME=rtk triton options")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--out")
    args = ap.parse_args()
    from toolkit.bench.system import environment

    result = {"environment": environment(), "seconds": args.seconds, "variants": {}}
    for spec in args.variant:
        name, _, options = spec.partition("=")
        print(f"variant {name}: {options or '(defaults)'}", file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            result["variants"][name] = measure(Path(args.run), shlex.split(options), args.seconds, Path(tmp))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
