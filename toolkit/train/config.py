"""`rtk finetune`: the configuration, and its resolution against the card (train/recipes.py)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from . import presets


@dataclass
class TrainConfig:
    """Every option of `rtk finetune`; None means "the card decides"."""

    data_dir: str
    out: str
    val_dir: str | None = None
    val_split: float = 0.2
    arch: str | None = None
    weights: str = "imagenet"
    image_size: int | None = None
    batch_size: int | str | None = None  # "auto": a probe picks it (toolkit.train.recipe)
    epochs: int | None = None
    lr: float | None = None
    # the card's rate before the session scaled it to the effective batch (None: --lr given)
    base_lr: float | None = None
    eval_steps: int = 1  # validate every N EPOCHS (not optimizer steps); the card's name
    preset: str = "none"
    augment: str | None = None
    weight_decay: float = 0.05
    device: str = "auto"
    decode: str | None = None  # "gpu" (nvJPEG + batched augmentation) or "cpu" (PIL workers)
    amp: bool = True
    compile: bool | None = None
    seed: int = 0
    resume: bool = False
    # the fine-tuning recipe (toolkit.train.recipe); None: the card decides, in `resolve`
    ema: bool | None = None
    ema_decay: float = 0.9998
    label_smoothing: float | None = None  # None: 0.1 for a ViT (ARCH_RECIPES), else 0
    layer_decay: float | None = None  # ViTs: layer-wise learning-rate decay (off: None)
    mixup: float | None = None
    cutmix: float | None = None
    mixup_off_epoch: int = 0  # mix the first N epochs only (timm's mixup_off_epoch); 0: all
    patience: int | None = None
    freeze_epochs: int | None = None
    backbone_lr_mult: float | None = None
    accumulate: int = 1
    balance: str = "auto"
    config_file: str | None = None


HEAVY_MIX = {"mixup": 0.2, "cutmix": 1.0}  # torchvision's reference recipe's alphas

# What the anchors fine-tune a ViT with, where rtk chooses: label smoothing 0.1 (timm's
# fine-tuning default; torchvision's ViT recipe uses 0.11). The rest of their recipe is
# rtk's for every architecture: AdamW, weight decay 0.05, a linear warm-up into a cosine
# schedule. Layer-wise decay (BEiT, MAE: 0.65-0.75) is opt-in: --layer-decay.
ARCH_RECIPES = {"transformer": {"label_smoothing": 0.1}, "cnn": {"label_smoothing": 0.0}}


def pretrained(weights: str) -> bool:
    return weights != "none"


def _check_recipe(cfg: TrainConfig) -> None:
    """Reject recipe values that cannot train, naming the allowed values."""
    from ..core.errors import RtkError

    checks = [("--label-smoothing", cfg.label_smoothing, 0 <= cfg.label_smoothing < 1, "[0, 1)"),
              ("--mixup", cfg.mixup, cfg.mixup >= 0, ">= 0 (0: off)"),
              ("--cutmix", cfg.cutmix, cfg.cutmix >= 0, ">= 0 (0: off)"),
              ("--patience", cfg.patience, cfg.patience >= 0, ">= 0 (0: off)"),
              ("--freeze-epochs", cfg.freeze_epochs, cfg.freeze_epochs >= 0, ">= 0"),
              ("--backbone-lr-mult", cfg.backbone_lr_mult, 0 < cfg.backbone_lr_mult <= 1,
               "(0, 1]"),
              ("--accumulate", cfg.accumulate, 1 <= cfg.accumulate <= 64, "1 to 64"),
              ("--mixup-off-epoch", cfg.mixup_off_epoch, cfg.mixup_off_epoch >= 0, ">= 0 (0: never)"),
              ("--ema-decay", cfg.ema_decay, 0 < cfg.ema_decay < 1, "(0, 1)"),
              ("--layer-decay", cfg.layer_decay,
               cfg.layer_decay is None or 0 < cfg.layer_decay <= 1, "(0, 1]")]
    for flag, value, ok, allowed in checks:
        if not ok:
            raise RtkError(f"{flag} {value:g} is not allowed.", f"Use a value in {allowed}.")


def resolve(cfg: TrainConfig, n_images: int, device: str) -> TrainConfig:
    """Fill unset options from the preset (with --preset auto) or the card's defaults."""
    preset = presets.preset_for(n_images)
    auto = cfg.preset == "auto"
    pick = lambda given, from_preset, default: (  # noqa: E731
        given if given is not None else from_preset if auto else default)
    cfg = replace(
        cfg,
        arch=pick(cfg.arch, preset.arch, "resnet50"),
        batch_size=pick(cfg.batch_size, preset.batch_size, int(presets.RANGES["batch_size"][0])),
        epochs=pick(cfg.epochs, preset.epochs, int(presets.RANGES["epochs"][0])),
        lr=pick(cfg.lr, preset.lr, presets.RANGES["lr"][0]),
        augment=cfg.augment or preset.augment,
        compile=cfg.compile if cfg.compile is not None else device == "cuda",
        decode=cfg.decode or ("gpu" if device == "cuda" else "cpu"),
        ema=pick(cfg.ema, preset.ema, True),
        patience=pick(cfg.patience, preset.patience, 0),
    )
    from .archs import is_transformer

    family = ARCH_RECIPES["transformer" if is_transformer(cfg.arch) else "cnn"]
    cfg = replace(cfg, label_smoothing=(cfg.label_smoothing if cfg.label_smoothing is not None
                                        else family["label_smoothing"]))
    heavy = cfg.augment == "heavy"
    epochs = cfg.epochs
    cfg = replace(
        cfg,
        mixup=cfg.mixup if cfg.mixup is not None else HEAVY_MIX["mixup"] if heavy else 0.0,
        cutmix=cfg.cutmix if cfg.cutmix is not None else HEAVY_MIX["cutmix"] if heavy else 0.0,
        # head-only warm-up for one epoch when the backbone is pretrained and the run has
        # more than one epoch (a one-epoch run would never train the backbone)
        freeze_epochs=(cfg.freeze_epochs if cfg.freeze_epochs is not None
                       else 1 if pretrained(cfg.weights) and epochs > 1 else 0),
        # --layer-decay sets the backbone's rates block by block: no flat multiplier on top
        backbone_lr_mult=(cfg.backbone_lr_mult if cfg.backbone_lr_mult is not None
                          else 0.1 if pretrained(cfg.weights) and cfg.layer_decay is None
                          else 1.0),
    )
    for name in presets.RANGES:
        if name == "batch_size" and cfg.batch_size == "auto":
            continue
        presets.check_range(name, getattr(cfg, name))
    _check_recipe(cfg)
    return cfg


