"""Build torchvision classifiers, resolve pretrained weights offline-aware, load bundles."""

from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import RtkError
from ..core.manifest import Preprocess
from ..data.transforms import recipe
from . import archs


def replace_head(model, num_classes: int) -> None:
    """Swap the last Linear layer (fc, classifier[-1], heads.head...) for a new one."""
    import torch.nn as nn

    name, last = None, None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            name, last = n, m
    if last is None:
        raise RtkError("This architecture has no Linear classification head.",
                       "Pick a torchvision classification model such as resnet50.")
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], nn.Linear(last.in_features, num_classes))


def imagenet_weights(arch: str):
    """The arch's IMAGENET1K_V2 weights enum where it exists, else its default."""
    from torchvision import models

    archs.check(arch)  # before get_model_weights, whose ValueError would reach the user raw
    if archs.custom(arch):
        return None
    enum = models.get_model_weights(arch)
    return getattr(enum, "IMAGENET1K_V2", None) or enum.DEFAULT


def preprocessing_for(arch: str, weights: str, image_size: int | None) -> Preprocess:
    """The eval recipe of the arch's ImageNet weights, rescaled to `image_size` (a registered
    architecture without weights takes torchvision's ImageNet recipe)."""
    w = imagenet_weights(arch)
    if w is None:
        return recipe(image_size=image_size)
    t = w.transforms()
    resize = t.resize_size[0] if isinstance(t.resize_size, (list, tuple)) else t.resize_size
    crop = t.crop_size[0] if isinstance(t.crop_size, (list, tuple)) else t.crop_size
    return recipe(resize, crop, image_size, source=str(w).split(".")[-1])


def _load_state_dict(path: Path) -> dict:
    """A state_dict from a weights file or an rtk checkpoint, loaded as untrusted input."""
    from .checkpoint import load

    obj = load(path, missing_hint="Use imagenet, none, or a path to a state_dict file.")
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise RtkError(f"{path} holds a {type(obj).__name__}, not a state_dict.",
                       "Save weights with torch.save(model.state_dict(), path).")
    return obj


def _imagenet_state_dict(arch: str) -> dict:
    import torch

    w = imagenet_weights(arch)
    if w is None:
        raise RtkError(f"{arch} is a registered architecture without ImageNet weights.",
                       "Pass --weights PATH to a state_dict file, or --weights none.")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)
    if cached.is_file():
        return _load_state_dict(cached)
    try:
        return w.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # URLError, socket errors, hash mismatch
        raise RtkError(
            f"ImageNet weights for {arch} are not in the torch hub cache and could not be "
            f"downloaded ({type(exc).__name__}).",
            f"Place {os.path.basename(w.url)} at {cached}, or pass --weights PATH to a "
            "state_dict file, or train from scratch with --weights none.") from exc


def build_model(arch: str, num_classes: int, weights: str = "imagenet",
                image_size: int | None = None):
    """A torchvision classifier with `weights` (imagenet|none|PATH) and a new head; a ViT is
    built for `image_size`, its pretrained position embeddings interpolated to it."""
    model = archs.instantiate(arch, image_size)
    if weights == "imagenet":
        model.load_state_dict(archs.fit_pretrained(arch, _imagenet_state_dict(arch), model))
    elif weights != "none":
        path = Path(weights)
        if not path.is_file():
            raise RtkError(f"--weights {weights}: no such file.",
                           "Use imagenet, none, or a path to a state_dict file.")
        state = archs.fit_pretrained(arch, _load_state_dict(path), model)
        own = model.state_dict()  # a fine-tuned head (e.g. an rtk model.pt) differs in shape:
        state = {k: v for k, v in state.items()  # drop it here; mismatches count as missing
                 if k not in own or getattr(v, "shape", None) == own[k].shape}
        missing, unexpected = model.load_state_dict(state, strict=False)
        head_only = all(k.rsplit(".", 2)[0] in ("fc", "classifier", "heads", "head")
                        or "classifier" in k or k.startswith(("fc.", "head")) for k in missing)
        if unexpected or not head_only:
            raise RtkError(f"{path} does not match {arch}: {len(missing)} missing and "
                           f"{len(unexpected)} unexpected keys.",
                           "Pass weights saved from the same architecture (--arch).")
    replace_head(model, num_classes)
    return model


def load_bundle_model(bundle, checkpoint: str = "model.pt"):
    """The bundle's trained model in eval mode on the CPU."""
    model = archs.instantiate(bundle.manifest.arch, bundle.preprocessing.crop)
    replace_head(model, len(bundle.classes))
    path = bundle.root / checkpoint
    if not path.is_file():
        raise RtkError(f"{bundle.root} has no {checkpoint}.", "Re-run `rtk finetune`.")
    model.load_state_dict(_load_state_dict(path))
    return model.eval()
