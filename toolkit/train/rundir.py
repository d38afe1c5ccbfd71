"""TrainingSession's run directory (a mixin): the bundle it opens, and how it finishes it."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from . import presets
from ..core.bundle import Bundle, provenance
from ..core.contract import input_spec
from ..core.files import write_json
from ..core.manifest import Metrics
from ..core.metrics import weakest
from .inspect import summarize


class RunDirectory:
    """The part of TrainingSession that writes the bundle's manifest, split and data report."""

    def _open_bundle(self) -> Bundle:
        cfg = self.cfg
        if self.resume_state and (self.out / "manifest.json").exists():
            bundle = Bundle.load(self.out)
            if self.rt.is_main and bundle.manifest.config != asdict(cfg):  # --epochs etc.
                bundle.update(config=asdict(cfg))
                bundle.save()
            return bundle
        root = Path(cfg.data_dir).resolve()
        val_root = Path(cfg.val_dir).resolve() if cfg.val_dir else root
        rel = lambda samples, base: [[str(Path(p).resolve().relative_to(base)), i]  # noqa: E731
                                     for p, i in samples]
        bundle = Bundle.create(
            self.out, status="training", arch=cfg.arch, classes=self.classes,
            num_classes=len(self.classes), preprocessing=self.preprocessing,
            input=input_spec(self.preprocessing.crop),
            output={"name": "logits", "dtype": "float32", "shape": [-1, len(self.classes)]},
            data={"train_dir": str(root),
                  "val_dir": str(val_root) if cfg.val_dir else None,
                  "val_split": None if cfg.val_dir else cfg.val_split, "seed": cfg.seed,
                  "split_file": "split.json", "train_images": len(self.train_samples),
                  "val_images": len(self.val_samples),
                  "skipped_unreadable": len(self.scan.unreadable)},
            config=asdict(cfg), recipe=self.recipe_notes, seed=cfg.seed,
            provenance=provenance())
        if self.rt.is_main:
            write_json(self.out / "split.json", {
                "classes": self.classes,
                "train": rel(self.train_samples, root), "val": rel(self.val_samples, val_root)})
            write_json(self.out / "report" / "data.json", summarize(self.scan))
            bundle.write_labels()
            bundle.save()
        return bundle

    def _finish(self, bundle: Bundle) -> Bundle:
        if not self.rt.is_main:
            return bundle
        bundle = Bundle.load(self.out)
        stop = {"stopped_epoch": self.stop.stopped_epoch, "best_epoch": self.stop.best_epoch,
                "patience": self.stop.patience}
        findings = presets.diagnose(self.history, self.cfg.lr, self.cfg.arch, stop=stop)
        if self.stop.stopped_epoch:
            bundle.update(metrics=(bundle.manifest.metrics or Metrics()).with_(
                stopped_epoch=self.stop.stopped_epoch))
        bundle.update(status="complete", diagnosis=tuple(findings))
        bundle.record_artifact("last.pt")
        metrics = bundle.manifest.metrics or Metrics()
        self.echo(f"Best validation accuracy {metrics.val_accuracy or 0:.2%}, balanced "
                  f"{metrics.val_balanced_accuracy or 0:.2%} (epoch "
                  f"{metrics.best_epoch}, {metrics.weights or 'raw'} weights); "
                  f"bundle in {self.out}")
        last = self.history[-1] if self.history else None
        if last and last["epoch"] != metrics.best_epoch:
            self.echo(f"The last epoch ({last['epoch']}) validated {last['val_accuracy']:.2%}: "
                      f"model.pt, the manifest and report/ hold epoch {metrics.best_epoch}.")
        if metrics.per_class:
            weak = ", ".join(f"{c} {a:.0%}" for c, a in weakest(metrics.per_class))
            self.echo(f"Weakest classes of model.pt: {weak}")
        label = f" (of the last epoch, {last['epoch']})" if last and \
            last["epoch"] != metrics.best_epoch else ""
        for finding in findings:
            self.echo(f"Diagnosis{label}: {finding}")
        return bundle
