"""Image decoding and the evaluation transform, in PIL and NumPy only.

This file is also copied into the Triton preprocessing model, so it must not import
torch or anything from rtk: the served transform is the very code used everywhere else.
It reproduces torchvision's Resize(short side, bilinear, antialias) + CenterCrop on PIL
images; `eval_uint8` is what every artifact takes (they normalise inside, see
toolkit/core/contract.py) and `eval_array` adds ToTensor + Normalize for training.

The decode rule: a JPEG is decoded at the largest DCT scale (1/2, 1/4, 1/8: libjpeg's scaled
IDCT, through PIL's `draft`) that keeps its short side at or above the size the next step
needs (`min_short`), so a 12-megapixel photo is never decoded at full size to feed a 232 px
resize. `load_eval` is the rule for the evaluation transform; training asks for more pixels
(toolkit/data/loaders.py). Measured against full decoding: README, "Real photos".
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


def open_rgb(source, min_short: int | None = None) -> Image.Image:
    """Decode a path or encoded bytes into an RGB image (raises on unreadable data); with
    `min_short`, a JPEG at the smallest DCT scale whose short side is still >= min_short."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    with Image.open(source) as img:
        if img.width * img.height > MAX_PIXELS:
            raise ValueError(f"image of {img.width}x{img.height} exceeds {MAX_PIXELS} pixels")
        if min_short:
            scaled_draft(img, min_short)
        img.load()
        return to_rgb(img)


def scaled_draft(img: Image.Image, min_short: int) -> None:
    """Ask libjpeg for a DCT-scaled decode that keeps the short side >= min_short (no-op for
    other formats and for images that are not at least twice min_short)."""
    w, h = img.size
    if img.format != "JPEG" or min(w, h) < 2 * min_short:
        return
    short = min(w, h)
    # PIL picks the largest scale in 1/2..1/8 with w/scale >= asked width and h/scale >= asked
    # height (it rounds the decoded size up), so asking min_short for the short side is exact.
    img.draft(None, (-(-w * min_short // short), -(-h * min_short // short)))  # ceil division


def load_eval(source, pre: dict) -> np.ndarray:
    """Decode (at the scale the resize needs) and apply the evaluation transform: the served
    uint8 HxWx3 crop. The one path of eval, predict, the export gate, bench and Triton."""
    return eval_uint8(open_rgb(source, min_short=pre["resize"]), pre)


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


# Which JPEGs nvJPEG gets: one rule for training (toolkit/data/gpu_input.py) and for Triton's
# preprocessing model (toolkit/triton/models/gpu_decode.py), which has this file copied beside it.
_SOF_PLAIN = {0xC0, 0xC1, 0xC2}  # baseline, extended and progressive Huffman JPEG
_XMP = b"http://ns.adobe.com/xap/1.0/"


def _orientation(exif: bytes) -> int:
    """The EXIF IFD0 orientation (1 when absent, 0 when the block cannot be read)."""
    tiff = exif[6:]
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 0
    ifd = int.from_bytes(tiff[4:8], order)
    count = int.from_bytes(tiff[ifd:ifd + 2], order)
    if ifd + 2 + 12 * count > len(tiff):
        return 0
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        if int.from_bytes(tiff[entry:entry + 2], order) == 0x0112:
            return int.from_bytes(tiff[entry + 8:entry + 10], order)
    return 1


def _segment_ok(marker: int, seg: bytes) -> bool:
    """False for a header segment that makes the JPEG one for PIL."""
    if marker == 0xE1 and seg.startswith(b"Exif\x00\x00"):
        return _orientation(seg) == 1
    if marker == 0xE1 and seg.startswith(_XMP):
        return b"Orientation" not in seg  # Pillow reads tiff:Orientation from XMP too
    if marker == 0xEE and seg.startswith(b"Adobe") and len(seg) > 11:
        return seg[11] != 0  # transform 0: RGB samples, not YCbCr
    if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
        if marker not in _SOF_PLAIN or len(seg) < 15 or seg[0] != 8 or seg[5] != 3:
            return False
        pixels = int.from_bytes(seg[1:3], "big") * int.from_bytes(seg[3:5], "big")
        return bytes(seg[6:15:3]) != b"RGB" and 0 < pixels <= MAX_PIXELS
    return True


def gpu_decodable(data: bytes) -> bool:
    """True for an 8-bit 3-component YCbCr JPEG with no orientation (header markers up to the
    first scan): nothing nvJPEG would treat unlike PIL. The pixels still differ from libjpeg's
    by IDCT and upsampling rounding (torchvision's tests allow a mean difference of 2 levels)."""
    if data[:2] != b"\xff\xd8":
        return False
    i, frame = 2, False
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF or marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length
            i += 1 if marker == 0xFF else 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan (the header is over) or end of image
            return frame and marker == 0xDA
        length = int.from_bytes(data[i + 2:i + 4], "big")
        seg = data[i + 4:i + 2 + length]
        if not _segment_ok(marker, seg):
            return False
        frame = frame or 0xC0 <= marker <= 0xC2
        i += 2 + length
    return False
