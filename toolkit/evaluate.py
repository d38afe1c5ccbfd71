"""Accuracy of any backend on a folder or the bundle's validation split; top-k prediction."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .core.bundle import Bundle
from .core.errors import RtkError
from .core.metrics import classification, softmax
from .backends.run import folder_samples, run_backend, validation_samples


TTA = ("none", "flip")


class FlipTTA:
    """Test-time augmentation: the mean of the logits of each image and of its horizontal
    flip, from two calls of the backend. An evaluation option only: no exported graph or
    Triton model contains it, so serving gives the plain (un-flipped) logits."""

    def __init__(self, backend):
        if backend.accepts_bytes:
            raise RtkError(f"--tta flip needs decoded images; the {backend.name} backend is "
                           "sent encoded bytes.", "Add --tensors (Triton), or drop --tta.")
        self.backend, self.name, self.accepts_bytes = backend, f"{backend.name}+flip", False

    def __call__(self, x: np.ndarray) -> np.ndarray:
        flipped = np.ascontiguousarray(np.asarray(x)[:, :, ::-1])  # NHWC: W is axis 2
        return (np.asarray(self.backend(x), np.float32)
                + np.asarray(self.backend(flipped), np.float32)) / 2


def evaluate(bundle: Bundle, data_dir: str | Path | None, backend_name: str = "torch",
             *, device: str = "cpu", batch_size: int = 32, progress: bool = False,
             tta: str = "none", **backend_options: Any) -> dict[str, Any]:
    """Metrics of one backend on `data_dir` (or the bundle's validation split); `tta` "flip"
    averages each image's logits with its horizontal flip's (FlipTTA)."""
    from .backends import open_backend

    if tta not in TTA:
        raise RtkError(f"Unknown --tta {tta!r}.", f"Use one of: {', '.join(TTA)}.")
    samples = folder_samples(bundle, data_dir) if data_dir else validation_samples(bundle)
    paths, labels = [p for p, _ in samples], np.array([y for _, y in samples])
    with open_backend(backend_name, bundle, device, **backend_options) as backend:
        model = FlipTTA(backend) if tta == "flip" else backend
        start = time.perf_counter()  # decoding and inference, not opening the backend
        logits = run_backend(model, paths, bundle.preprocessing, batch_size=batch_size,
                             progress=progress)
        seconds = time.perf_counter() - start
    result = classification(logits, labels, bundle.classes)
    return {"backend": backend_name, "device": device, "tta": tta,
            "data": str(data_dir) if data_dir else "validation split", **result,
            "seconds": seconds, "images_per_second": len(paths) / max(1e-9, seconds)}


def predict(bundle: Bundle, images: Sequence[str | Path], backend_name: str = "torch",
            *, device: str = "cpu", topk: int = 5, **backend_options: Any) -> list[dict[str, Any]]:
    """Top-k labels with probabilities for each image."""
    from .backends import open_backend

    for p in images:
        if not Path(p).is_file():
            raise RtkError(f"No such image: {p}.", "Pass paths to image files.")
    k = max(1, min(topk, len(bundle.classes)))
    with open_backend(backend_name, bundle, device, **backend_options) as backend:
        try:
            logits = run_backend(backend, [Path(p) for p in images], bundle.preprocessing)
        except (OSError, ValueError) as exc:
            raise RtkError(f"Could not read an image: {exc}.",
                           "Check the file is a valid image.") from exc
    probs = softmax(logits)
    results = []
    for path, p in zip(images, probs):
        order = np.argsort(-p)[:k]
        results.append({"image": str(path),
                        "top": [{"label": bundle.classes[i], "probability": float(p[i])}
                                for i in order]})
    return results
