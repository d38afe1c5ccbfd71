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
from .cpu_gate import fresh_for_regate
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
    int8_requantize: bool = False  # quantize anew even where a graph passed on another CPU kind
    qat: bool = False  # when post-training INT8 fails its gate: quantization-aware training
    qat_epochs: int = 2
    qat_lr: float = 1e-5
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
    held_out = _held_out(bundle, opts, run_dir) if opts.int8 else None
    if opts.int8 and not opts.int8_requantize and fresh_for_regate(bundle):
        return _regate(bundle, opts, echo, progress=progress, held_out=held_out), None
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
    gate = Gate(bundle, opts, echo, progress=progress, held_out=held_out)
    rows = [gate.check(*m) for m in made]
    int8, note = next((i for i, m in enumerate(made) if m[0] == "model.int8.onnx"), None), None
    if int8 is not None:
        note = _int8_verdict(bundle, opts, gate, rows=rows, i=int8, echo=echo, progress=progress)
    bundle.update(export=ExportRecord(parity=tuple(rows), data=opts.data_dir or "validation split"))
    bundle.save()
    return rows, note


def _int8_verdict(bundle: Bundle, opts: ExportOptions, gate: "Gate", *, rows: list[dict], i: int,
                  echo: Callable, progress: bool = False) -> str | None:
    """Search when the single shot failed (auto), else time it; None or why nothing passed."""
    from . import cpu_gate
    from .int8 import calibration_images, int8_speed, search_int8

    note = None
    if not rows[i]["passed"] and (opts.int8_search == "auto" or opts.qat):
        if opts.int8_search == "auto":
            echo("model.int8.onnx failed its gate: searching for an INT8 configuration that "
                 "passes...")
            note = search_int8(bundle, opts, gate, first_row=rows[i], echo=echo)
        if opts.qat and (note or opts.int8_search == "off"):
            from .qat import qat_int8

            note = qat_int8(bundle, opts, gate, progress=progress, echo=echo)
        rows[i] = {**bundle.entry("model.int8.onnx").parity,
                   "artifact": "model.int8.onnx"}
    else:
        path = bundle.path("model.int8.onnx")
        cpu_gate.record_speed(bundle, int8_speed(bundle, path, path, echo=echo))
    cpu_gate.write(bundle, calibration_images(bundle, cpu_gate.PROBES))
    _say_served(bundle, echo)
    bundle.save()
    return note


def _say_served(bundle: Bundle, echo: Callable) -> None:
    """Whether `rtk triton --kind cpu` will serve the INT8 graph on this CPU kind, and why not."""
    from ..core.host import int8_class
    from ..core.int8_trust import serve_reason

    reason = serve_reason(bundle.entry("model.int8.onnx"), int8_class())
    if reason and bundle.entry("model.int8.onnx").trusted:
        echo(f"Note: rtk triton will serve FP32 on {int8_class()} CPUs: {reason}.")


def _held_out(bundle: Bundle, opts: ExportOptions, run_dir: Path) -> "HeldOut":
    """The gate's held-out images and their content key; refused when their looks are spent."""
    from ..backends.run import folder_samples, validation_samples
    from .looks import held_out_key, refuse_when_spent

    samples = folder_samples(bundle, opts.data_dir) if opts.data_dir else validation_samples(bundle)
    held = HeldOut(samples, held_out_key(samples), opts.data_dir or "the validation split")
    refuse_when_spent(bundle, held.key, source=held.source, run_dir=run_dir)
    return held


@dataclass(frozen=True)
class HeldOut:
    samples: list
    key: str
    source: str


def _regate(bundle: Bundle, opts: ExportOptions, echo: Callable, *, progress: bool,
            held_out: "HeldOut") -> list[dict]:
    """Gate the INT8 graph that passed on another CPU kind here, adding this kind's row; the
    graph and every other artifact stay as they are (quantizing anew would void that row)."""
    from ..core.host import int8_class
    from ..core.int8_trust import gated_classes
    from . import cpu_gate
    from .int8 import calibration_images, int8_speed

    entry = bundle.entry("model.int8.onnx")
    echo(f"model.int8.onnx passed its gate on {', '.join(gated_classes(entry))}; this CPU is "
         f"{int8_class()}: gating the same graph here (one held-out look; --int8-requantize "
         "quantizes anew). Other artifacts are left as they are.")
    gate = Gate(bundle, opts, echo, progress=progress, held_out=held_out)
    row = gate.check("model.int8.onnx", "onnxruntime-int8", "int8")
    if row["passed"]:
        path = bundle.path("model.int8.onnx")
        cpu_gate.record_speed(bundle, int8_speed(bundle, path, path, echo=echo,
                                                 session_config=entry.session_config))
        cpu_gate.write(bundle, calibration_images(bundle, cpu_gate.PROBES), keep=True)
        _say_served(bundle, echo)
    bundle.save()
    parity = [r for r in (bundle.manifest.export.parity if bundle.manifest.export else ())
              if r.get("artifact") != "model.int8.onnx"]
    bundle.update(export=ExportRecord(parity=(*parity, row), data=opts.data_dir or "validation split"))
    bundle.save()
    if not row["passed"]:
        still = ", ".join(gated_classes(bundle.entry("model.int8.onnx")))
        raise GateFailed(f"model.int8.onnx failed its gate on this CPU kind ({int8_class()}); it "
                         f"stays trusted on {still} only.",
                         "Serve FP32 on this kind (rtk triton picks it), or quantize anew here: "
                         "--int8-requantize.", exit_code=3)
    return [row]


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

    def __init__(self, bundle: Bundle, opts: ExportOptions, echo: Callable, *, progress: bool,
                 held_out: HeldOut | None = None):
        from ..backends import open_backend
        from ..backends.run import folder_samples, run_backend, validation_samples

        self.bundle, self.opts, self.progress, self.echo = bundle, opts, progress, echo
        if held_out is not None:
            samples, self.key, self.source = held_out.samples, held_out.key, held_out.source
        else:
            samples = folder_samples(bundle, opts.data_dir) if opts.data_dir else \
                validation_samples(bundle)
            self.key, self.source = None, opts.data_dir or "the validation split"
        self.paths, self.labels = [p for p, _ in samples], np.array([y for _, y in samples])
        echo(f"Checking artifacts against PyTorch on {len(self.paths)} held-out images...")
        with open_backend("torch", bundle, "cpu") as ref_backend:
            self.reference = run_backend(ref_backend, self.paths, bundle.preprocessing, batch_size=32,
                                         progress=progress)

    def check(self, artifact: str, backend: str, precision: str) -> dict:
        """Judge one artifact and record the verdict (trusted or not) in the manifest."""
        device = "cuda" if backend == "tensorrt" else self.opts.device
        if precision == "fp16" and backend.startswith("onnxruntime"):
            self._survivable(artifact)
        look = None
        if precision == "int8" and self.key is not None:  # counted before it is taken
            from .looks import spend

            look = spend(self.bundle, self.key, images=len(self.paths), source=self.source)
        row = judge(measure(self.bundle, backend, device, paths=self.paths, labels=self.labels,
                            reference=self.reference, progress=self.progress),
                    precision, self.opts.tolerances)
        return self.record(artifact, {**row, "look": look} if look else row)

    def _survivable(self, artifact: str) -> None:
        """Open the graph in a child first (core/native.py): a native crash there becomes a
        lower optimization level, recorded with the artifact, or an RtkError, never exit 139.
        Only the FP16 graph, where ONNX Runtime is known to crash (ViT-B/16): the child's
        session costs as much as the gate's own (4 s for the tests' ResNet-18 on this CPU),
        which on every graph made the test suite markedly slower."""
        from ..core.native import LEVEL_KEY, safe_level

        entry = self.bundle.entry(artifact)
        crop = self.bundle.preprocessing.crop
        level = safe_level(self.bundle.path(artifact), artifact=artifact, config=entry.session_config,
                           shape=(1, crop, crop, 3), echo=self.echo)
        if level is not None:
            self.bundle.update_artifact(artifact, session_config={**(entry.session_config or {}),
                                                                  LEVEL_KEY: level})
            self.bundle.save()

    def record(self, artifact: str, row: dict) -> dict:
        """Record a verdict (trusted or not) in the manifest; an INT8 one as this CPU kind's row."""
        row = {**row, "artifact": artifact}
        self.bundle.update_artifact(
            artifact, trusted=row["passed"], gate="passed" if row["passed"] else "failed",
            parity={k: v for k, v in row.items() if k != "artifact"})
        if row.get("precision") == "int8" and self.key is not None:
            from .cpu_gate import record_row

            record_row(self.bundle, row, key=self.key, look=row.get("look"))
        self.bundle.save()
        return row
