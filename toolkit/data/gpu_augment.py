"""torchvision's TrivialAugmentWide and RandomErasing for whole batches (the GPU input path).

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
Everything else (the 14 ops, 31 magnitude bins, random signs, zero fill, nearest
neighbour) follows torchvision.transforms.v2.TrivialAugmentWide.
"""

from __future__ import annotations

import math

OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness",
       "color", "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
BINS = 31


def _magnitudes():
    """Each op's value at each of the 31 bins (TrivialAugmentWide's wide ranges)."""
    import torch

    lin = lambda a, b: torch.linspace(a, b, BINS)  # noqa: E731
    return {"shear_x": lin(0, 0.99), "shear_y": lin(0, 0.99), "translate_x": lin(0, 32),
            "translate_y": lin(0, 32), "rotate": lin(0, 135), "brightness": lin(0, 0.99),
            "color": lin(0, 0.99), "contrast": lin(0, 0.99), "sharpness": lin(0, 0.99),
            "posterize": 8 - (torch.arange(BINS) / ((BINS - 1) / 6)).round(),
            "solarize": lin(255, 0)}


def _draw(n: int, generator) -> dict:
    """Per-image parameters on the host: every op at its identity but the one drawn."""
    import torch

    op = torch.randint(0, len(OPS), (n,), generator=generator)
    value = torch.zeros(n)
    mags = _magnitudes()
    bins = torch.randint(0, BINS, (n,), generator=generator)
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
    """Rotation, shear and translation in one grid_sample (nearest, zero fill)."""
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
    return nnf.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def trivial_augment(x, generator):
    """TrivialAugmentWide on a 0..255 float NCHW batch of whole numbers (uint8 values), one
    op per image (see the module's docstring)."""
    import torch
    from torch.nn import functional as nnf

    p = {k: v.to(x.device) for k, v in _draw(len(x), generator).items()}
    v = lambda name: p[name].to(x.dtype).view(-1, 1, 1, 1)  # noqa: E731
    if bool((p["rotate"] != 0).any() or (p["shear_x"] != 0).any() or (p["shear_y"] != 0).any()
            or (p["translate_x"] != 0).any() or (p["translate_y"] != 0).any()):
        x = _affine(x, {k: t.cpu().float() for k, t in p.items() if k != "autocontrast"})

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
