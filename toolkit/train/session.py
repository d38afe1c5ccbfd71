"""One training run end to end: data, model, resume, epochs, checkpoints, the bundle."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable

from . import presets, checkpoint
from ..ui import console as ui
from ..core.bundle import Bundle
from ..data.loaders import check_usable, stratified_split
from ..core.errors import RtkError
from .loop import (Runtime, StepOptions, Throughput, init_distributed, new_totals, pick_device,
                   train_one_epoch)
from ..core.host import pick_amp_dtype
from .recipe import EarlyStop, ModelEma, frozen_eval, set_backbone_frozen
from ..data.scan import scan_folder
from .config import TrainConfig, resolve
from .resume import requested_after, requested_of, resumed_config
from .rundir import RunDirectory
from .setup import RecipeSetup
from .validation import Evaluations


class TrainingSession(RecipeSetup, Evaluations, RunDirectory):
    """State of a run between `prepare` and `run`; rank 0 alone writes to disk. The recipe's
    set-up is toolkit.train.setup's, the evaluations and model.pt toolkit.train.validation's,
    the bundle's manifest toolkit.train.rundir's."""

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
        self.lr_given, self.oom_retries, self.requested = False, False, {}

    # -- preparation --------------------------------------------------------
    @classmethod
    def prepare(cls, cfg: TrainConfig, echo: Callable = print, progress: bool = True, *,
                explicit: Iterable[str] | None = None) -> "TrainingSession":
        """`explicit`: the options the user gave (the CLI knows); None: those that differ from
        TrainConfig's defaults. A --resume compares them with the run's."""
        import torch

        if cfg.arch and cfg.image_size:  # a ViT's size rule, before the data is scanned
            from .archs import check_image_size

            check_image_size(cfg.arch, cfg.image_size)
        device = pick_device(cfg.device)
        rank, world = init_distributed(device)
        out = Path(cfg.out)
        resume_state, requested, changed = None, requested_of(cfg), []
        if cfg.resume:
            resume_state = checkpoint.load(out / "last.pt")
            cfg, changed = resumed_config(resume_state, cfg, explicit)
            requested = requested_after(resume_state, cfg)
        elif (out / "manifest.json").exists() or (out / "last.pt").exists():
            raise RtkError(f"{out} already holds a run.",
                           "Continue it with --resume, or choose another --out.")
        rt = Runtime(device, pick_amp_dtype(device, cfg.amp), rank, world)
        session = cls(cfg, rt, echo if rank == 0 else (lambda *a, **k: None), show_progress=progress)
        session.resume_state, session.requested = resume_state, requested
        for change in changed:
            session.echo(f"Resuming with {change}.")
        torch.manual_seed(cfg.seed)
        session._prepare_data()
        session.lr_given = cfg.lr is not None  # else the card's rate, scaled to the batch
        session.cfg = resolve(cfg, len(session.train_samples) + len(session.val_samples), device)
        session._prepare_model()
        if device == "cuda":  # every batch has one shape: let cuDNN time and keep its fastest
            torch.backends.cudnn.benchmark = True  # (after the batch probe, which runs without)
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
        self._build_training()  # toolkit.train.setup: param groups, optimizer, loaders, schedule
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

    def _restore(self, state: dict[str, Any]) -> None:
        saved_groups = len(state["optimizer"]["param_groups"])
        if saved_groups != len(self.optimizer.param_groups):
            raise RtkError(f"{self.out / 'last.pt'} was written by an older rtk: its optimizer "
                           f"has {saved_groups} parameter groups, this one "
                           f"{len(self.optimizer.param_groups)} (no weight decay on norms and "
                           "biases now).",
                           "Start the run again with another --out; its model.pt still "
                           "serves, and `--weights RUN/model.pt` fine-tunes from it.")
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
        self.stop.patience = self.cfg.patience  # a --patience given with --resume applies
        if self.stop.stopped_epoch and not (self.stop.patience
                                            and self.stop.bad >= self.stop.patience):
            self.stop.stopped_epoch = None  # the new patience has not run out: train on
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
        bundle = self.bundle = self._open_bundle()
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
        epoch = self.start_epoch
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                stats = (self._train_first_epoch(epoch) if epoch == self.start_epoch
                         else self._train_epoch(epoch))
                cfg = self.cfg  # a first epoch out of memory halves the batch
                if (epoch + 1) % cfg.eval_steps == 0 or epoch + 1 == cfg.epochs:
                    self._evaluate(epoch, stats, bundle)
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
        return self._finish(bundle)

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
        mix = self.mix if not (cfg.mixup_off_epoch and epoch >= cfg.mixup_off_epoch) else None
        if mix is not None:
            mix.seed = cfg.seed + epoch
        elif self.mix is not None and epoch == cfg.mixup_off_epoch:
            self.echo(f"Mixup/cutmix off from epoch {epoch + 1} (--mixup-off-epoch "
                      f"{cfg.mixup_off_epoch}).")
        options = StepOptions(label_smoothing=cfg.label_smoothing,
                              class_weights=self.class_weights, mix=mix,
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
            "requested": self.requested,
            "early_stop": asdict(self.stop),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {})})

    def _barrier(self) -> None:
        if self.rt.world > 1:
            import torch.distributed as dist

            dist.barrier()


def fit(cfg: TrainConfig, progress: bool = True, echo: Callable = print, *,
        explicit: Iterable[str] | None = None) -> Bundle:
    """Fine-tune a classifier on `cfg.data_dir` and write the bundle to `cfg.out`;
    `explicit`: the options the user gave (see TrainingSession.prepare)."""
    session = TrainingSession.prepare(cfg, echo=echo, progress=progress, explicit=explicit)
    return session.run()
