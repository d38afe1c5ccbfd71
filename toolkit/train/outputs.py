"""The files a finished training run leaves in its bundle: history.csv, plots, metrics."""

from __future__ import annotations

import csv
import io
from typing import Any

from ..core.bundle import Bundle
from ..core.files import write_json, write_text


def history_csv(history: list[dict]) -> str:
    buf = io.StringIO()
    fields = ["epoch", "train_loss", "train_accuracy", "train_balanced_accuracy", "val_loss",
              "val_accuracy", "val_balanced_accuracy", "val_top5", "weights", "lr", "seconds",
              "images_per_second"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def write_bundle_files(bundle: Bundle, history: list[dict], evaluation: dict[str, Any]) -> None:
    """history.csv, plots and the manifest's metrics (rank 0 only)."""
    from ..ui.plots import plot_confusion, plot_curves

    write_text(bundle.path("history.csv"), history_csv(history))
    report = bundle.path("report")
    if history:
        plot_curves(history, report / "curves.png")
    if evaluation:
        plot_confusion(evaluation["confusion"], bundle.classes, report / "confusion.png")
        write_json(report / "validation.json", evaluation)
