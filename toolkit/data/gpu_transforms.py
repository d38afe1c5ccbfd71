"""Batched tensor transforms for the GPU input path; they run on any device.

`EvalBatch` is the evaluation transform of toolkit.data.images, bit for bit on the same pixels:
Pillow's fixed-point bilinear resize done as two float64 matrix products (exact: every product
and sum is an integer below 2**53), then IEEE division and subtraction by device tensors. The
tests run both on CPU tensors; on CUDA the bitwise claim is UNVERIFIED here (no GPU; the `gpu`
test in tests/test_gpu_input.py asserts it). Pixels nvJPEG decodes differ from libjpeg's (see
imageio.gpu_decodable). `TrainBatch` applies one of the card's augmentation levels
(toolkit.data.transforms.AUGMENT) to a whole batch at once.
"""

from __future__ import annotations

import functools
import math

from .gpu_augment import augment_policy, random_erasing
from ..core.errors import RtkError
from ..core.manifest import Preprocess
from .transforms import AUGMENT
from .gpu_augment import gray

_BITS = 22  # Pillow's PRECISION_BITS for 8-bit images (Resample.c: 32 - 8 - 2)


def eval_geometry(h: int, w: int, resize: int, crop: int) -> tuple[int, int, int, int]:
    """(new_h, new_w, top, left) exactly as toolkit.data.images.resize_crop computes them."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return new_h, new_w, int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0))


def _pil_weights(in_size: int, out_size: int):
    """Pillow's integer bilinear coefficients (precompute_coeffs, normalize_coeffs_8bpc) as a
    dense (out_size, in_size) float64 array; the same double arithmetic in the same order."""
    import numpy as np

    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support, ss = filterscale, 1.0 / filterscale  # the bilinear filter's support is 1.0
    center = (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C casts truncate
    xmax = np.minimum((center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(int(math.ceil(support)) * 2 + 1)
    dist = np.abs(((xmin[:, None] + taps).astype(np.float64) - center[:, None] + 0.5) * ss)
    k = np.where((taps < xmax[:, None]) & (dist < 1.0), 1.0 - dist, 0.0)
    ww = np.add.accumulate(k, axis=1)[:, -1:]  # sequential, like the C loop
    k = np.floor(0.5 + np.divide(k, ww, out=k.copy(), where=ww != 0) * (1 << _BITS))
    dense = np.zeros((out_size, in_size + k.shape[1]))
    rows = np.arange(out_size)[:, None]
    dense[rows, xmin[:, None] + taps] = k
    return dense[:, :in_size]


@functools.lru_cache(maxsize=32)
def _weights(in_size: int, out_size: int, device: str):
    import torch

    return torch.from_numpy(_pil_weights(in_size, out_size)).to(device)


def _fixed_point(acc):
    """Pillow's rounding: add half, shift right by PRECISION_BITS, clip to 0..255."""
    return (acc + (1 << (_BITS - 1))).mul_(2.0 ** -_BITS).floor_().clamp_(0, 255)


def _horizontal_first(h: int, w: int, new_h: int, *, new_w: int) -> bool:
    """Pillow's pass order; from Pillow 13 the vertical pass runs first when the height
    shrinks more than twice as much as the width (the rounding between passes differs)."""
    from PIL import __version__

    if int(__version__.split(".")[0]) < 13:
        return True
    return not (h - new_h > 0 and h - new_h > (w - new_w) * 2)


def resize_crop_exact(img, new_h: int, new_w: int, top: int, left: int, crop: int):
    """CHW uint8 -> CHW uint8: Pillow's bilinear resize then a crop, computing only the crop."""
    import torch

    h, w = img.shape[-2:]
    x, dev = img.to(torch.float64), str(img.device)

    def horizontal(x):
        if new_w == w:
            return x[..., left:left + crop]
        return _fixed_point(x @ _weights(w, new_w, dev)[left:left + crop].T)

    def vertical(x):
        if new_h == h:
            return x[..., top:top + crop, :]
        return _fixed_point(_weights(h, new_h, dev)[top:top + crop] @ x)

    if _horizontal_first(h, w, new_h, new_w=new_w):
        return vertical(horizontal(x)).to(torch.uint8)
    return horizontal(vertical(x)).to(torch.uint8)


class Normalize:
    """uint8 (or 0..255 float) NCHW -> normalised float32 channels_last, in the order
    toolkit.data.images.eval_array uses (/255, -mean, /std): bitwise equal on CPU (tested).

    Every divisor is a tensor on x's device: CUDA computes x / (CPU scalar) as x * (1/scalar)
    (ATen BinaryDivTrueKernel.cu), one ulp off NumPy on 126 of the 256 byte values; a device
    tensor gets a true division. UNVERIFIED on a GPU here: the `gpu` test checks it."""

    def __init__(self, pre: Preprocess):
        self.mean, self.std, self._consts = list(pre.mean), list(pre.std), {}

    def __call__(self, x):
        import torch

        key = str(x.device)
        if key not in self._consts:  # built once per device, not copied to it every batch
            self._consts[key] = [torch.tensor(v, dtype=torch.float32, device=x.device)
                                 .view(-1, 1, 1) for v in ([255.0], self.mean, self.std)]
        full, mean, std = self._consts[key]
        x = x.contiguous(memory_format=torch.channels_last).to(torch.float32, copy=True)
        return x.div_(full).sub_(mean).div_(std)


class EvalBatch:
    """The evaluation transform on a list of CHW uint8 RGB images, equal to imageio.eval_array."""

    def __init__(self, pre: Preprocess):
        if pre.resize < pre.crop:
            raise RtkError(f"Preprocessing resizes to {pre.resize} px, below its "
                           f"{pre.crop} px crop; the GPU input path needs resize >= crop.",
                           "Train with --decode cpu.")
        self.pre, self.normalize = pre, Normalize(pre)

    def crop_uint8(self, images):
        """The resized, center-cropped batch as NCHW uint8 (what served artifacts take)."""
        import torch

        out = []
        for img in images:
            geometry = eval_geometry(*img.shape[-2:], self.pre.resize, self.pre.crop)
            out.append(resize_crop_exact(img, *geometry, self.pre.crop))
        return torch.stack(out)

    def __call__(self, images, generator=None):
        return self.normalize(self.crop_uint8(images))


def crop_boxes(sizes: list[tuple[int, int]], scale: tuple[float, float], generator,
               *, ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> list[tuple[int, int, int, int]]:
    """RandomResizedCrop's (top, left, height, width) per image: torchvision's algorithm (ten
    tries, then a central crop), with every try drawn at once from `generator`."""
    import torch

    hw = torch.tensor(sizes, dtype=torch.float64)
    n = len(sizes)
    target = (hw[:, :1] * hw[:, 1:]) * torch.empty(n, 10, dtype=torch.float64).uniform_(
        *scale, generator=generator)
    aspect = torch.empty(n, 10, dtype=torch.float64).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator).exp_()
    cw, ch = (target * aspect).sqrt_().round_(), (target / aspect).sqrt_().round_()
    fits = (cw > 0) & (cw <= hw[:, 1:]) & (ch > 0) & (ch <= hw[:, :1])
    first = fits.to(torch.uint8).argmax(1)
    where = torch.rand(n, 2, dtype=torch.float64, generator=generator)
    boxes = []
    for i, (h, w) in enumerate(sizes):
        if fits[i].any():
            bh, bw = int(ch[i, first[i]]), int(cw[i, first[i]])
            boxes.append((int(where[i, 0] * (h - bh + 1)), int(where[i, 1] * (w - bw + 1)), bh, bw))
            continue
        bh, bw = h, w  # no try fitted: the largest central crop within the ratio range
        if w / h < ratio[0]:
            bh = int(round(w / ratio[0]))
        elif w / h > ratio[1]:
            bw = int(round(h * ratio[1]))
        boxes.append(((h - bh) // 2, (w - bw) // 2, bh, bw))
    return boxes


def rotate_nearest(x, degrees):
    """Rotate each image of a float NCHW batch by its own angle (counter-clockwise, about the
    centre, nearest neighbour, zero fill): torchvision's rotate, one grid_sample per batch."""
    import torch
    from torch.nn import functional as nnf

    rad = torch.deg2rad(degrees.to(x.dtype))
    cos, sin, zero = rad.cos(), rad.sin(), torch.zeros_like(rad)
    h, w = x.shape[-2:]
    theta = torch.stack([torch.stack([cos, -sin * h / w, zero], 1),
                         torch.stack([sin * w / h, cos, zero], 1)], 1)
    grid = nnf.affine_grid(theta, list(x.shape), align_corners=False)
    return nnf.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


# RGB -> YIQ (NTSC): a hue shift is a rotation of the IQ plane, one 3x3 matrix per image
_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def hue_matrices(hue):
    """(N, 3, 3) RGB matrices shifting each image's hue by `hue` turns (on the host).

    torchvision shifts hue in HSV, which has no batched per-image form; a rotation in YIQ
    is linear (a colour twist, as GPU pipelines do it), so the whole batch is one einsum."""
    import torch

    yiq = torch.tensor(_YIQ, dtype=torch.float32)
    angle = hue.to(torch.float32) * (2 * math.pi)
    rot = torch.zeros(len(hue), 3, 3)
    rot[:, 0, 0], rot[:, 1, 1], rot[:, 2, 2] = 1, angle.cos(), angle.cos()
    rot[:, 1, 2], rot[:, 2, 1] = -angle.sin(), angle.sin()
    return torch.linalg.inv(yiq) @ rot @ yiq


def color_jitter(x, factors, order, *, hue=None):
    """ColorJitter on a 0..255 float NCHW batch: `factors` (N, 3) are each image's brightness,
    contrast and saturation, `hue` its (N, 3, 3) hue matrix or None; `order` is the batch's
    order of the four adjustments (torchvision draws one per image)."""
    import torch

    def blend(a, b, f):
        f = f.view(-1, 1, 1, 1)
        return (a * f + b * (1 - f)).clamp_(0, 255)

    for op in order:
        if op == 0:
            x = blend(x, torch.zeros_like(x), factors[:, 0])
        elif op == 1:
            x = blend(x, gray(x).mean((2, 3), keepdim=True), factors[:, 1])
        elif op == 2:
            x = blend(x, gray(x), factors[:, 2])
        elif hue is not None:
            x = torch.einsum("nij,njhw->nihw", hue, x).clamp_(0, 255)
    return x


class TrainBatch:
    """One of the card's augmentation levels on a list of CHW uint8 images, as one batch: crop
    and flip in uint8, rotation and colour jitter in float, normalisation last."""

    def __init__(self, pre: Preprocess, level: str):
        if level not in AUGMENT:
            raise RtkError(f"Unknown augmentation level {level!r}.",
                           f"Use one of: {', '.join(AUGMENT)}.")
        self.pre, self.spec = pre, AUGMENT[level]
        self.eval, self.normalize = EvalBatch(pre), Normalize(pre)

    def __call__(self, images, generator):
        """Augment with parameters drawn from `generator` (a CPU torch.Generator)."""
        import torch
        from torchvision.transforms.v2 import functional as F

        if self.spec is None:  # "none": the eval resize and crop
            return self.eval(images)
        crop, spec, n = self.pre.crop, self.spec, len(images)
        boxes = crop_boxes([tuple(im.shape[-2:]) for im in images], spec["scale"], generator)
        host = self._params(n, generator)  # drawn on the host, one copy to the device
        x = torch.stack([F.resized_crop(im, *box, [crop, crop], antialias=True)
                         for im, box in zip(images, boxes)])
        params = _to_device(host, x.device)
        flip = params[:, 0].view(-1, 1, 1, 1) < 0.5
        x = torch.where(flip, x.flip(-1), x)
        if spec["degrees"]:
            x = rotate_nearest(x.float(), params[:, 1])
        if spec["jitter"]:
            order = torch.randperm(4, generator=generator).tolist()
            hue = _to_device(hue_matrices(host[:, 5]), x.device) if spec["jitter"][3] else None
            x = color_jitter(x.float(), params[:, 2:5], order, hue=hue)
        if spec.get("policy"):  # torchvision's policy, batched: see toolkit.data.gpu_augment
            x = augment_policy(spec["policy"])(x.float(), generator)
        x = self.normalize(x)
        if spec.get("erasing"):
            x = random_erasing(x, spec["erasing"], generator)
        return x

    def _params(self, n: int, generator):
        """(N, 6): flip draw, angle, brightness, contrast, saturation and hue factors."""
        import torch

        u = torch.rand(n, 6, generator=generator)
        degrees, jitter = self.spec["degrees"], self.spec["jitter"] or (0, 0, 0, 0)
        u[:, 1] = (u[:, 1] * 2 - 1) * degrees
        for j, amount in enumerate(jitter[:3]):  # factors in [max(0, 1 - a), 1 + a]
            low = max(0.0, 1 - amount)
            u[:, 2 + j] = low + u[:, 2 + j] * (1 + amount - low)
        u[:, 5] = (u[:, 5] * 2 - 1) * jitter[3]
        return u


def _to_device(t, device):
    """A small host tensor to `device` without stalling the stream (pinned, asynchronous)."""
    if t.device == device or str(device) == "cpu":
        return t
    return t.pin_memory().to(device, non_blocking=True)
