"""Reproduce the ~500 ms stalls of the local Triton's Python backend with a minimal model.

One NumPy-only Python-backend model (output = input) in several scheduling variants, one
server, one gRPC client sending one request at a time per variant. The variants isolate
what rtk's configs add: dynamic batching, and a queue policy on it (max_queue_size and a
default timeout: rtk's bounded queues). Triton core's dynamic batcher sleeps up to 500 ms
(`default_wait_microseconds`) when its queue is empty and is woken by Enqueue only when the
rate limiter reports a waiting instance; with a queue policy, payload prefetching is off and
a request that arrives before the instance thread is back waits out the 500 ms
(triton-inference-server/core, dynamic_batch_scheduler.cc and scheduler_utils.cc, r24.10).

  python benchmarks/python_backend_stall.py [--seconds 10] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "x").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x.copy())]))
        return out
'''

POLICY = ("default_queue_policy { timeout_action: REJECT max_queue_size: 64 "
          "default_timeout_microseconds: 5000000 allow_timeout_override: true }")
VARIANTS = {  # name -> (dynamic_batching block or "", instances)
    "batching_queue_policy": (f"dynamic_batching {{ max_queue_delay_microseconds: 100 {POLICY} }}", 1),
    "batching_no_policy": ("dynamic_batching { max_queue_delay_microseconds: 100 }", 1),
    "no_batching": ("", 1),
    "batching_queue_policy_2_instances": (
        f"dynamic_batching {{ max_queue_delay_microseconds: 100 {POLICY} }}", 2),
}


def write_repo(root: Path) -> None:
    for name, (batching, instances) in VARIANTS.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(MODEL)
        (root / name / "config.pbtxt").write_text(
            f'name: "{name}"\nbackend: "python"\nmax_batch_size: 8\n'
            'input [{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }]\n'
            'output [{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }]\n'
            f'{batching}\ninstance_group [{{ kind: KIND_CPU count: {instances} }}]\n')


def one_client(url: str, model: str, seconds: float) -> dict:
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(url)
    x = np.ones((1, 4), np.float32)
    inp = grpc.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    for _ in range(20):  # warm-up
        client.infer(model, [inp])
    before = client.get_inference_statistics(model, as_json=True)["model_stats"][0]["inference_stats"]
    lat, stop = [], time.perf_counter() + seconds
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        client.infer(model, [inp])
        lat.append((time.perf_counter() - t0) * 1000)
    after = client.get_inference_statistics(model, as_json=True)["model_stats"][0]["inference_stats"]
    client.close()
    n = int(after["success"]["count"]) - int(before["success"]["count"])

    def per_request_ms(key: str) -> float:
        return (int(after[key]["ns"]) - int(before[key]["ns"])) / max(1, n) / 1e6
    a = np.asarray(lat)
    return {"requests": len(a), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2), "max_ms": round(float(a.max()), 1),
            "over_200_ms": int((a > 200).sum()), "server_queue_ms": round(per_request_ms("queue"), 2),
            "server_compute_ms": round(per_request_ms("compute_infer"), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--json")
    args = ap.parse_args()
    from toolkit.triton.server import TritonServer, free_port

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        write_repo(repo)
        server = TritonServer(repo, http_port=free_port(), grpc_port=free_port(),
                              metrics_port=free_port(), heal=False).start()
        try:
            result = {name: one_client(server.endpoints["grpc"], name, args.seconds) for name in VARIANTS}
        finally:
            server.stop()
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
