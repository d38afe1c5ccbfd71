"""TrainingSession's recipe set-up (a mixin): the batch size, the learning rate that follows
it, class balance, mixing, and the optimizer, loaders and schedule built from them, again
at half the batch when an automatic batch runs out of memory in the first epoch."""

from __future__ import annotations

from dataclasses import asdict, replace

from . import checkpoint, presets
from .recipe import EarlyStop, ModelEma


class RecipeSetup:
    """The part of TrainingSession that turns the resolved config into training objects."""

    def _prepare_recipe(self) -> None:
        """Resolve --batch-size auto, the learning rate and --balance; make the mixing and the
        loss weights."""
        import torch

        from .archs import is_transformer
        from .autobatch import shared_batch
        from .recipe import BalancedSampler, BatchMix, class_counts, class_weights, pick_balance

        cfg, rt, notes = self.cfg, self.rt, self.recipe_notes
        self.stop = EarlyStop(patience=cfg.patience)
        # a single process can start the first epoch again at half the batch; under torchrun
        # the other ranks would be left waiting in a collective, so there it is not retried
        self.oom_retries = cfg.batch_size == "auto" and rt.world == 1
        if cfg.batch_size == "auto":
            batch, why = self._probe_batch() if rt.is_main else (0, "")
            batch = shared_batch(batch, rt)  # rank 0 decides for every process
            self.cfg = cfg = replace(cfg, batch_size=batch)
            notes["batch_size"] = f"--batch-size auto: {batch} ({why})" + (
                f"; rank 0 probed and broadcast it to all {rt.world} processes"
                if rt.world > 1 else "")
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
            self.mix = BatchMix(len(self.classes), cfg.mixup, cfg.cutmix, rank=rt.rank)
            if cfg.mixup_off_epoch:
                notes["mixup_off"] = (f"mixup/cutmix for the first {cfg.mixup_off_epoch} "
                                      "epoch(s) only (--mixup-off-epoch)")
        self._scale_lr()
        cfg = self.cfg
        if is_transformer(cfg.arch):
            notes["transformer"] = (
                f"ViT fine-tuning: AdamW, warm-up and cosine, label smoothing "
                f"{cfg.label_smoothing:g}, " + (f"layer-wise lr decay {cfg.layer_decay:g}"
                                               if cfg.layer_decay else "no layer-wise lr decay"))
        notes["freeze"] = (f"head-only warm-up for {cfg.freeze_epochs} epoch(s), then the "
                           f"backbone at {cfg.backbone_lr_mult:g} x --lr, warmed up again"
                           if cfg.freeze_epochs else
                           f"no head-only warm-up (weights {cfg.weights}, {cfg.epochs} epoch(s))")
        if self.oom_retries:  # the weights a retried first epoch starts from again
            self._initial = checkpoint.cpu_state(self.model)

    def _probe_batch(self) -> tuple[int, str]:
        from . import autobatch

        cfg, rt, size = self.cfg, self.rt, self.preprocessing.crop
        if rt.device == "cuda":
            return autobatch.cuda_batch_size(
                self.model, size, rt.amp_dtype, num_classes=len(self.classes),
                ema=bool(cfg.ema), gpu_decode=cfg.decode == "gpu")
        return autobatch.cpu_batch_size(self.model, size, ema=bool(cfg.ema))

    def _scale_lr(self) -> None:
        """With no --lr, the card's rate scaled to the effective batch (square-root rule); an
        explicit --lr, and a resumed run's rate, as they are."""
        from .optim import scaled_lr

        cfg, rt = self.cfg, self.rt
        effective = cfg.batch_size * cfg.accumulate * rt.world
        self.recipe_notes["effective_batch"] = (
            f"effective batch {effective} = {cfg.batch_size} x {cfg.accumulate} accumulated x "
            f"{rt.world} process(es)")
        if self.resume_state:
            why = f"lr {cfg.lr:.3g}, as the run was started"
        elif self.lr_given:
            why = f"--lr {cfg.lr:g} as given (not scaled with the effective batch {effective})"
        else:
            base = cfg.base_lr if cfg.base_lr is not None else cfg.lr
            _, low, high = presets.RANGES["lr"]
            lr, why = scaled_lr(base, effective, self._reference_batch(), low=low, high=high)
            self.cfg = replace(cfg, lr=lr, base_lr=base)
        self.recipe_notes["lr"] = why

    def _reference_batch(self) -> int:
        """The batch the card's base rate goes with: the preset's with --preset auto, else the
        card's default batch (4, at lr 5e-5)."""
        if self.cfg.preset == "auto":
            return presets.preset_for(len(self.train_samples) + len(self.val_samples)).batch_size
        return int(presets.RANGES["batch_size"][0])

    def _build_training(self) -> None:
        """The optimizer, gradient scaler, loaders and schedule for the current batch."""
        import torch

        from .loop import make_optimizer, optimizer_steps, warmup_cosine
        from .optim import param_groups

        cfg, rt = self.cfg, self.rt
        groups = param_groups(self.model, cfg.lr, cfg.backbone_lr_mult, cfg.weight_decay,
                              cfg.layer_decay)
        self.optimizer = make_optimizer(groups, cfg.lr, cfg.weight_decay, device=rt.device)
        self.scaler = torch.amp.GradScaler(rt.device, enabled=rt.amp_dtype == torch.float16)
        self._build_loaders()
        # the schedule counts optimizer steps: with --accumulate K, one per K batches
        per_epoch = optimizer_steps(len(self.train_loader), cfg.accumulate)
        total = cfg.epochs * per_epoch
        warmup = max(1, min(total // 10, 500))
        self.scheduler = warmup_cosine(
            self.optimizer, total, warmup, rewarm_steps=warmup,
            rewarm_at=cfg.freeze_epochs * per_epoch if cfg.freeze_epochs else None)

    def _build_loaders(self) -> None:
        from ..data.loaders import training_loaders

        cfg, rt = self.cfg, self.rt
        self.train_loader, self.val_loader, self.sampler = training_loaders(
            self.train_samples, self.val_samples, self.preprocessing, augment=cfg.augment,
            decode=cfg.decode, batch_size=cfg.batch_size, device=rt.device, seed=cfg.seed,
            rank=rt.rank, world=rt.world, sampler=self.balanced_sampler)

    def _train_first_epoch(self, epoch: int) -> dict:
        """The first epoch of a run; with --batch-size auto, halved and retried on running
        out of memory (toolkit.train.autobatch.halving_retries)."""
        if not self.oom_retries:
            return self._train_epoch(epoch)
        from . import autobatch

        stats, _ = autobatch.halving_retries(
            lambda: self._train_epoch(epoch), self.cfg.batch_size, rebuild=self._rebuild_at,
            echo=self.echo, is_oom=autobatch.is_out_of_memory)
        self._initial = None
        return stats

    def _rebuild_at(self, batch: int) -> None:
        """Start the first epoch again from the initial weights at `batch`."""
        import torch

        self.optimizer = self.scheduler = self.train_loader = self.val_loader = None
        self.model.zero_grad(set_to_none=True)
        if self.rt.device == "cuda":
            torch.cuda.empty_cache()
        self.model.load_state_dict(self._initial)
        self.cfg = replace(self.cfg, batch_size=batch)
        note = self.recipe_notes["batch_size"].split("; halved")[0]
        self.recipe_notes["batch_size"] = f"{note}; halved to {batch} (out of memory)"
        self._scale_lr()
        self._build_training()
        if self.ema is not None:
            self.ema = ModelEma(self.model, self.cfg.ema_decay)
        if self.rt.is_main:  # the manifest records the batch and rate the run trains with
            self.bundle.update(config=asdict(self.cfg), recipe=dict(self.recipe_notes))
            self.bundle.save()
