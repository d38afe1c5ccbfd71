"""Image decoding and the evaluation transform, in PIL and NumPy only.

This file is also copied into the Triton preprocessing model, so it must not import
torch or anything from rtk: the served transform is the very code used everywhere else.
It reproduces torchvision's Resize(short side, bilinear, antialias) + CenterCrop on PIL
images; `eval_uint8` is what every artifact takes (they normalise inside, see
toolkit/contract.py) and `eval_array` adds ToTensor + Normalize for training.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_PIXELS = 64_000_000  # refuse decompression bombs well before PIL's own limit


def to_rgb(img: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert any mode (16-bit, palette, CMYK, RGBA...) to RGB."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr * 255.0 / peak, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), "L")
    elif img.mode in ("P", "PA", "LA", "RGBA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def open_rgb(source) -> Image.Image:
    """Decode a path or encoded bytes into an RGB image (raises on unreadable data)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    with Image.open(source) as img:
        if img.width * img.height > MAX_PIXELS:
            raise ValueError(f"image of {img.width}x{img.height} exceeds {MAX_PIXELS} pixels")
        img.load()
        return to_rgb(img)


def resize_crop(img: Image.Image, resize: int, crop: int) -> Image.Image:
    """Resize the short side to `resize` (bilinear, antialiased) and center-crop `crop`."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BILINEAR)
    top = int(round((new_h - crop) / 2.0))
    left = int(round((new_w - crop) / 2.0))
    return img.crop((left, top, left + crop, top + crop))


def eval_uint8(img: Image.Image, pre: dict) -> np.ndarray:
    """The served input: an RGB image resized and center-cropped, as an HxWx3 uint8 array."""
    return np.ascontiguousarray(np.asarray(resize_crop(img, pre["resize"], pre["crop"]),
                                           dtype=np.uint8))


def eval_array(img: Image.Image, pre: dict) -> np.ndarray:
    """The evaluation transform for training: `eval_uint8` normalized to a float32 CHW array."""
    arr = eval_uint8(img, pre).astype(np.float32) / 255.0
    arr = (arr - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
