"""Which weights are validated, saved as model.pt and reported: one rule, no best-of-two.

With the EMA on (the default), the EMA weights are the model: they alone are scored for
model.pt, --patience and the reported accuracy, as timm (which scores by the EMA when it is on)
and Ultralytics (which validates only the EMA) do. The raw weights are validated too and their
figures kept in history.csv (raw_val_*) for comparison, never to choose: picking whichever of
two models scores higher on the same validation split would bias the reported number upwards.
With --no-ema the raw weights are the model.

Validation runs in FP32 (no autocast), as `rtk eval` does, so report/validation.json, the
confusion matrix and the manifest's metrics are the numbers `rtk eval RUN` gives for model.pt
(on the CPU decode path; GPU decoding's nvJPEG pixels may differ slightly from PIL's). They
are written when model.pt is: they describe model.pt, not the last epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from . import checkpoint
from ..core.bundle import Bundle
from ..core.manifest import Metrics
from ..core.metrics import classification
from ..ui import console as ui
from .loop import predict_logits
from .outputs import write_bundle_files


@dataclass
class Validation:
    """One evaluation: the validated weights' metrics, and the raw weights' beside an EMA."""

    evaluation: dict[str, Any]
    loss: float
    weights: str  # "ema" or "raw": the weights that were validated, and that model.pt gets
    model: Any
    raw: dict[str, float] | None = None  # raw_val_accuracy, ... when the EMA was validated


def validate(model, ema, loader, rt, classes: list[str]) -> Validation:
    """Validate the EMA weights when there is an EMA, else the raw ones (FP32)."""
    fp32 = replace(rt, amp_dtype=None)
    logits, labels, loss = predict_logits(model, loader, fp32)
    raw = classification(logits, labels, classes)
    if ema is None:
        return Validation(raw, loss, "raw", model)
    logits, labels, ema_loss = predict_logits(ema.module, loader, fp32)
    return Validation(classification(logits, labels, classes), ema_loss, "ema", ema.module,
                      raw={"raw_val_loss": loss, "raw_val_accuracy": raw["accuracy"],
                           "raw_val_balanced_accuracy": raw["balanced_accuracy"]})


class Evaluations:
    """TrainingSession's evaluations (a mixin): the history row, model.pt, the report files."""

    def _monitor(self) -> str:
        """The validation metric that picks model.pt and drives --patience."""
        return "balanced_accuracy" if self.cfg.balance != "none" else "accuracy"

    def _validate(self) -> Validation:
        return validate(self.model, self.ema, self.val_loader, self.rt, self.classes)

    def _evaluate(self, epoch: int, stats: dict, bundle: Bundle) -> dict[str, Any]:
        evaluation: dict[str, Any] = {}
        if self.rt.is_main:
            v = self._validate()
            evaluation = v.evaluation
            row = {"epoch": epoch + 1, **stats, "val_loss": v.loss,
                   "val_accuracy": evaluation["accuracy"],
                   "val_balanced_accuracy": evaluation["balanced_accuracy"],
                   "val_top5": evaluation["top5"], "weights": v.weights, **(v.raw or {})}
            self.history.append(row)
            ui.table(f"Evaluation after epoch {epoch + 1}",
                     ["epoch", "train loss", "train acc", "val loss", "val acc", "val bal acc",
                      "val top-5", "weights", "raw val acc", "img/s"],
                     [[row["epoch"], row["train_loss"], row["train_accuracy"], v.loss,
                       row["val_accuracy"], row["val_balanced_accuracy"], row["val_top5"],
                       v.weights, row.get("raw_val_accuracy", "-"),
                       f"{row['images_per_second']:.1f}"]])
            saved = None
            if self.stop.improved(evaluation[self._monitor()], epoch + 1):
                self.best_accuracy = self.stop.best
                checkpoint.save(self.out / "model.pt", {
                    "state_dict": checkpoint.cpu_state(v.model), "arch": self.cfg.arch,
                    "classes": self.classes, "epoch": epoch + 1, "weights": v.weights,
                    "val_accuracy": evaluation["accuracy"],
                    "val_balanced_accuracy": evaluation["balanced_accuracy"]})
                bundle.update(metrics=self._metrics(evaluation, epoch + 1))
                bundle.record_artifact("model.pt")
                saved = {**evaluation, "checkpoint": "model.pt", "epoch": epoch + 1,
                         "weights": v.weights}
            write_bundle_files(bundle, self.history, saved)  # report/ follows model.pt only
        self._barrier()
        self._share_stop()
        return evaluation

    def _share_stop(self) -> None:
        """Every process stops at the same epoch: rank 0 decides and broadcasts."""
        if self.rt.world <= 1:
            return
        import torch
        import torch.distributed as dist

        flag = torch.tensor([self.stop.stopped_epoch or 0], device=self.rt.device)
        dist.broadcast(flag, 0)
        self.stop.stopped_epoch = int(flag.item()) or None

    def _metrics(self, evaluation: dict, epoch: int) -> Metrics:
        last = self.history[-1]  # the row of the evaluation that saved model.pt
        return Metrics(best_epoch=epoch, val_accuracy=evaluation["accuracy"],
                       val_balanced_accuracy=evaluation["balanced_accuracy"],
                       weights=last["weights"], monitor=self._monitor(),
                       val_top5=evaluation["top5"], train_accuracy=last["train_accuracy"],
                       val_loss=last["val_loss"], per_class=evaluation["per_class"],
                       train_images_per_second=last["images_per_second"])
