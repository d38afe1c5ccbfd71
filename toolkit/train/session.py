"""One training run end to end: data, model, resume, epochs, checkpoints, the bundle."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

from . import presets, checkpoint
from ..ui import console as ui
from ..core.bundle import Bundle, provenance
from ..core.contract import input_spec
from ..data.loaders import check_usable, stratified_split, training_loaders
from .inspect import summarize
from ..core.errors import RtkError
from ..core.files import write_json
from .loop import (Runtime, StepOptions, Throughput, init_distributed, make_optimizer, new_totals,
                   optimizer_steps, pick_device, predict_logits, train_one_epoch, warmup_cosine)
from ..core.host import pick_amp_dtype
from ..core.manifest import Metrics
from ..core.metrics import classification, weakest
from .recipe import EarlyStop, ModelEma, frozen_eval, set_backbone_frozen, split_head
from ..data.scan import scan_folder
from .config import TrainConfig, resolve
from .outputs import write_bundle_files


class TrainingSession:
    """State of a run between `prepare` and `run`; rank 0 alone writes to disk."""

    def __init__(self, cfg: TrainConfig, rt: Runtime, echo: Callable, *, show_progress: bool):
        self.cfg, self.rt, self.echo, self.show_progress = cfg, rt, echo, show_progress
        self.out = Path(cfg.out)
        self.history: list[dict] = []
        self.best_accuracy, self.start_epoch, self.skip_batches = -1.0, 0, 0
        self.resume_state: dict[str, Any] | None = None
        self.resumed_totals: dict[str, float] | None = None
        self._totals = new_totals()
        self.ema, self.mix, self.class_weights, self.balanced_sampler = None, None, None, None
        self.recipe_notes: dict[str, str] = {}
        self.stop = EarlyStop()

    # -- preparation --------------------------------------------------------
    @classmethod
    def prepare(cls, cfg: TrainConfig, echo: Callable = print, progress: bool = True) -> "TrainingSession":
        import torch

        if cfg.arch and cfg.image_size:  # a ViT's size rule, before the data is scanned
            from .archs import check_image_size

            check_image_size(cfg.arch, cfg.image_size)
        device = pick_device(cfg.device)
        rank, world = init_distributed(device)
        out = Path(cfg.out)
        resume_state = None
        if cfg.resume:
            resume_state = checkpoint.load(out / "last.pt")
            saved = TrainConfig(**resume_state["config"])
            cfg = TrainConfig(**{**asdict(saved), "resume": True, "device": cfg.device,
                                 "decode": cfg.decode})  # where to run: this machine's choice
        elif (out / "manifest.json").exists() or (out / "last.pt").exists():
            raise RtkError(f"{out} already holds a run.",
                           "Continue it with --resume, or choose another --out.")
        rt = Runtime(device, pick_amp_dtype(device, cfg.amp), rank, world)
        session = cls(cfg, rt, echo if rank == 0 else (lambda *a, **k: None), show_progress=progress)
        session.resume_state = resume_state
        torch.manual_seed(cfg.seed)
        if device == "cuda":  # every batch has one shape: let cuDNN time and keep its fastest
            torch.backends.cudnn.benchmark = True
        session._prepare_data()
        session.cfg = resolve(cfg, len(session.train_samples) + len(session.val_samples), device)
        session._prepare_model()
        return session

    def _prepare_data(self) -> None:
        cfg = self.cfg
        scan = scan_folder(cfg.data_dir, progress=self.rt.is_main and self.show_progress)
        check_usable(scan)
        self.classes, self.scan = scan.classes, scan
        if cfg.val_dir:
            val_scan = scan_folder(cfg.val_dir, classes=scan.classes)
            self.train_samples, self.val_samples = scan.samples, val_scan.samples
        else:
            self.train_samples, self.val_samples = stratified_split(scan.samples, cfg.val_split,
                                                                    cfg.seed)
        if not self.val_samples:
            raise RtkError("The validation set is empty.",
                           "Use a larger --val-split or pass --val-dir.")
        if scan.unreadable:
            self.echo(f"Skipped {len(scan.unreadable)} unreadable file(s); "
                      f"they are listed in {self.out / 'report' / 'data.json'}.")

    def _prepare_model(self) -> None:
        import torch

        from .model import build_model, preprocessing_for

        cfg, rt = self.cfg, self.rt
        self.preprocessing = preprocessing_for(cfg.arch, cfg.weights, cfg.image_size)
        weights = "none" if self.resume_state else cfg.weights
        model = build_model(cfg.arch, len(self.classes), weights, self.preprocessing.crop)
        if self.resume_state:
            model.load_state_dict(self.resume_state["state_dict"])
        self.model = model.to(rt.device, memory_format=torch.channels_last)
        self._prepare_recipe()
        cfg = self.cfg
        backbone, head = split_head(self.model)
        groups = [{"params": backbone, "lr": cfg.lr * cfg.backbone_lr_mult},
                  {"params": head, "lr": cfg.lr}]
        self.optimizer = make_optimizer(groups, cfg.lr, cfg.weight_decay, device=rt.device)
        self.scaler = torch.amp.GradScaler(rt.device, enabled=rt.amp_dtype == torch.float16)
        self._build_loaders()
        # the schedule counts optimizer steps: with --accumulate K, one per K batches
        total = cfg.epochs * optimizer_steps(len(self.train_loader), cfg.accumulate)
        self.scheduler = warmup_cosine(self.optimizer, total, max(1, min(total // 10, 500)))
        if cfg.ema:
            self.ema = ModelEma(self.model, cfg.ema_decay)
        if self.resume_state:
            self._restore(self.resume_state)
        self.train_model = self.model
        if rt.world > 1:  # a frozen backbone's parameters get no gradient for a while
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, find_unused_parameters=cfg.freeze_epochs > 0)
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)

    def _prepare_recipe(self) -> None:
        """Resolve --batch-size auto and --balance, and make the mixing and the loss weights."""
        import torch

        from .recipe import (BalancedSampler, BatchMix, class_counts, class_weights, cpu_batch_size,
                             cuda_batch_size, pick_balance)

        cfg, rt, notes = self.cfg, self.rt, self.recipe_notes
        self.stop = EarlyStop(patience=cfg.patience)
        if cfg.batch_size == "auto":
            size = self.preprocessing.crop
            batch, why = (cuda_batch_size(self.model, size, rt.amp_dtype, num_classes=len(self.classes))
                          if rt.device == "cuda" else cpu_batch_size(self.model, size))
            self.cfg = cfg = replace(cfg, batch_size=batch)
            notes["batch_size"] = f"--batch-size auto: {batch} ({why})"
        counts = class_counts(self.train_samples, len(self.classes))
        method, why = pick_balance(cfg.balance, counts, rt.world)
        if cfg.balance == "auto":
            notes["balance"] = f"--balance auto: {method} ({why})"
        self.cfg = cfg = replace(cfg, balance=method)  # resolved: a resume reuses it
        if method == "weights":
            self.class_weights = torch.tensor(class_weights(counts), device=rt.device)
        elif method == "sampler":
            self.balanced_sampler = BalancedSampler([y for _, y in self.train_samples], cfg.seed)
        if cfg.mixup or cfg.cutmix:
            self.mix = BatchMix(len(self.classes), cfg.mixup, cfg.cutmix)
        effective = cfg.batch_size * cfg.accumulate * rt.world
        notes["effective_batch"] = (f"effective batch {effective} = {cfg.batch_size} x "
                                    f"{cfg.accumulate} accumulated x {rt.world} process(es)")
        notes["freeze"] = (f"head-only warm-up for {cfg.freeze_epochs} epoch(s), then the "
                           f"backbone at {cfg.backbone_lr_mult:g} x --lr"
                           if cfg.freeze_epochs else
                           f"no head-only warm-up (weights {cfg.weights}, {cfg.epochs} epoch(s))")

    def _build_loaders(self) -> None:
        cfg, rt = self.cfg, self.rt
        self.train_loader, self.val_loader, self.sampler = training_loaders(
            self.train_samples, self.val_samples, self.preprocessing, augment=cfg.augment,
            decode=cfg.decode, batch_size=cfg.batch_size, device=rt.device, seed=cfg.seed,
            rank=rt.rank, world=rt.world, sampler=self.balanced_sampler)

    def _restore(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"])
        self.start_epoch, self.skip_batches = state["epoch"], state["step"]
        self.resumed_totals = state.get("totals") if self.skip_batches else None
        # an interrupt during an evaluation leaves its row behind; that evaluation runs again
        self.history = [h for h in state["history"] if h["epoch"] <= self.start_epoch]
        self.best_accuracy = state["best_accuracy"]
        self.stop = EarlyStop(**state.get("early_stop", {"patience": self.cfg.patience,
                                                         "best": self.best_accuracy}))
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        if self.stop.stopped_epoch:  # --resume of a run that stopped early: it is finished
            self.start_epoch = self.cfg.epochs
            self.echo(f"The run stopped early after epoch {self.stop.stopped_epoch} "
                      f"(--patience {self.stop.patience}); nothing left to train.")
            return
        self.echo(f"Resuming at epoch {self.start_epoch + 1}"
                  + (f", batch {self.skip_batches + 1}" if self.skip_batches else ""))

    # -- the run --------------------------------------------------------------
    def run(self) -> Bundle:
        cfg, rt = self.cfg, self.rt
        bundle = self._open_bundle()
        self.echo(f"Training {cfg.arch} on {len(self.train_samples)} images "
                  f"({len(self.val_samples)} validation), {len(self.classes)} classes, "
                  f"device {rt.device}, AMP {rt.amp_dtype or 'off'}, compile {cfg.compile}, "
                  f"decode {cfg.decode}, {rt.world} process(es).")
        if rt.device == "cpu":
            self.echo(presets.CPU_SLOWDOWN)
        for note in self.recipe_notes.values():
            self.echo(f"Recipe: {note}.")
        if rt.device == "cpu" and cfg.decode == "gpu":
            self.echo("--decode gpu on the CPU: batches are decoded and augmented in this "
                      "process, not in workers (slower; meant for testing the GPU path).")
        evaluation: dict[str, Any] = {}
        epoch = self.start_epoch
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                stats = self._train_epoch(epoch)
                if (epoch + 1) % cfg.eval_steps == 0 or epoch + 1 == cfg.epochs:
                    evaluation = self._evaluate(epoch, stats, bundle)
                self._save_last(epoch + 1, 0)
                if self.stop.stopped_epoch:
                    self.echo(f"Early stopping after epoch {epoch + 1}: no improvement in "
                              f"{cfg.patience} evaluation(s); the best was epoch "
                              f"{self.stop.best_epoch}.")
                    break
        except KeyboardInterrupt:
            self._save_last(epoch, self._steps_done)
            self._barrier()
            raise RtkError(f"Interrupted during epoch {epoch + 1}; progress saved to "
                           f"{self.out / 'last.pt'}.",
                           f"Continue with: rtk finetune {cfg.data_dir} --out {cfg.out} --resume",
                           exit_code=130) from None
        return self._finish(bundle, evaluation)

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        import torch

        cfg, rt = self.cfg, self.rt
        torch.manual_seed(cfg.seed + epoch)  # augmentation and order depend only on the epoch
        self.train_loader.generator.manual_seed(cfg.seed + epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        if hasattr(self.train_loader, "set_epoch"):  # the GPU path seeds each batch's augmentation
            self.train_loader.set_epoch(cfg.seed + epoch)
        skip = self.skip_batches if epoch == self.start_epoch else 0
        self._steps_done = skip
        frozen = epoch < cfg.freeze_epochs
        set_backbone_frozen(self.model, frozen)
        if self.mix is not None:
            self.mix.seed = cfg.seed + epoch
        options = StepOptions(label_smoothing=cfg.label_smoothing,
                              class_weights=self.class_weights, mix=self.mix,
                              accumulate=cfg.accumulate, ema=self.ema,
                              after_train_mode=frozen_eval if frozen else None)
        k, n_batches = cfg.accumulate, len(self.train_loader)
        self._totals = dict(self.resumed_totals) if skip and self.resumed_totals else new_totals()
        meter = Throughput()
        start, first_step = time.perf_counter(), []
        with ui.epoch_bar(len(self.train_loader), f"epoch {epoch + 1}/{cfg.epochs}",
                          self.show_progress and rt.is_main) as update:
            def on_batch(step, n, loss, lr):
                if step % k == 0 or step == n_batches:  # a resume restarts at a group's start
                    self._steps_done = step
                if not first_step:  # the loop reads the loss after the first step: a sync
                    first_step.append(time.perf_counter() - start)
                update(step, meter.add(n * rt.world), loss, lr)

            stats = train_one_epoch(self.train_model, self.train_loader, self.optimizer,
                                    scheduler=self.scheduler, scaler=self.scaler, rt=rt, skip_batches=skip,
                                    on_batch=on_batch, totals=self._totals, options=options)
        stats["seconds"] = time.perf_counter() - start
        stats["images_per_second"] = meter.images / max(1e-9, stats["seconds"])
        stats["lr"] = self.scheduler.get_last_lr()[0]
        if epoch == self.start_epoch:
            self._report_first_epoch(epoch, stats, first_step)
        return stats

    def _report_first_epoch(self, epoch: int, stats: dict, first_step: list[float]) -> None:
        """Say what the first epoch's speed includes, and which images PIL decoded."""
        if self.cfg.compile and first_step:
            stats["compile_warmup_seconds"] = first_step[0]
            self.echo(f"torch.compile warm-up: the first step took {first_step[0]:.1f} s; "
                      f"epoch {epoch + 1}'s images/s includes it, later epochs' do not.")
        by_pil = getattr(self.train_loader, "decoded_by_pil", 0)
        if by_pil:
            self.echo(f"{by_pil} training image(s) an epoch are decoded by PIL on the CPU, "
                      "not in batches (not plain colour JPEGs, or EXIF-rotated).")

    def _monitor(self) -> str:
        """The validation metric that picks model.pt and drives --patience."""
        return "balanced_accuracy" if self.cfg.balance != "none" else "accuracy"

    def _validate(self) -> tuple[dict[str, Any], float, str, Any]:
        """(evaluation, loss, "raw" or "ema", model) of whichever weights validate better."""
        logits, labels, loss = predict_logits(self.model, self.val_loader, self.rt)
        best = (classification(logits, labels, self.classes), loss, "raw", self.model)
        if self.ema is not None:
            logits, labels, ema_loss = predict_logits(self.ema.module, self.val_loader, self.rt)
            ema = classification(logits, labels, self.classes)
            key = self._monitor()
            best[0]["ema_" + key] = ema[key]
            if ema[key] > best[0][key]:
                ema["raw_" + key] = best[0][key]
                best = (ema, ema_loss, "ema", self.ema.module)
        return best

    def _evaluate(self, epoch: int, stats: dict, bundle: Bundle) -> dict[str, Any]:
        evaluation: dict[str, Any] = {}
        if self.rt.is_main:
            evaluation, loss, which, model = self._validate()
            row = {"epoch": epoch + 1, **stats, "val_loss": loss,
                   "val_accuracy": evaluation["accuracy"],
                   "val_balanced_accuracy": evaluation["balanced_accuracy"],
                   "val_top5": evaluation["top5"], "weights": which}
            self.history.append(row)
            ui.table(f"Evaluation after epoch {epoch + 1}",
                     ["epoch", "train loss", "train acc", "val loss", "val acc", "val bal acc",
                      "val top-5", "weights", "img/s"],
                     [[row["epoch"], row["train_loss"], row["train_accuracy"], loss,
                       row["val_accuracy"], row["val_balanced_accuracy"], row["val_top5"], which,
                       f"{row['images_per_second']:.1f}"]])
            if self.stop.improved(evaluation[self._monitor()], epoch + 1):
                self.best_accuracy = self.stop.best
                checkpoint.save(self.out / "model.pt", {
                    "state_dict": checkpoint.cpu_state(model), "arch": self.cfg.arch,
                    "classes": self.classes, "epoch": epoch + 1, "weights": which,
                    "val_accuracy": evaluation["accuracy"],
                    "val_balanced_accuracy": evaluation["balanced_accuracy"]})
                bundle.update(metrics=self._metrics(evaluation, epoch + 1))
                bundle.record_artifact("model.pt")
            write_bundle_files(bundle, self.history, evaluation)
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

    def _save_last(self, epoch: int, step: int) -> None:
        if not self.rt.is_main:
            return
        checkpoint.save(self.out / "last.pt", {
            "state_dict": checkpoint.cpu_state(self.model),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "epoch": epoch, "step": step,
            "totals": self._totals if step else new_totals(),
            "rng": checkpoint.rng_state(), "history": self.history,
            "best_accuracy": self.best_accuracy, "config": asdict(self.cfg),
            "early_stop": asdict(self.stop),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {})})

    def _barrier(self) -> None:
        if self.rt.world > 1:
            import torch.distributed as dist

            dist.barrier()

    # -- bundle ---------------------------------------------------------------
    def _open_bundle(self) -> Bundle:
        cfg = self.cfg
        if self.resume_state and (self.out / "manifest.json").exists():
            return Bundle.load(self.out)
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

    def _metrics(self, evaluation: dict, epoch: int) -> Metrics:
        last = self.history[-1]
        return Metrics(best_epoch=epoch, val_accuracy=evaluation["accuracy"],
                       val_balanced_accuracy=evaluation["balanced_accuracy"],
                       weights=last["weights"], monitor=self._monitor(),
                       val_top5=evaluation["top5"], train_accuracy=last["train_accuracy"],
                       val_loss=last["val_loss"], per_class=evaluation["per_class"],
                       train_images_per_second=last["images_per_second"])

    def _finish(self, bundle: Bundle, evaluation: dict) -> Bundle:
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
        if evaluation:
            weak = ", ".join(f"{c} {a:.0%}" for c, a in weakest(evaluation["per_class"]))
            self.echo(f"Weakest classes: {weak}")
        for finding in findings:
            self.echo(f"Diagnosis: {finding}")
        return bundle


def fit(cfg: TrainConfig, progress: bool = True, echo: Callable = print) -> Bundle:
    """Fine-tune a classifier on `cfg.data_dir` and write the bundle to `cfg.out`."""
    session = TrainingSession.prepare(cfg, echo=echo, progress=progress)
    return session.run()
