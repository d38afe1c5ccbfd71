"""Shared by the local and the Triton bench: parity floors, agreement, result rows."""

from __future__ import annotations

import numpy as np

from ..core.bundle import Bundle


PARITY_IMAGES = 64


def parity_floor(backend: str, precision: str | None = None) -> float:
    """Confident top-1 agreement with PyTorch below which a backend is flagged and not timed.

    The export gate's agreement floors: INT8 0.95, FP16 0.99; bf16 autocast and bf16 models,
    coarser than FP16, are held to the INT8 floor; FP32 runtimes to 0.99 (a handful of images).
    A served model is held to the floor of the precision of the artifact it serves.
    """
    from ..export.gate import Tolerances

    tol = Tolerances()
    if backend in ("onnxruntime-int8", "torch-amp", "torch-half") or precision == "int8":
        return tol.int8_agreement
    return tol.fp16_agreement


def agreement(reference: np.ndarray, logits: np.ndarray) -> tuple[float, float]:
    """(raw, confident) top-1 agreement: flips where the reference was torn do not count."""
    from ..core.metrics import parity

    p = parity(reference, logits, reference.argmax(1))
    return p["agreement"], p["confident_agreement"]


def row(backend: str, device: str, batch_size: int | None, *, status: str, **values) -> dict:
    base = {"backend": backend, "device": device, "batch_size": batch_size, "throughput": None,
            "p50_ms": None, "p90_ms": None, "p99_ms": None, "status": status}
    return {**base, **values}


def sample_paths(bundle: Bundle, n: int) -> list:
    """Up to `n` held-out images, taken round-robin over the classes (the split is class-ordered)."""
    from ..backends.run import validation_samples
    from ..data.loaders import round_robin

    return [p for p, _ in round_robin(validation_samples(bundle))][:n]
