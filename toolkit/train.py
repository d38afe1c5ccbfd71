"""`rtk finetune`: the configuration, its resolution against the card, and the bundle files."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, replace
from typing import Any, Callable

from . import card
from .bundle import Bundle
from .fileio import write_json, write_text


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
    batch_size: int | None = None
    epochs: int | None = None
    lr: float | None = None
    eval_steps: int = 1
    preset: str = "none"
    augment: str | None = None
    weight_decay: float = 0.05
    device: str = "auto"
    decode: str | None = None  # "gpu" (nvJPEG + batched augmentation) or "cpu" (PIL workers)
    amp: bool = True
    compile: bool | None = None
    seed: int = 0
    resume: bool = False


def resolve(cfg: TrainConfig, n_images: int, device: str) -> TrainConfig:
    """Fill unset options from the preset (with --preset auto) or the card's defaults."""
    preset = card.preset_for(n_images)
    auto = cfg.preset == "auto"
    pick = lambda given, from_preset, default: (  # noqa: E731
        given if given is not None else from_preset if auto else default)
    cfg = replace(
        cfg,
        arch=pick(cfg.arch, preset.arch, "resnet50"),
        batch_size=pick(cfg.batch_size, preset.batch_size, int(card.RANGES["batch_size"][0])),
        epochs=pick(cfg.epochs, preset.epochs, int(card.RANGES["epochs"][0])),
        lr=pick(cfg.lr, preset.lr, card.RANGES["lr"][0]),
        augment=cfg.augment or preset.augment,
        compile=cfg.compile if cfg.compile is not None else device == "cuda",
        decode=cfg.decode or ("gpu" if device == "cuda" else "cpu"),
    )
    for name in card.RANGES:
        card.check_range(name, getattr(cfg, name))
    return cfg


def history_csv(history: list[dict]) -> str:
    buf = io.StringIO()
    fields = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_top5",
              "lr", "seconds", "images_per_second"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def fit(cfg: TrainConfig, progress: bool = True, echo: Callable = print) -> Bundle:
    """Fine-tune a classifier on `cfg.data_dir` and write the bundle to `cfg.out`."""
    from .session import TrainingSession

    session = TrainingSession.prepare(cfg, echo=echo, progress=progress)
    return session.run()


def write_bundle_files(bundle: Bundle, history: list[dict], evaluation: dict[str, Any]) -> None:
    """history.csv, plots and the manifest's metrics (rank 0 only)."""
    from .report import plot_confusion, plot_curves

    write_text(bundle.path("history.csv"), history_csv(history))
    report = bundle.path("report")
    if history:
        plot_curves(history, report / "curves.png")
    if evaluation:
        plot_confusion(evaluation["confusion"], bundle.classes, report / "confusion.png")
        write_json(report / "validation.json", evaluation)


