"""The embedded sample data set: scikit-learn's real handwritten digits as PNG folders."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import RtkError, require


def write_digits(out: str | Path, size: int = 32, per_class: int | None = None) -> Path:
    """Write the 1,797 8x8 UCI digits as `size`-pixel grayscale PNGs in class folders."""
    if Path(out).exists() and not Path(out).is_dir():
        raise RtkError(f"{out} is a file, not a folder.", "Pass a folder for the class subfolders.")
    datasets = require("sklearn.datasets", "sample")
    import numpy as np
    from PIL import Image

    digits = datasets.load_digits()
    out = Path(out)
    counts: dict[int, int] = {}
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        label = int(label)
        if per_class is not None and counts.get(label, 0) >= per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        folder = out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (np.asarray(img) * (255.0 / 16.0)).astype(np.uint8)
        Image.fromarray(pixels, "L").resize((size, size), Image.BILINEAR).save(
            folder / f"digit_{i:04d}.png")
    return out
