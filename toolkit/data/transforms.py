"""Preprocessing recipes (recorded in the manifest) and the train/eval transforms built from them."""

from __future__ import annotations

from typing import Any, Callable

from ..core.manifest import Preprocess
from .images import eval_array

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# The card's augmentation levels, read by train_transform (PIL images, in DataLoader workers)
# and by toolkit.data.gpu_transforms (whole batches on the GPU), so the two paths cannot drift:
# RandomResizedCrop scale, rotation degrees, ColorJitter (brightness, contrast, saturation,
# hue), torchvision's TrivialAugmentWide or RandAugment policy ("policy"; it draws rotation and
# colour ops itself, so those levels need no separate ones; bilinear, as torchvision's
# classification presets use) and RandomErasing's probability. Every level but "none" also
# flips horizontally; "none" is the eval resize and crop. "heavy" also turns on mixup and
# cutmix (toolkit.train.config.HEAVY_MIX).
AUGMENT: dict[str, dict[str, Any] | None] = {
    "none": None,
    "light": {"scale": (0.5, 1.0), "degrees": 0, "jitter": None},
    "standard": {"scale": (0.25, 1.0), "degrees": 0, "jitter": None,
                 "policy": "trivialaugmentwide"},
    "heavy": {"scale": (0.08, 1.0), "degrees": 0, "jitter": None,
              "policy": "trivialaugmentwide", "erasing": 0.25},
    "randaugment": {"scale": (0.25, 1.0), "degrees": 0, "jitter": None,
                    "policy": "randaugment"},
}


def policy(name: str):
    """torchvision's augmentation policy `name`, with bilinear interpolation (torchvision's
    classification presets pass it; the transform's own default is nearest)."""
    from torchvision.transforms import v2 as T

    bilinear = T.InterpolationMode.BILINEAR
    if name == "randaugment":
        return T.RandAugment(interpolation=bilinear)  # 2 ops at magnitude 9 of 31
    return T.TrivialAugmentWide(interpolation=bilinear)


def recipe(resize: int = 232, crop: int = 224, image_size: int | None = None,
           *, source: str = "IMAGENET1K_V2") -> Preprocess:
    """The weights' eval recipe; `image_size` sets the crop and scales the resize with it."""
    if image_size is not None and image_size != crop:
        resize, crop = round(image_size * resize / crop), image_size
    return Preprocess(resize=resize, crop=crop, interpolation="bilinear", mean=IMAGENET_MEAN,
                      std=IMAGENET_STD, source=source)


def eval_transform(pre: Preprocess) -> Callable:
    """PIL RGB image -> normalized CHW float tensor, identical to the served transform."""
    import torch

    recipe = pre.to_json()  # images.py is copied into Triton: it takes the plain dict
    return lambda img: torch.from_numpy(eval_array(img, recipe))


def train_transform(pre: Preprocess, level: str) -> Callable:
    """Training augmentation at one of the card's levels, ending in the eval normalization."""
    from torchvision.transforms import v2 as T
    import torch

    crop, spec = pre.crop, AUGMENT[level]
    if spec is None:
        head = [T.Resize(pre.resize, antialias=True), T.CenterCrop(crop)]
    else:
        head = [T.RandomResizedCrop(crop, scale=spec["scale"], antialias=True),
                T.RandomHorizontalFlip()]
        if spec["degrees"]:
            head.append(T.RandomRotation(spec["degrees"]))
        if spec["jitter"]:
            head.append(T.ColorJitter(*spec["jitter"]))
        if spec.get("policy"):
            head.append(policy(spec["policy"]))
    tail = [T.RandomErasing(spec["erasing"])] if spec and spec.get("erasing") else []
    return T.Compose([T.PILToTensor(), *head, T.ToDtype(torch.float32, scale=True),
                      T.Normalize(list(pre.mean), list(pre.std)), *tail])
