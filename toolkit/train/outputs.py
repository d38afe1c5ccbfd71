"""The files a finished training run leaves in its bundle: history.csv, plots, metrics."""

from __future__ import annotations

import csv
import io
from typing import Any

from ..core.bundle import Bundle
from ..core.files import write_json, write_text


RAW_FIELDS = ["raw_val_loss", "raw_val_accuracy", "raw_val_balanced_accuracy"]


def history_csv(history: list[dict]) -> str:
    """One row per evaluation; the val_* columns are the validated weights' ("weights": the EMA
    when it is on), raw_val_* the raw weights' beside an EMA (for comparison only)."""
    buf = io.StringIO()
    fields = ["epoch", "train_loss", "train_accuracy", "train_balanced_accuracy", "val_loss",
              "val_accuracy", "val_balanced_accuracy", "val_top5", "weights",
              *(RAW_FIELDS if any("raw_val_accuracy" in row for row in history) else []),
              "lr", "seconds", "images_per_second"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def write_bundle_files(bundle: Bundle, history: list[dict],
                       evaluation: dict[str, Any] | None = None) -> None:
    """history.csv and the curves after every evaluation; the confusion matrix and
    report/validation.json only with `evaluation`, the one of the weights just saved as
    model.pt, so report/ describes model.pt, never a later epoch (rank 0 only)."""
    from ..ui.plots import plot_confusion, plot_curves

    write_text(bundle.path("history.csv"), history_csv(history))
    report = bundle.path("report")
    if history:
        plot_curves(history, report / "curves.png")
    if evaluation:
        plot_confusion(evaluation["confusion"], bundle.classes, report / "confusion.png")
        write_json(report / "validation.json", evaluation)
