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


PHOTO_SIZE = (4032, 3024)  # a 12-megapixel phone camera frame


def write_photos(out: str | Path, per_class: int = 4, size: tuple[int, int] = PHOTO_SIZE,
                 *, quality: int = 92, seed: int = 0) -> Path:
    """Camera-sized JPEGs in two class folders, made from scikit-learn's two real photographs
    (china, flower): each a seeded random crop and flip scaled to `size`, with sensor-like
    grain so that the file sizes are a phone's (3-5 MB at 12 MP), not a smooth upscale's."""
    datasets = require("sklearn.datasets", "sample")
    import numpy as np
    from PIL import Image

    sample = datasets.load_sample_images()
    rng = np.random.default_rng(seed)
    out = Path(out)
    for name, photo in zip(("china", "flower"), sample.images):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        base = Image.fromarray(photo)
        for i in range(per_class):
            w, h = base.size
            cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            img = base.crop((left, top, left + cw, top + ch)).resize(size, Image.BICUBIC)
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            grain = rng.normal(0, 6, (size[1], size[0], 1)).astype(np.float32)
            pixels = np.clip(np.asarray(img, np.float32) + grain, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{i:03d}.jpg", quality=quality)
    return out
