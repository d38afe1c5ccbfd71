"""ONNX Runtime backends for the FP32, FP16 and INT8 graphs of a bundle."""

from __future__ import annotations

import os

import numpy as np

from ..core.errors import require
from ..core.host import usable_cores
from .base import Backend


def session_options(threads: int | None = None, config: dict | None = None):
    """Tuned session: all graph optimizations, intra-op threads = usable cores, and the
    session config entries a graph was gated with (an INT8 graph's record)."""
    ort = require("onnxruntime", "onnx")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or usable_cores()
    opts.inter_op_num_threads = 1
    from ..core.native import LEVEL_KEY, ORT_LEVELS

    for key, value in (config or {}).items():
        if key == LEVEL_KEY:  # a level the export found this graph needs (core/native.py)
            opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_LEVELS[value])
        else:
            opts.add_session_config_entry(key, str(value))
    return opts


def providers(device: str, fp16: bool = False) -> list:
    """CUDA (and the TensorRT EP) when onnxruntime-gpu offers them; CPU otherwise."""
    ort = require("onnxruntime", "onnx")
    available = ort.get_available_providers()
    chosen: list = []
    if device == "cuda":
        if "TensorrtExecutionProvider" in available and os.environ.get("RTK_ORT_TRT", "0") == "1":
            chosen.append(("TensorrtExecutionProvider", {"trt_fp16_enable": fp16}))
        if "CUDAExecutionProvider" in available:
            chosen.append("CUDAExecutionProvider")
    return chosen + ["CPUExecutionProvider"]


class OrtFP32(Backend):
    """ONNX Runtime on model.onnx."""

    name = "onnxruntime"
    artifact = "model.onnx"
    devices = ("cpu", "cuda")

    @classmethod
    def availability(cls, bundle, device):
        try:
            ort = require("onnxruntime", "onnx")
        except Exception as exc:
            return f"onnxruntime is not installed: {exc.hint}"
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            return "onnxruntime has no CUDA provider here: pip install 'rtk[gpu]' on a GPU host"
        if bundle.manifest.artifact(cls.artifact) is None:
            from ..core.bundle import make_hint

            return f"no {cls.artifact} in the run: {make_hint(cls.artifact, bundle.root)}"
        return super().availability(bundle, device)

    def __init__(self, bundle, device="cpu", trusted_only: bool = True, *, threads: int | None = None,
                 **options):
        super().__init__(bundle, device)
        ort = require("onnxruntime", "onnx")
        path = bundle.artifact(self.artifact, trusted=trusted_only)
        config = bundle.entry(self.artifact).session_config  # what the gate ran it with
        self.session = ort.InferenceSession(str(path), sess_options=session_options(threads, config),
                                            providers=providers(device, "fp16" in self.artifact))
        self.input = self.session.get_inputs()[0].name
        if trusted_only:
            self.check(bundle)

    def check(self, bundle) -> None:
        """Before serving: nothing to replay for a float graph."""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: self.images(x)})[0]

    def close(self) -> None:
        self.session = None


class OrtFP16(OrtFP32):
    """ONNX Runtime on the FP16 graph (uint8 images in, FP32 logits out)."""

    name = "onnxruntime-fp16"
    artifact = "model.fp16.onnx"


class OrtInt8(OrtFP32):
    """ONNX Runtime on the Q/DQ INT8 graph (VNNI/AMX kernels on CPUs that have them)."""

    name = "onnxruntime-int8"
    artifact = "model.int8.onnx"

    def check(self, bundle) -> None:
        """Replay the fingerprint: INT8 kernels that compute something else here are refused."""
        from ..core.errors import RtkError
        from ..core.int8_trust import regate_hint, replay_reason

        reason = replay_reason(bundle, self.session, self.input)
        if reason:
            raise RtkError(f"model.int8.onnx is not served on this CPU: {reason}.",
                           regate_hint(bundle.root, bundle.entry(self.artifact)))
