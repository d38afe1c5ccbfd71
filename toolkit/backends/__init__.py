"""Backend registry: name -> implementing class, imported only when asked for."""

from __future__ import annotations

import importlib

from ..core.errors import RtkError
from .base import Backend

# Adding a runtime = one module + one line here.
REGISTRY: dict[str, str] = {
    "torch": "torch_backend:TorchEager",
    "torch-amp": "torch_backend:TorchAmp",
    "torch-compile": "torch_backend:TorchCompile",
    "torch-half": "torch_backend:TorchHalf",
    "onnxruntime": "ort:OrtFP32",
    "onnxruntime-fp16": "ort:OrtFP16",
    "onnxruntime-int8": "ort:OrtInt8",
    "tensorrt": "tensorrt:TensorRTEngine",
    "triton": "triton:TritonClient",
}


def backend_class(name: str) -> type[Backend]:
    if name not in REGISTRY:
        raise RtkError(f"Unknown backend {name!r}.", f"Choose one of: {', '.join(REGISTRY)}.")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def open_backend(name: str, bundle, device: str = "cpu", **options) -> Backend:
    """Open a backend, or raise the reason it cannot run here."""
    cls = backend_class(name)
    reason = cls.availability(bundle, device)
    if reason:
        raise RtkError(f"Backend {name} cannot run here: {reason.split(': ', 1)[0]}.",
                       reason.split(": ", 1)[-1])
    return cls(bundle, device=device, **options)


def availability(bundle, device: str = "cpu") -> dict[str, str]:
    """'ready' or the reason and fix, for every registered backend."""
    return {name: backend_class(name).availability(bundle, device) or "ready"
            for name in REGISTRY}


__all__ = ["Backend", "REGISTRY", "availability", "backend_class", "open_backend"]
