"""INT8 speed before and after the uint8 input contract, interleaved in one process.

BEFORE is a model.int8.onnx exported by an rtk from before the contract (float32 NCHW input,
normalised by the caller); AFTER one exported by this rtk from the same model.pt (uint8 NHWC
input, normalised inside the graph). Both run in ONNX Runtime with the same session options,
alternating in rounds so both see the same machine state. The float graph's caller also had
to normalise each batch (timed separately, single-threaded NumPy as rtk did it).

  python benchmarks/int8_input_contract.py BEFORE.onnx AFTER.onnx --out benchmarks/cpu/int8_contract.json

`--cast-order DIR` instead compares the two orders of the contract's first ops (issue 16):
ResNet-50 (random init: speed only) exported as FP32 and as default-scheme INT8 twice, once
with the uint8 input transposed then cast (the previous graph) and once cast then transposed
(toolkit/core/contract.py now), all four timed in the same interleaved rounds.

  python benchmarks/int8_input_contract.py --cast-order /tmp/co --out benchmarks/cpu/cast_order.json
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


def interleaved(graphs: dict[str, tuple[Path, np.ndarray]], batch: int, rounds: int,
                seconds: float, threads: int, abba: bool = False) -> dict[str, list[float]]:
    """Images/s of each graph per round, the graphs taking turns within every round (`abba`:
    in reverse order every other round, so neither of two neighbours always goes first)."""
    runs = {}
    for label, (path, x) in graphs.items():
        s = session(path, threads)
        feed = {s.get_inputs()[0].name: x}
        s.run(None, feed)
        runs[label] = (s, feed)
    rates: dict[str, list[float]] = {label: [] for label in runs}
    for r in range(rounds):
        turns = list(runs.items())
        for label, (s, feed) in (turns[::-1] if abba and r % 2 else turns):
            start, n = time.perf_counter(), 0
            while time.perf_counter() - start < seconds:
                s.run(None, feed)
                n += batch
            rates[label].append(round(n / (time.perf_counter() - start), 1))
    return rates


ORDERS = ("transpose_then_cast", "cast_then_transpose")  # the previous graph, then the new one


def export_cast_orders(folder: Path, size: int) -> dict[str, Path]:
    """FP32 and INT8 ResNet-50 graphs with each order of the uint8 input's Transpose and Cast."""
    import types

    import torch
    import torchvision

    from toolkit.core.contract import with_preprocessing
    from toolkit.core.manifest import Preprocess
    from toolkit.export.precision import prepare_for_int8, to_int8

    pre = Preprocess(resize=size, crop=size, mean=MEAN, std=STD)
    net = torchvision.models.resnet50(weights=None).eval()
    rng = np.random.default_rng(1)
    calib = [rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8) for _ in range(2)]
    paths = {}
    for order in ORDERS:
        fp32, int8 = folder / f"{order}.onnx", folder / f"{order}.int8.onnx"
        paths[f"fp32 {order}"], paths[f"int8 {order}"] = fp32, int8
        if fp32.is_file() and int8.is_file():  # exported by an earlier run into the same DIR
            continue
        model = with_preprocessing(net, pre)
        if order == "transpose_then_cast":  # the forward of toolkit/core/contract.py before issue 16
            def forward(self, images):
                x = images.permute(0, 3, 1, 2).to(self.scale.dtype)
                return self.net(torch.nn.functional.batch_norm(
                    x, self.zero, self.one, self.scale, self.shift, False, 0.0, 0.0))
            model.forward = types.MethodType(forward, model)
        example = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8)
        program = torch.onnx.export(model, (example,), input_names=["input"],
                                    output_names=["logits"], opset_version=18, dynamo=True,
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1,
                                                                         max=64)},))
        program.save(str(fp32))
        prepared = prepare_for_int8(fp32, folder / f"{order}.prepared.onnx")
        to_int8(prepared, int8, iter(calib), input_name="input", scheme="cpu")
    return dict(sorted(paths.items()))  # each previous graph next to its new one


def prefix_graphs(folder: Path, size: int) -> dict[str, Path]:
    """The two orders of the first two ops alone (uint8 NHWC -> float32 NCHW)."""
    import onnx
    from onnx import TensorProto, helper

    paths = {}
    for order in ORDERS:
        ops = [helper.make_node("Transpose", ["a"], ["b"], perm=[0, 3, 1, 2]),
               helper.make_node("Cast", ["b"], ["c"], to=TensorProto.FLOAT)]
        if order == ORDERS[1]:
            ops = [helper.make_node("Cast", ["a"], ["b"], to=TensorProto.FLOAT),
                   helper.make_node("Transpose", ["b"], ["c"], perm=[0, 3, 1, 2])]
        graph = helper.make_graph(ops, order, [helper.make_tensor_value_info(
            "a", TensorProto.UINT8, ["n", size, size, 3])], [helper.make_tensor_value_info(
                "c", TensorProto.FLOAT, ["n", 3, size, size])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        paths[f"prefix {order}"] = folder / f"prefix_{order}.onnx"
        onnx.save(model, str(paths[f"prefix {order}"]))
    return paths


def cast_order(args) -> None:
    """The --cast-order run: new over previous graph, FP32 and INT8, in one interleaved run."""
    args.cast_order.mkdir(parents=True, exist_ok=True)
    images = np.random.default_rng(0).integers(0, 256, (args.batch, args.size, args.size, 3),
                                               dtype=np.uint8)
    paths = export_cast_orders(args.cast_order, args.size)
    paths.update(prefix_graphs(args.cast_order, args.size))
    rates = interleaved({k: (p, images) for k, p in paths.items()}, args.batch, args.rounds,
                        args.seconds, args.threads, abba=True)
    medians = {k: float(np.median(v)) for k, v in rates.items()}
    # A busy machine moves every graph's speed from round to round: compare neighbours within
    # each round, then take the median of those ratios.
    ratios = {p: [round(new / old, 3) for new, old in zip(rates[f"{p} {ORDERS[1]}"],
                                                          rates[f"{p} {ORDERS[0]}"])]
              for p in ("fp32", "int8", "prefix")}
    result = {"date": time.strftime("%Y-%m-%d"), "model": "resnet50 (random init)",
              "batch": args.batch, "image_size": args.size, "threads": args.threads,
              "seconds_per_turn": args.seconds, "onnxruntime": _ort_version(),
              "images_per_s": {k: {"median": medians[k], "rounds": v} for k, v in rates.items()},
              "cast_then_transpose_over_transpose_then_cast": {
                  p: {"median_of_round_ratios": float(np.median(v)), "round_ratios": v}
                  for p, v in ratios.items()},
              # what the first two ops cost per batch: the most the order can move a graph
              "prefix_ms_per_batch": {o: round(1000 * args.batch / medians[f"prefix {o}"], 2)
                                      for o in ORDERS}}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, nargs="?")
    parser.add_argument("after", type=Path, nargs="?")
    parser.add_argument("--cast-order", type=Path, metavar="DIR",
                        help="compare the Transpose/Cast orders; graphs are written to DIR")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.cast_order is not None:
        return cast_order(args)
    if args.before is None or args.after is None:
        parser.error("BEFORE and AFTER graphs are needed without --cast-order")

    images = np.random.default_rng(0).integers(0, 256, (args.batch, args.size, args.size, 3),
                                               dtype=np.uint8)
    floats = normalise(images)
    rates = interleaved({"before (float32 NCHW input)": (args.before, floats),
                         "after (uint8 NHWC input)": (args.after, images)},
                        args.batch, args.rounds, args.seconds, args.threads)
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
