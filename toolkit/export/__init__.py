"""`rtk export`: ONNX FP32/FP16/INT8 graphs and TensorRT engines, each gated on accuracy."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..bundle import Bundle
from ..errors import GateFailed, RtkError
from ..machine import tensorrt_ready
from .gate import Tolerances, judge, measure


PENDING = {"trusted": False, "gate": "pending"}  # until _gate_all has judged the artifact


@dataclass
class ExportOptions:
    fp16: bool = False
    int8: bool = False
    format: str = "all"  # onnx | tensorrt | all
    opset: int = 18
    max_batch: int = 64
    calib_size: int = 256
    int8_scheme: str = "cpu"  # cpu: uint8 activations (fast in ONNX Runtime); tensorrt: symmetric
    data_dir: str | None = None
    device: str = "cpu"  # where the ONNX artifacts are checked
    tolerances: Tolerances = field(default_factory=Tolerances)


def calibration_batches(bundle: Bundle, size: int, batch: int = 16, seed: int = 0):
    """A class-stratified sample of the training split, with the eval transform."""
    from ..evaluate import batches
    split = bundle.split()
    by_class: dict[int, list] = defaultdict(list)
    for rel, label in split["train"]:
        by_class[label].append(rel)
    rng, per_class = random.Random(seed), max(1, size // max(1, len(by_class)))
    chosen = [rel for label in sorted(by_class)
              for rel in rng.sample(by_class[label], min(per_class, len(by_class[label])))]
    root = Path(bundle.manifest["data"]["train_dir"])
    return batches([root / rel for rel in chosen], bundle.preprocessing, batch), len(chosen)


def export(bundle: Bundle, opts: ExportOptions, echo: Callable = print,
           progress: bool = False) -> list[dict[str, Any]]:
    """Make the requested artifacts, gate each one, record all in the manifest.

    Returns the parity table; raises GateFailed (after recording) if any artifact failed.
    """
    from .onnx_export import export_onnx, io_spec
    from .precision import to_fp16, to_int8

    trt_reason = tensorrt_ready()
    if opts.format == "tensorrt" and trt_reason:
        raise RtkError(f"Cannot build a TensorRT engine here: {trt_reason}.",
                       f"On a GPU host with `pip install 'rtk[gpu]'` run: "
                       f"rtk export {bundle.root} --fp16 --format tensorrt")
    if opts.format == "tensorrt" and not opts.fp16:
        raise RtkError("TensorRT engines are built from the FP16 graph.", "Add --fp16.")
    bundle.artifact("model.pt")  # refuse a changed checkpoint before deriving from it
    made: list[tuple[str, str, str]] = []  # (artifact, backend, precision)
    echo(f"Exporting {bundle.manifest['arch']} to ONNX (opset {opts.opset}, dynamic batch)...")
    export_onnx(bundle, opts.opset, opts.max_batch)
    bundle.record_artifact("model.onnx", parent="model.pt", **PENDING, io=io_spec(bundle.path("model.onnx")),
                           precision="fp32", max_batch=opts.max_batch)
    made.append(("model.onnx", "onnxruntime", "fp32"))
    if opts.fp16:
        tool = to_fp16(bundle.path("model.onnx"), bundle.path("model.fp16.onnx"))
        bundle.record_artifact("model.fp16.onnx", parent="model.onnx", **PENDING, precision="fp16", tool=tool,
                               io=io_spec(bundle.path("model.fp16.onnx")))
        made.append(("model.fp16.onnx", "onnxruntime-fp16", "fp16"))
    if opts.int8:
        echo(f"Calibrating INT8 on up to {opts.calib_size} training images...")
        calib, n = calibration_batches(bundle, opts.calib_size)
        info = to_int8(bundle.path("model.onnx"), bundle.path("model.int8.onnx"), calib,
                       bundle.manifest["input"]["name"], opts.int8_scheme)
        bundle.record_artifact("model.int8.onnx", parent="model.onnx", **PENDING, precision="int8",
                               calibration_images=n, **info)
        made.append(("model.int8.onnx", "onnxruntime-int8", "int8"))
    if opts.fp16 and opts.format in ("tensorrt", "all"):
        if trt_reason:
            echo(f"No TensorRT engine: {trt_reason}. The FP16 ONNX is ready for it; on a GPU host "
                 f"run: rtk export {bundle.root} --fp16 --format tensorrt")
        else:
            _build_plan(bundle, opts)
            made.append(("model.fp16.plan", "tensorrt", "fp16"))
    return _gate_all(bundle, made, opts, echo, progress)


def _build_plan(bundle: Bundle, opts: ExportOptions) -> None:
    from .tensorrt import build_engine

    crop = bundle.preprocessing["crop"]
    info = build_engine(bundle.path("model.fp16.onnx"), bundle.path("model.fp16.plan"),
                        bundle.manifest["input"]["name"], (3, crop, crop), opts.max_batch,
                        cache_path=bundle.path("tensorrt.timing.cache"))
    bundle.record_artifact("model.fp16.plan", parent="model.fp16.onnx", **PENDING, precision="fp16", **info)


def _gate_all(bundle: Bundle, made, opts: ExportOptions, echo, progress) -> list[dict]:
    from ..backends import open_backend
    from ..evaluate import folder_samples, run_backend, validation_samples

    samples = folder_samples(bundle, opts.data_dir) if opts.data_dir else validation_samples(bundle)
    paths, labels = [p for p, _ in samples], np.array([y for _, y in samples])
    echo(f"Checking {len(made)} artifact(s) against PyTorch on {len(paths)} held-out images...")
    with open_backend("torch", bundle, "cpu") as ref_backend:
        reference = run_backend(ref_backend, paths, bundle.preprocessing, 32, progress)
    rows = []
    for artifact, backend, precision in made:
        device = "cuda" if backend == "tensorrt" else opts.device
        row = judge(measure(bundle, backend, device, paths, labels, reference, progress),
                    precision, opts.tolerances)
        row["artifact"] = artifact
        bundle.manifest["artifacts"][artifact].update(
            trusted=row["passed"], gate="passed" if row["passed"] else "failed",
            parity={k: v for k, v in row.items() if k != "artifact"})
        rows.append(row)
    bundle.manifest["export"] = {"parity": rows, "data": opts.data_dir or "validation split"}
    bundle.save()
    failed = [r["artifact"] for r in rows if not r["passed"]]
    if failed:
        raise GateFailed(f"Accuracy gate failed for {', '.join(failed)}; marked untrusted.",
                         "See the parity table above. Re-export, or adjust the tolerance flags "
                         "(--fp32-agreement, --fp16-delta, --int8-delta) if the loss is acceptable.",
                         exit_code=3)
    return rows
