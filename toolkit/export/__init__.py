"""`rtk export`: ONNX FP32/FP16/INT8 graphs and TensorRT engines, each gated on accuracy."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core.bundle import Bundle
from ..core.errors import GateFailed, RtkError
from ..core.host import tensorrt_ready
from ..core.manifest import ExportRecord
from .gate import Tolerances, judge, measure


PENDING = {"trusted": False, "gate": "pending"}  # until _gate_all has judged the artifact


@dataclass
class ExportOptions:
    fp16: bool = False
    int8: bool = False
    format: str = "all"  # onnx | tensorrt | all
    opset: int = 18
    max_batch: int = 64
    opt_batch: int | None = None  # TensorRT profile's opt batch (default: half of max_batch)
    calib_size: int = 256
    int8_scheme: str = "cpu"  # cpu: uint8 activations (fast in ONNX Runtime); tensorrt: symmetric
    int8_search: str = "auto"  # auto: search when the first calibration fails its gate; off
    int8_budget: int = 12  # quantizations the search may try
    data_dir: str | None = None
    device: str = "cpu"  # where the ONNX artifacts are checked
    tolerances: Tolerances = field(default_factory=Tolerances)


def export(bundle: Bundle, opts: ExportOptions, echo: Callable = print,
           *, progress: bool = False) -> list[dict[str, Any]]:
    """Make the requested artifacts, gate each one, record all in the manifest.

    Returns the parity table; raises GateFailed (after recording) if any artifact failed.
    Work happens in a staging folder: an error other than a failed gate changes nothing.
    """
    from .staging import staged

    with staged(bundle) as stage:
        rows, int8_note = _export(stage, opts, echo, progress=progress, run_dir=bundle.root)
    failed = [r["artifact"] for r in rows if not r["passed"]]
    if failed:
        hint = ("See the parity table above. Re-export, or adjust the tolerance flags "
                "(--fp32-agreement, --fp16-delta, --int8-delta) if the loss is acceptable.")
        if int8_note:  # the search's verdict: its best try and the next thing to try
            hint = f"{int8_note} {hint}"
        elif "model.int8.onnx" in failed and opts.int8_search == "off":
            hint = f"Let rtk search INT8 configurations: drop --int8-search off. {hint}"
        raise GateFailed(f"Accuracy gate failed for {', '.join(failed)}; marked untrusted.",
                         hint, exit_code=3)
    return rows


def _export(bundle: Bundle, opts: ExportOptions, echo: Callable,
            *, progress: bool, run_dir: Path) -> tuple[list[dict], str | None]:
    """The export itself, on the staged view `bundle`; hints name the real `run_dir`."""
    from .onnx_export import export_onnx, io_spec
    from .precision import to_fp16

    trt_reason = tensorrt_ready()
    if opts.format == "tensorrt" and trt_reason:
        raise RtkError(f"Cannot build a TensorRT engine here: {trt_reason}.",
                       f"On a GPU host with `pip install 'rtk[gpu]'` run: "
                       f"rtk export {run_dir} --fp16 --format tensorrt")
    if opts.format == "tensorrt" and not opts.fp16:
        raise RtkError("TensorRT engines are built from the FP16 graph.", "Add --fp16.")
    bundle.artifact("model.pt")  # refuse a changed checkpoint before deriving from it
    made: list[tuple[str, str, str]] = []  # (artifact, backend, precision)
    echo(f"Exporting {bundle.manifest.arch} to ONNX (opset {opts.opset}, dynamic batch)...")
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
        _int8(bundle, opts, echo)
        made.append(("model.int8.onnx", "onnxruntime-int8", "int8"))
    if opts.fp16 and opts.format in ("tensorrt", "all"):
        if trt_reason:
            echo(f"No TensorRT engine: {trt_reason}. The FP16 ONNX is ready for it; on a GPU host "
                 f"run: rtk export {run_dir} --fp16 --format tensorrt")
        else:
            _build_plan(bundle, opts)
            made.append(("model.fp16.plan", "tensorrt", "fp16"))
    gate = Gate(bundle, opts, echo, progress=progress)
    rows = [gate.check(*m) for m in made]
    int8, note = next((i for i, m in enumerate(made) if m[0] == "model.int8.onnx"), None), None
    if int8 is not None:
        note = _int8_verdict(bundle, opts, gate, rows=rows, i=int8, echo=echo)
    bundle.update(export=ExportRecord(parity=tuple(rows), data=opts.data_dir or "validation split"))
    bundle.save()
    return rows, note


def _int8_verdict(bundle: Bundle, opts: ExportOptions, gate: "Gate", *, rows: list[dict], i: int,
                  echo: Callable) -> str | None:
    """Search when the single shot failed (auto), else time it; None or why nothing passed."""
    from .int8 import int8_speed, search_int8

    if not rows[i]["passed"] and opts.int8_search == "auto":
        echo("model.int8.onnx failed its gate: searching for an INT8 configuration that passes...")
        note = search_int8(bundle, opts, gate, first_row=rows[i], echo=echo)
        rows[i] = {**bundle.entry("model.int8.onnx").parity,
                   "artifact": "model.int8.onnx"}
        return note
    path = bundle.path("model.int8.onnx")
    bundle.update_artifact("model.int8.onnx", speed=int8_speed(bundle, path, path, echo=echo))
    bundle.save()
    return None


def _int8(bundle: Bundle, opts: ExportOptions, echo: Callable) -> None:
    from .int8 import export_int8
    from .onnx_export import io_spec

    info = export_int8(bundle, opts, echo)
    bundle.record_artifact("model.int8.onnx", parent="model.onnx", **PENDING, precision="int8",
                           io=io_spec(bundle.path("model.int8.onnx")), **info)


def _build_plan(bundle: Bundle, opts: ExportOptions) -> None:
    from .tensorrt import build_engine

    crop = bundle.preprocessing.crop
    info = build_engine(bundle.path("model.fp16.onnx"), bundle.path("model.fp16.plan"),
                        bundle.manifest.input.name, hwc=(crop, crop, 3), max_batch=opts.max_batch,
                        opt_batch=opts.opt_batch, cache_path=bundle.path("tensorrt.timing.cache"))
    bundle.record_artifact("model.fp16.plan", parent="model.fp16.onnx", **PENDING, precision="fp16",
                           io=bundle.entry("model.fp16.onnx").io, **info)


class Gate:
    """The accuracy gate for one export: held-out images and the PyTorch reference, computed once."""

    def __init__(self, bundle: Bundle, opts: ExportOptions, echo: Callable, *, progress: bool):
        from ..backends import open_backend
        from ..backends.run import folder_samples, run_backend, validation_samples

        self.bundle, self.opts, self.progress = bundle, opts, progress
        samples = folder_samples(bundle, opts.data_dir) if opts.data_dir else validation_samples(bundle)
        self.paths, self.labels = [p for p, _ in samples], np.array([y for _, y in samples])
        echo(f"Checking artifacts against PyTorch on {len(self.paths)} held-out images...")
        with open_backend("torch", bundle, "cpu") as ref_backend:
            self.reference = run_backend(ref_backend, self.paths, bundle.preprocessing, batch_size=32,
                                         progress=progress)

    def check(self, artifact: str, backend: str, precision: str) -> dict:
        """Judge one artifact and record the verdict (trusted or not) in the manifest."""
        device = "cuda" if backend == "tensorrt" else self.opts.device
        row = judge(measure(self.bundle, backend, device, paths=self.paths, labels=self.labels,
                            reference=self.reference, progress=self.progress),
                    precision, self.opts.tolerances)
        return self.record(artifact, row)

    def record(self, artifact: str, row: dict) -> dict:
        """Record a verdict (trusted or not) in the manifest."""
        row = {**row, "artifact": artifact}
        self.bundle.update_artifact(
            artifact, trusted=row["passed"], gate="passed" if row["passed"] else "failed",
            parity={k: v for k, v in row.items() if k != "artifact"})
        self.bundle.save()
        return row
