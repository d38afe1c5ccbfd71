"""torchvision's TrivialAugmentWide, RandAugment and RandomErasing for whole batches (the GPU
input path).

The CPU path runs torchvision's own transforms per image (toolkit.data.transforms). Here each
image of a batch gets its own draw, as there, but every op runs once over the whole batch
with per-image parameters that leave the images which did not draw it unchanged.

Where this is not torchvision's policy exactly:
- ops run in float on 0..255 values and round once at the end, not to uint8 after each op;
- Equalize has no cheap batched form: an image that draws it gets AutoContrast instead
  (both stretch the histogram; Equalize also flattens it);
- Shear is a shear of the sampling grid about the centre (torchvision's shears about the
  centre too, but through its own affine matrix; the pixels differ slightly at the edges);
- Sharpness blends with torchvision's 3x3 smoothing kernel on every pixel, borders included
  (torchvision keeps the border pixels).
Everything else (the 14 ops, 31 magnitude bins, random signs, zero fill, bilinear
interpolation as torchvision's classification presets pass it) follows
torchvision.transforms.v2.TrivialAugmentWide, and RandAugment's two ops at magnitude 9 with
its narrower ranges follow torchvision.transforms.v2.RandAugment.
"""

from __future__ import annotations

import math

OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness",
       "color", "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
BINS = 31


RAND_MAGNITUDE, RAND_OPS = 9, 2  # torchvision's RandAugment defaults
INTERPOLATION = "bilinear"  # of the affine ops (torchvision's presets: BILINEAR)


def _magnitudes(policy: str = "trivialaugmentwide", size: tuple[int, int] = (32, 32)):
    """Each op's value at each of the 31 bins: TrivialAugmentWide's wide ranges, or
    RandAugment's (translation a share of the image's size)."""
    import torch

    lin = lambda a, b: torch.linspace(a, b, BINS)  # noqa: E731
    if policy == "randaugment":
        h, w = size
        return {"shear_x": lin(0, 0.3), "shear_y": lin(0, 0.3),
                "translate_x": lin(0, 150 / 331 * w), "translate_y": lin(0, 150 / 331 * h),
                "rotate": lin(0, 30), "brightness": lin(0, 0.9), "color": lin(0, 0.9),
                "contrast": lin(0, 0.9), "sharpness": lin(0, 0.9),
                "posterize": 8 - (torch.arange(BINS) / ((BINS - 1) / 4)).round(),
                "solarize": lin(255, 0)}
    return {"shear_x": lin(0, 0.99), "shear_y": lin(0, 0.99), "translate_x": lin(0, 32),
            "translate_y": lin(0, 32), "rotate": lin(0, 135), "brightness": lin(0, 0.99),
            "color": lin(0, 0.99), "contrast": lin(0, 0.99), "sharpness": lin(0, 0.99),
            "posterize": 8 - (torch.arange(BINS) / ((BINS - 1) / 6)).round(),
            "solarize": lin(255, 0)}


def _draw(n: int, generator, mags: dict | None = None, magnitude: int | None = None) -> dict:
    """Per-image parameters on the host: every op at its identity but the one drawn; the
    bin is drawn (TrivialAugmentWide) or fixed at `magnitude` (RandAugment)."""
    import torch

    op = torch.randint(0, len(OPS), (n,), generator=generator)
    value = torch.zeros(n)
    mags = mags or _magnitudes()
    bins = (torch.randint(0, BINS, (n,), generator=generator) if magnitude is None
            else torch.full((n,), magnitude))
    sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    params = {}
    for name, table in mags.items():
        chosen = op == OPS.index(name)
        signed = name not in ("posterize", "solarize")
        v = table[bins] * (sign if signed else 1.0)
        identity = {"posterize": 8.0, "solarize": 256.0}.get(name, 0.0)
        params[name] = torch.where(chosen, v, torch.full_like(value, identity))
    params["autocontrast"] = (op == OPS.index("autocontrast")) | (op == OPS.index("equalize"))
    return params


def _affine(x, p):
    """Rotation, shear and translation in one grid_sample (bilinear, zero fill)."""
    import torch
    from torch.nn import functional as nnf

    n, _, h, w = x.shape
    rad = torch.deg2rad(p["rotate"])
    cos, sin = rad.cos(), rad.sin()
    sx, sy = p["shear_x"], p["shear_y"]
    # output -> input coordinates in the normalised [-1, 1] grid, aspect-corrected
    a = torch.stack([torch.stack([cos, -sin * h / w], 1), torch.stack([sin * w / h, cos], 1)], 1)
    shear = torch.stack([torch.stack([torch.ones(n), -sx * h / w], 1),
                         torch.stack([-sy * w / h, torch.ones(n)], 1)], 1)
    t = torch.stack([-2 * p["translate_x"] / w, -2 * p["translate_y"] / h], 1).unsqueeze(2)
    theta = torch.cat([a @ shear, t], 2).to(x.device, x.dtype)
    grid = nnf.affine_grid(theta, list(x.shape), align_corners=False)
    return nnf.grid_sample(x, grid, mode=INTERPOLATION, padding_mode="zeros",
                           align_corners=False)


def trivial_augment(x, generator):
    """TrivialAugmentWide on a 0..255 float NCHW batch of whole numbers (uint8 values), one
    op per image (see the module's docstring)."""
    return _one_op(x, _draw(len(x), generator))


def rand_augment(x, generator, *, num_ops: int = RAND_OPS, magnitude: int = RAND_MAGNITUDE):
    """RandAugment on a 0..255 float NCHW batch: `num_ops` ops per image, each drawn from the
    14 at a fixed `magnitude` of 31, with a random sign."""
    mags = _magnitudes("randaugment", tuple(x.shape[-2:]))
    for _ in range(num_ops):
        x = _one_op(x, _draw(len(x), generator, mags, magnitude))
    return x


def augment_policy(name: str):
    """The batched form of a policy named in toolkit.data.transforms.AUGMENT."""
    return rand_augment if name == "randaugment" else trivial_augment


def _one_op(x, params: dict):
    """Each image of the batch through its own drawn op (the others at their identity)."""
    import torch
    from torch.nn import functional as nnf

    p = {k: v.to(x.device) for k, v in params.items()}
    v = lambda name: p[name].to(x.dtype).view(-1, 1, 1, 1)  # noqa: E731
    if bool((p["rotate"] != 0).any() or (p["shear_x"] != 0).any() or (p["shear_y"] != 0).any()
            or (p["translate_x"] != 0).any() or (p["translate_y"] != 0).any()):
        x = _affine(x, {k: t.cpu().float() for k, t in p.items() if k != "autocontrast"})
        x = x.round_()  # to whole numbers, as torchvision's uint8 output: posterize floors

    def blend(a, b, f):
        return (a * f + b * (1 - f)).clamp_(0, 255)

    x = blend(x, torch.zeros_like(x), 1 + v("brightness"))
    x = blend(x, gray(x), 1 + v("color"))
    x = blend(x, gray(x).mean((2, 3), keepdim=True), 1 + v("contrast"))
    kernel = torch.ones(3, 1, 3, 3, dtype=x.dtype, device=x.device)
    kernel[:, :, 1, 1] = 5
    smooth = nnf.conv2d(nnf.pad(x, (1, 1, 1, 1), mode="replicate"), kernel / 13, groups=3)
    x = blend(x, smooth, 1 + v("sharpness"))
    step = 2.0 ** (8 - v("posterize"))
    x = torch.floor(x / step) * step
    x = torch.where(x >= v("solarize"), 255 - x, x)
    low, high = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    stretched = ((x - low) * (255 / (high - low).clamp_min(1e-6))).where(high > low, x)
    x = torch.where(p["autocontrast"].view(-1, 1, 1, 1), stretched, x)
    return x.round_()


def random_erasing(x, p: float, generator, *, scale=(0.02, 0.33), ratio=(0.3, 3.3)):
    """RandomErasing (value 0, after normalisation, as on the CPU path) on an NCHW batch, in place:
    torchvision's ten tries per image, drawn at once; an image none of whose tries fits is
    left as it is, as there."""
    import torch

    n, _, h, w = x.shape
    erase = torch.rand(n, generator=generator) < p
    area = h * w * torch.empty(n, 10).uniform_(*scale, generator=generator)
    aspect = torch.empty(n, 10).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                         generator=generator).exp_()
    eh, ew = (area * aspect).sqrt().round().long(), (area / aspect).sqrt().round().long()
    fits = (eh < h) & (ew < w)
    first = fits.to(torch.uint8).argmax(1)
    pick = lambda t: t.gather(1, first[:, None]).squeeze(1)  # noqa: E731
    eh, ew = pick(eh), pick(ew)
    u = torch.rand(n, 2, generator=generator)
    top = (u[:, 0] * (h - eh + 1).clamp_min(1)).long()
    left = (u[:, 1] * (w - ew + 1).clamp_min(1)).long()
    on = erase & fits.any(1)
    rows, cols = torch.arange(h), torch.arange(w)
    mask = ((rows[None, :, None] >= top[:, None, None]) & (rows[None, :, None] < (top + eh)[:, None, None])
            & (cols[None, None, :] >= left[:, None, None])
            & (cols[None, None, :] < (left + ew)[:, None, None]) & on[:, None, None])
    return x.masked_fill_(mask[:, None].to(x.device), 0.0)  # in place: keeps channels_last


def gray(x):
    """torchvision's rgb_to_grayscale weights, one channel kept."""
    return x[:, 0:1] * 0.2989 + x[:, 1:2] * 0.587 + x[:, 2:3] * 0.114
