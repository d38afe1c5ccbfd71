"""The product card: parameter ranges, data-set-size presets and training diagnosis."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import RtkError

# name: (default, low, high) -- the card's defaults and allowed ranges.
RANGES: dict[str, tuple[float, float, float]] = {
    "batch_size": (4, 2, 64),
    "epochs": (1, 1, 30),
    "lr": (5e-5, 1e-5, 5e-4),
    "eval_steps": (1, 1, 30),
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


def preset_for(n_images: int) -> Preset:
    """The card's recommendation for a data set of `n_images` images."""
    if n_images < 1000:
        notes = ("Small data set: ResNet-18 and heavy augmentation reduce overfitting.",)
        if n_images < 500:
            notes = (f"Only {n_images} images: expect weak results; collect more data if you can.",
                     *notes)
        return Preset("resnet18", 2e-5, 15, "15-20", 8, "heavy", notes)
    if n_images <= 10_000:
        return Preset("resnet50", 5e-5, 5, "5-10", 16, "standard", ())
    notes = ()
    if n_images > 50_000:
        notes = ("Over 50,000 images: a ViT may be 2-3% more accurate than ResNet-50.",)
    return Preset("resnet50", 1e-4, 3, "3-5", 32, "light", notes)


def default_augment(n_images: int) -> str:
    return preset_for(n_images).augment


def batch_for_gpu_memory(gib: float | None) -> str:
    """The card's batch-size advice for a GPU with `gib` GiB of memory (None: no GPU)."""
    if gib is None:
        return f"No GPU found. {CPU_SLOWDOWN}"
    if gib < 12:
        return f"{gib:.0f} GiB GPU: batch size 4-8."
    if gib < 24:
        return f"{gib:.0f} GiB GPU: batch size 16-32."
    return f"{gib:.0f} GiB GPU: batch size 32-64."


def diagnose(history: list[dict], lr: float, arch: str) -> list[str]:
    """The card's diagnosis of a finished run: overfitting or slow convergence, with remedies."""
    if not history:
        return []
    last = history[-1]
    train_acc, val_acc = last["train_accuracy"], last["val_accuracy"]
    findings = []
    if train_acc >= 0.9 and train_acc - val_acc >= 0.1:
        findings.append(
            f"Overfitting: train accuracy {train_acc:.1%} vs validation {val_acc:.1%}. "
            "Remedies: stronger augmentation (--augment heavy), fewer epochs, a lower --lr, "
            "more data, or a smaller model (--arch resnet18).")
    first = history[0]["val_accuracy"]
    if val_acc < 0.6 and (len(history) == 1 or val_acc - first < 0.05):
        bigger = "" if arch == "resnet101" else " With plenty of data, --arch resnet101 can help."
        findings.append(
            f"Slow convergence: validation accuracy {val_acc:.1%} after {last['epoch']} epoch(s). "
            f"Remedies: train longer (--epochs), raise --lr from {lr:g} (max 5e-4), check labels, "
            f"or start from ImageNet weights (--weights imagenet).{bigger}")
    return findings
