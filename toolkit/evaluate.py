"""Accuracy of any backend on a folder or the bundle's validation split; top-k prediction."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .bundle import Bundle
from .errors import RtkError
from .imageio import eval_uint8, open_rgb
from .metrics import classification


def validation_samples(bundle: Bundle) -> list[tuple[Path, int]]:
    """The held-out images recorded by `rtk finetune` (the split is reused, never redrawn)."""
    split = bundle.split()
    data = bundle.manifest["data"]
    root = Path(data["val_dir"] or data["train_dir"])
    samples = [(root / rel, label) for rel, label in split["val"]]
    missing = [p for p, _ in samples if not p.is_file()]
    if missing:
        raise RtkError(f"{len(missing)} validation image(s) are gone, e.g. {missing[0]}.",
                       "Pass the data folder explicitly (rtk eval RUN_DIR DATA_DIR / --data DIR).")
    return samples


def folder_samples(bundle: Bundle, folder: str | Path) -> list[tuple[Path, int]]:
    from .scan import scan_folder

    scan = scan_folder(folder, classes=bundle.classes)
    if not scan.samples:
        raise RtkError(f"{folder} holds no readable images.", f"Run: rtk inspect {folder}")
    return scan.samples


def batches(paths: Sequence[Path], pre: dict, batch_size: int, raw: bool = False) -> Iterator:
    """uint8 NHWC batches of the eval transform (or raw bytes), decoded by a small thread pool."""
    load = (lambda p: Path(p).read_bytes()) if raw else (lambda p: eval_uint8(open_rgb(p), pre))
    with ThreadPoolExecutor(max_workers=4) as pool:
        for i in range(0, len(paths), batch_size):
            items = list(pool.map(load, paths[i:i + batch_size]))
            yield items if raw else np.stack(items)


def run_backend(backend, paths: Sequence[Path], pre: dict, batch_size: int = 32,
                progress: bool = False) -> np.ndarray:
    """Logits of `backend` for every image in `paths`."""
    outs = []
    it = batches(paths, pre, batch_size, raw=backend.accepts_bytes)
    if progress:
        from rich.progress import track

        from .ui import console

        it = track(it, total=-(-len(paths) // batch_size), description=f"{backend.name}",
                   transient=True, console=console())  # stderr: stdout holds the result
    for batch in it:
        outs.append(np.asarray(backend(batch), dtype=np.float32))
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def evaluate(bundle: Bundle, data_dir: str | Path | None, backend_name: str = "torch",
             device: str = "cpu", batch_size: int = 32, progress: bool = False,
             **backend_options: Any) -> dict[str, Any]:
    """Metrics of one backend on `data_dir` (or the bundle's validation split)."""
    from .backends import open_backend

    samples = folder_samples(bundle, data_dir) if data_dir else validation_samples(bundle)
    paths, labels = [p for p, _ in samples], np.array([y for _, y in samples])
    with open_backend(backend_name, bundle, device, **backend_options) as backend:
        logits = run_backend(backend, paths, bundle.preprocessing, batch_size, progress)
    result = classification(logits, labels, bundle.classes)
    return {"backend": backend_name, "device": device,
            "data": str(data_dir) if data_dir else "validation split", **result}


def predict(bundle: Bundle, images: Sequence[str | Path], backend_name: str = "torch",
            device: str = "cpu", topk: int = 5, **backend_options: Any) -> list[dict[str, Any]]:
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
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    results = []
    for path, p in zip(images, probs):
        order = np.argsort(-p)[:k]
        results.append({"image": str(path),
                        "top": [{"label": bundle.classes[i], "probability": float(p[i])}
                                for i in order]})
    return results
