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


def bench_paths(bundle: Bundle, images: str | None, n: int) -> list:
    """Up to `n` images to measure with: the user's folder (`rtk bench --images`, any layout,
    searched recursively, in name order), else the run's held-out images."""
    if images is None:
        return sample_paths(bundle, n)
    from pathlib import Path

    from ..core.errors import RtkError
    from ..data.images import IMAGE_EXTENSIONS

    root = Path(images)
    if not root.is_dir():
        raise RtkError(f"--images {images} is not a folder.", "Pass a folder of image files.")
    found = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not found:
        raise RtkError(f"{images} holds no image files ({', '.join(IMAGE_EXTENSIONS)}).",
                       f"Run: rtk inspect {images}")
    return found[:n]
