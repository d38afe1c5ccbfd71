"""The optimizer's parameter groups and the learning rate that follows the effective batch."""

from __future__ import annotations

import math

from .recipe import split_head


def param_groups(model, lr: float, backbone_lr_mult: float, weight_decay: float,
                 layer_decay: float | None = None) -> list[dict]:
    """AdamW's groups: the backbone at `backbone_lr_mult` x `lr`, the head at `lr`, each split
    into weights that decay and the ones that do not. Norm weights, biases and every other
    parameter of one dimension or less get no weight decay (timm's
    param_groups_weight_decay, torchvision's norm_weight_decay=0). Each group's "part"
    ("backbone" or "head") is what the schedule's warm-up after the unfreeze reads.

    `layer_decay` (ViTs): each depth's rate is further scaled by
    toolkit.train.archs.layer_decay_groups (timm's param_groups_layer_decay)."""
    scale: dict[int, float] = {}
    if layer_decay is not None:
        from .archs import layer_decay_groups

        scale = {id(p): s for params, s in layer_decay_groups(model, layer_decay) for p in params}
    backbone, head = split_head(model)
    groups = []
    for part, params, group_lr in (("backbone", backbone, lr * backbone_lr_mult),
                                   ("head", head, lr)):
        for decays in (True, False):
            by_scale: dict[float, list] = {}
            for p in params:
                if (p.ndim > 1) == decays:
                    by_scale.setdefault(scale.get(id(p), 1.0), []).append(p)
            for factor, chosen in sorted(by_scale.items()):
                groups.append({"params": chosen, "lr": group_lr * factor, "part": part,
                               "weight_decay": weight_decay if decays else 0.0})
    return groups


def scaled_lr(base: float, effective: int, reference: int, *, low: float,
              high: float) -> tuple[float, str]:
    """(lr, why): `base`, the card's rate at batch `reference`, scaled to the effective batch
    by the square-root rule (timm's rule for Adam-type optimizers when no lr is given), kept
    inside the card's range [low, high]."""
    lr = base * math.sqrt(effective / reference)
    why = (f"lr {lr:.3g} = the card's {base:g} at batch {reference} x sqrt({effective}/"
           f"{reference}) (effective batch {effective}; square-root rule for AdamW)")
    if not low <= lr <= high:
        kept = min(max(lr, low), high)
        why += f", kept to {kept:.3g}, the card's {'maximum' if lr > high else 'minimum'}"
        lr = kept
    return lr, why
