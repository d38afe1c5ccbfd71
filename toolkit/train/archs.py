"""The architectures rtk builds: torchvision's classifiers, the Vision Transformer's rule
for input sizes, and a registry for architectures of one's own.

A ViT cuts the image into patches and learns one position embedding per patch, so it takes
any size that is a whole number of patches; pretrained embeddings (learnt on a 14 x 14 grid
at 224 px) are interpolated bicubically to the new grid, as timm and torchvision's own
`interpolate_embeddings` do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..core.errors import RtkError


@dataclass(frozen=True)
class Custom:
    """An architecture registered with `register`: `build(image_size)` returns the module."""

    build: Callable
    patch_size: int | None = None


_CUSTOM: dict[str, Custom] = {}


def register(name: str, build: Callable, *, patch_size: int | None = None) -> None:
    """Make `--arch name` build `build(image_size)`: a module whose last nn.Linear is the
    classification head (rtk replaces it). `patch_size` marks a patch-based transformer:
    image sizes must be multiples of it, and its INT8 follows the transformer rule."""
    _CUSTOM[name] = Custom(build, patch_size)


def custom(arch: str) -> Custom | None:
    return _CUSTOM.get(arch)


def check(arch: str) -> None:
    from torchvision import models

    known = models.list_models(module=models)
    if arch in _CUSTOM or arch in known:
        return
    close = [a for a in known if a.startswith(arch[:4])][:6]
    raise RtkError(f"Unknown --arch {arch!r}.",
                   f"Use a torchvision classification model, e.g. {', '.join(close or known[:6])}.")


def patch_size(arch: str) -> int | None:
    """The patch side of a Vision Transformer (vit_b_16: 16), None for other architectures."""
    if arch in _CUSTOM:
        return _CUSTOM[arch].patch_size
    if arch.startswith("vit_"):
        return int(arch.rsplit("_", 1)[1])
    return None


def is_transformer(arch: str) -> bool:
    return patch_size(arch) is not None


def check_image_size(arch: str, size: int) -> None:
    """A ViT's image must be a whole number of patches: refuse any other size, before training."""
    patch = patch_size(arch)
    if patch is None or (size % patch == 0 and size >= patch):
        return
    lower, upper = max(patch, size // patch * patch), (size // patch + 1) * patch
    choices = f"{lower} or {upper}" if lower != upper and size > patch else f"{upper}"
    raise RtkError(f"--image-size {size} does not fit {arch}: it cuts images into "
                   f"{patch} x {patch} px patches, so the size must be a multiple of {patch}.",
                   f"Use --image-size {choices} (224 is what its ImageNet weights saw).")


def instantiate(arch: str, image_size: int | None):
    """The untrained module for `arch` at `image_size` (ViTs are built for that size)."""
    from torchvision import models

    check(arch)
    if arch in _CUSTOM:
        return _CUSTOM[arch].build(image_size)
    if is_transformer(arch) and image_size is not None:
        check_image_size(arch, image_size)
        return models.get_model(arch, weights=None, image_size=image_size)
    return models.get_model(arch, weights=None)


def fit_pretrained(arch: str, state: dict, model) -> dict:
    """`state` with a ViT's position embeddings interpolated to `model`'s grid when the
    weights were learnt at another image size; any other state as it is."""
    key = "encoder.pos_embedding"
    if not is_transformer(arch) or key not in state:
        return state
    want = model.state_dict()[key].shape
    if state[key].shape == want:
        return state
    from torchvision.models.vision_transformer import interpolate_embeddings

    return interpolate_embeddings(model.image_size, model.patch_size, state)


def layer_decay_groups(model, decay: float) -> list[tuple[list, float]]:
    """(parameters, learning-rate scale) per depth of a ViT, for layer-wise learning-rate
    decay (BEiT, MAE; timm's `param_groups_layer_decay`): the head trains at the full rate,
    each encoder block below it at `decay` times the one above, the patch and position
    embeddings at decay^(blocks + 1)."""
    blocks = len(getattr(getattr(model, "encoder", None), "layers", ()))
    if not blocks:
        raise RtkError("--layer-decay needs a Vision Transformer (--arch vit_b_16).",
                       "Leave --layer-decay out for this architecture.")
    top = blocks + 1

    def depth(name: str) -> int:  # encoder.layers.encoder_layer_<i>.* is block i
        if name.startswith("encoder.layers."):
            return int(name.split(".")[2].rsplit("_", 1)[1]) + 1
        if name.startswith(("conv_proj", "class_token", "encoder.pos_embedding")):
            return 0
        return top  # encoder.ln and the head

    groups: dict[int, list] = {}
    for name, p in model.named_parameters():
        groups.setdefault(depth(name), []).append(p)
    return [(params, decay ** (top - d)) for d, params in sorted(groups.items())]
