"""The product card: parameter ranges, data-set-size presets and training diagnosis."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import RtkError

# name: (default, low, high) -- the card's defaults and allowed ranges.
RANGES: dict[str, tuple[float, float, float]] = {
    "batch_size": (4, 2, 64),
    "epochs": (1, 1, 30),
    "lr": (5e-5, 1e-5, 5e-4),
    "eval_steps": (1, 1, 30),  # counts epochs: validate every N epochs
}

AUGMENT_LEVELS = ("none", "light", "standard", "heavy")
CPU_SLOWDOWN = "Training on a CPU is 10-30x slower than on a GPU."


def check_range(name: str, value: float) -> None:
    """Reject a value outside the card's range, naming the range."""
    _, low, high = RANGES[name]
    if not low <= value <= high:
        flag = "--" + name.replace("_", "-")
        raise RtkError(f"{flag} {value:g} is outside the supported range {low:g} to {high:g}.",
                       f"Pick a value in [{low:g}, {high:g}] (default {RANGES[name][0]:g}).")


@dataclass(frozen=True)
class Preset:
    """What the card recommends for a data set of a given size."""

    arch: str
    lr: float
    epochs: int
    epochs_range: str
    batch_size: int
    augment: str
    notes: tuple[str, ...]
    ema: bool = True
    patience: int = 0  # evaluations without improvement before stopping; 0: off


def preset_for(n_images: int) -> Preset:
    """The card's recommendation for a data set of `n_images` images."""
    if n_images < 1000:
        notes = ("Small data set: ResNet-18, heavy augmentation (with mixup/cutmix), the "
                 "weights' EMA and early stopping (--patience 5) reduce overfitting.",)
        if n_images < 500:
            notes = (f"Only {n_images} images: expect weak results; collect more data if you can.",
                     *notes)
        return Preset("resnet18", 2e-5, 15, "15-20", 8, "heavy", notes, ema=True, patience=5)
    vit = (f"Accuracy-critical with over 5,000 images: consider ViT Base ({UPGRADE['vit_b_16']}; "
           "about 4x ResNet-50's compute per image).",)
    if n_images <= 10_000:
        return Preset("resnet50", 5e-5, 5, "5-10", 16, "standard", vit if n_images > 5000 else ())
    if n_images > 50_000:
        vit = (f"Over 50,000 images: ViT Base ({UPGRADE['vit_b_16']}) may be 2-3% more accurate "
               "than ResNet-50.",)
    return Preset("resnet50", 1e-4, 3, "3-5", 32, "light", vit)


# The card's upgrade path, as the option that takes it.
UPGRADE = {"resnet101": "--arch resnet101", "vit_b_16": "--arch vit_b_16"}


def upgrades(arch: str) -> str:
    """The card's "upgrade to ResNet-101 or ViT Base", without the one already in use."""
    names = {"resnet101": "ResNet-101", "vit_b_16": "ViT Base"}
    left = [f"{names[a]} ({flag})" for a, flag in UPGRADE.items() if a != arch]
    return " or ".join(left)


def batch_for_gpu_memory(gib: float | None) -> str:
    """The card's batch-size advice for a GPU with `gib` GiB of memory (None: no GPU)."""
    if gib is None:
        return f"No GPU found. {CPU_SLOWDOWN}"
    if gib < 12:
        return f"{gib:.0f} GiB GPU: batch size 4-8."
    if gib < 24:
        return f"{gib:.0f} GiB GPU: batch size 16-32."
    return f"{gib:.0f} GiB GPU: batch size 32-64."


def diagnose(history: list[dict], lr: float, arch: str, *, stop: dict | None = None) -> list[str]:
    """The card's diagnosis of a finished run: overfitting, slow convergence, class imbalance
    and early stopping, with remedies. `stop`: {"stopped_epoch", "best_epoch", "patience"}."""
    if not history:
        return []
    last = history[-1]
    train_acc, val_acc = last["train_accuracy"], last["val_accuracy"]
    findings = []
    if stop and stop.get("stopped_epoch"):
        findings.append(
            f"Early stopping: stopped after epoch {stop['stopped_epoch']}, "
            f"{stop['patience']} evaluation(s) without improvement; model.pt is epoch "
            f"{stop['best_epoch']}.")
    if train_acc >= 0.9 and train_acc - val_acc >= 0.1:
        findings.append(
            f"Overfitting: train accuracy {train_acc:.1%} vs validation {val_acc:.1%}. "
            "Remedies: stronger augmentation (--augment heavy, --mixup 0.2, --cutmix 1.0), "
            "early stopping (--patience 3), --label-smoothing 0.1, fewer epochs, a lower --lr, "
            "more data, or a smaller model (--arch resnet18).")
    first = history[0]["val_accuracy"]
    if val_acc < 0.6 and (len(history) == 1 or val_acc - first < 0.05):
        bigger = f" Upgrade to {upgrades(arch)}." if arch != "vit_b_16" else ""
        findings.append(
            f"Slow convergence: validation accuracy {val_acc:.1%} after {last['epoch']} epoch(s). "
            f"Remedies: train longer (--epochs), raise --lr from {lr:g} (max 5e-4), check labels, "
            f"or start from ImageNet weights (--weights imagenet).{bigger}")
    balanced = last.get("val_balanced_accuracy")
    if balanced is not None and val_acc - balanced >= 0.1:
        findings.append(
            f"Class imbalance: balanced accuracy {balanced:.1%} (mean per-class recall) vs "
            f"accuracy {val_acc:.1%}; the rare classes are missed. Remedies: ensure a balanced "
            "class distribution (more images of the weak classes), or --balance sampler|weights.")
    return findings
