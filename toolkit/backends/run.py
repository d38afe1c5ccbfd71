"""Running a backend over a folder: the samples, uint8 batches, logits."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..core.bundle import Bundle
from ..core.errors import RtkError
from ..core.manifest import Preprocess
from ..data.images import load_eval


def validation_samples(bundle: Bundle) -> list[tuple[Path, int]]:
    """The held-out images recorded by `rtk finetune` (the split is reused, never redrawn)."""
    split = bundle.split()
    data = bundle.manifest.data
    root = Path(data.val_dir or data.train_dir)
    samples = [(root / rel, label) for rel, label in split["val"]]
    missing = [p for p, _ in samples if not p.is_file()]
    if missing:
        raise RtkError(f"{len(missing)} validation image(s) are gone, e.g. {missing[0]}.",
                       "Pass the data folder explicitly (rtk eval RUN_DIR DATA_DIR / --data DIR).")
    return samples


def folder_samples(bundle: Bundle, folder: str | Path) -> list[tuple[Path, int]]:
    from ..data.scan import scan_folder

    scan = scan_folder(folder, classes=bundle.classes, verify=False)  # decoded next: once
    if not scan.samples:
        raise RtkError(f"{folder} holds no readable images.", f"Run: rtk inspect {folder}")
    return scan.samples


def batches(paths: Sequence[Path], pre: Preprocess, batch_size: int, *,
            raw: bool = False) -> Iterator:
    """uint8 NHWC batches of the eval transform (or raw bytes), decoded by a small thread pool
    one batch ahead, so decoding the next batch overlaps the backend's work on this one."""
    recipe = pre.to_json()  # data/images.py is copied into Triton: it takes the plain dict
    def decode(path):
        try:
            return load_eval(path, recipe)
        except Exception as exc:  # PIL raises many types for a corrupt or truncated file
            raise RtkError(f"Could not read an image: {path}: {exc}.",
                           "Remove or replace the file; `rtk inspect DATA_DIR` lists every "
                           "unreadable image of a folder.") from None

    load = (lambda p: Path(p).read_bytes()) if raw else decode
    with ThreadPoolExecutor(max_workers=4) as pool:
        ahead = [pool.submit(load, p) for p in paths[:batch_size]]
        for i in range(0, len(paths), batch_size):
            current = ahead
            ahead = [pool.submit(load, p) for p in paths[i + batch_size:i + 2 * batch_size]]
            items = [f.result() for f in current]
            yield items if raw else np.stack(items)


def run_backend(backend, paths: Sequence[Path], pre: Preprocess, *, batch_size: int = 32,
                progress: bool = False) -> np.ndarray:
    """Logits of `backend` for every image in `paths`."""
    outs = []
    it = batches(paths, pre, batch_size, raw=backend.accepts_bytes)
    if progress:
        from rich.progress import track

        from ..ui.console import console

        it = track(it, total=-(-len(paths) // batch_size), description=f"{backend.name}",
                   transient=True, console=console())  # stderr: stdout holds the result
    for batch in it:
        outs.append(np.asarray(backend(batch), dtype=np.float32))
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)
