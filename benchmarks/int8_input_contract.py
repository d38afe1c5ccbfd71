"""INT8 speed before and after the uint8 input contract, interleaved in one process.

BEFORE is a model.int8.onnx exported by an rtk from before the contract (float32 NCHW input,
normalised by the caller); AFTER one exported by this rtk from the same model.pt (uint8 NHWC
input, normalised inside the graph). Both run in ONNX Runtime with the same session options,
alternating in rounds so both see the same machine state. The float graph's caller also had
to normalise each batch (timed separately, single-threaded NumPy as rtk did it).

  python benchmarks/int8_input_contract.py BEFORE.onnx AFTER.onnx --out benchmarks/cpu/int8_contract.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def normalise(images: np.ndarray) -> np.ndarray:
    """What a caller of the float-input graph had to do first (rtk's former eval_array)."""
    x = images.astype(np.float32) / 255.0
    return np.ascontiguousarray(((x - np.float32(MEAN)) / np.float32(STD)).transpose(0, 3, 1, 2))


def session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    images = np.random.default_rng(0).integers(0, 256, (args.batch, args.size, args.size, 3),
                                               dtype=np.uint8)
    floats = normalise(images)
    runs = {}
    for label, path, x in (("before (float32 NCHW input)", args.before, floats),
                           ("after (uint8 NHWC input)", args.after, images)):
        s = session(path, args.threads)
        feed = {s.get_inputs()[0].name: x}
        s.run(None, feed)
        runs[label] = (s, feed)
    rates: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(args.rounds):
        for label, (s, feed) in runs.items():
            start, n = time.perf_counter(), 0
            while time.perf_counter() - start < args.seconds:
                s.run(None, feed)
                n += args.batch
            rates[label].append(round(n / (time.perf_counter() - start), 1))
    result = {"date": time.strftime("%Y-%m-%d"), "batch": args.batch, "image_size": args.size,
              "threads": args.threads, "images_per_s": {
                  k: {"median": float(np.median(v)), "rounds": v} for k, v in rates.items()}}
    before, after = (r["median"] for r in result["images_per_s"].values())
    result["after_over_before"] = round(after / before, 3)
    # The float graph's caller normalised first; with the contract the graph does it. Counting
    # that step on the caller's side too gives what a user of each graph waits for per batch.
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < args.seconds:
        normalise(images)
        n += 1
    prep_ms = 1000 * (time.perf_counter() - start) / n
    with_prep = args.batch / (args.batch / before + prep_ms / 1000)
    result["caller_normalisation_ms_per_batch"] = round(prep_ms, 2)
    result["before_with_caller_normalisation_images_per_s"] = round(with_prep, 1)
    result["after_over_before_with_normalisation"] = round(after / with_prep, 3)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
