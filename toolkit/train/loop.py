"""The training step machinery: devices, precision, schedule, one epoch, evaluation."""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.errors import RtkError


@dataclass
class Runtime:
    """Where and how training runs: device, autocast dtype, distributed rank."""

    device: str
    amp_dtype: Any  # torch.dtype or None
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise RtkError("--device cuda was requested but no CUDA GPU is visible.",
                       "Use --device cpu (or auto), or check the driver with nvidia-smi.")
    return requested


def init_distributed(device: str) -> tuple[int, int]:
    """Join the torchrun process group when launched by torchrun; (rank, world)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), world


def warmup_cosine(optimizer, total_steps: int, warmup_steps: int, *,
                  rewarm_at: int | None = None, rewarm_steps: int = 0):
    """Linear warm-up then cosine decay to zero, stepped per optimizer step. With `rewarm_at`
    (the first step after the head-only epochs), the groups whose "part" is "backbone"
    (toolkit.train.optim.param_groups) warm up again, linearly over `rewarm_steps`: the
    thawed backbone's first steps do not take the full rate at once."""
    import torch

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def backbone(step: int) -> float:
        if rewarm_at is not None and rewarm_at <= step < rewarm_at + rewarm_steps:
            return factor(step) * (step - rewarm_at + 1) / rewarm_steps
        return factor(step)

    lambdas = [backbone if g.get("part") == "backbone" else factor
               for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def make_optimizer(params, lr: float, weight_decay: float, *, device: str):
    """AdamW; on CUDA the fused kernel (one launch for every parameter, not one per tensor)."""
    import torch

    fused = {"fused": True} if device == "cuda" else {}
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **fused)


def new_totals() -> dict[str, Any]:
    return {"loss_sum": 0.0, "correct": 0, "seen": 0, "class_correct": [], "class_seen": []}


def balanced_from(correct: list, seen: list) -> float:
    """Mean per-class recall over the classes that occurred."""
    recalls = [c / s for c, s in zip(correct, seen) if s]
    return sum(recalls) / len(recalls) if recalls else 0.0


LOG_EVERY = 25  # steps between reads of the loss and accuracy kept on the device (a sync each)


class DeviceTotals:
    """Loss sum and correct predictions accumulated on the device, read at log intervals."""

    def __init__(self, device: str):
        import torch

        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.seen = 0
        self.class_correct = self.class_seen = None

    def add(self, loss, logits, y) -> None:
        """`y` holds class indices (a mixed target counts as its largest class)."""
        import torch

        k = logits.shape[1]
        hit = logits.detach().argmax(1) == y
        if self.class_seen is None:
            self.class_correct = torch.zeros(k, dtype=torch.int64, device=y.device)
            self.class_seen = torch.zeros(k, dtype=torch.int64, device=y.device)
        self.loss += loss.detach().double() * y.shape[0]
        self.correct += hit.sum()
        # index_add_, not bincount or y[hit]: both of those wait for the GPU every step
        self.class_seen.index_add_(0, y, torch.ones_like(y))
        self.class_correct.index_add_(0, y, hit.to(y.dtype))
        self.seen += y.shape[0]

    def flush(self, totals: dict[str, float], step: int) -> float:
        """Add the sums into `totals` (one host sync); the mean loss since the last flush."""
        if not self.seen:
            return math.nan
        loss_sum, correct, seen = self.loss.item(), int(self.correct.item()), self.seen
        class_correct, class_seen = self.class_correct.tolist(), self.class_seen.tolist()
        self.loss.zero_()
        self.correct.zero_()
        self.class_correct.zero_()
        self.class_seen.zero_()
        self.seen = 0
        if not math.isfinite(loss_sum):
            raise RtkError(f"The loss became {loss_sum / seen} by step {step}.",
                           "Lower --lr, or train without AMP (--no-amp).")
        totals["loss_sum"] += loss_sum
        totals["correct"] += correct
        totals["seen"] += seen
        for key, add in (("class_correct", class_correct), ("class_seen", class_seen)):
            old = totals.setdefault(key, [])
            totals[key] = [a + b for a, b in zip(old or [0] * len(add), add)]
        return loss_sum / seen


def device_batches(loader, rt: Runtime, skip: int = 0):
    """(x, y) on the device from batch `skip` on: a GPU-path loader (toolkit.data.gpu_input) makes
    them itself; a plain loader's batches are moved there (channels_last)."""
    import torch

    if hasattr(loader, "batches"):
        yield from loader.batches(skip)
        return
    for step, (x, y) in enumerate(loader):
        if step < skip:  # resuming mid-epoch: the loader order is seeded per epoch
            continue
        yield (x.to(rt.device, non_blocking=True, memory_format=torch.channels_last),
               y.to(rt.device, non_blocking=True))


@dataclass
class StepOptions:
    """The recipe's parts inside a training step (toolkit.train.recipe makes them)."""

    label_smoothing: float = 0.0
    class_weights: Any = None  # a tensor on the device, or None
    mix: Any = None  # toolkit.train.recipe.BatchMix, or None
    accumulate: int = 1
    ema: Any = None  # toolkit.train.recipe.ModelEma, or None
    after_train_mode: Any = None  # called with the model after model.train()


def optimizer_steps(batches: int, accumulate: int) -> int:
    """Optimizer steps in an epoch of `batches` batches (a last partial group steps too)."""
    return -(-batches // max(1, accumulate))


def train_one_epoch(model, loader, optimizer, *, scheduler, scaler, rt: Runtime,
                    skip_batches: int = 0, on_batch=None,
                    totals: dict[str, Any] | None = None,
                    options: StepOptions | None = None) -> dict[str, float]:
    """One pass over `loader`; `on_batch(step, n_images, loss, lr)` reports progress.

    `totals` (loss sum, correct, seen, per class) is updated in place, so an interrupted
    epoch can be checkpointed and its statistics completed after a resume. Loss and accuracy
    stay on the device and are read every LOG_EVERY steps (and after the first and last): no
    step waits for the GPU, and `loss` is the mean over the last interval.

    With `options.accumulate` K, the gradients of K batches (each loss divided by K) add up
    before one optimizer step, and the scheduler and the EMA advance once per optimizer step.
    """
    import torch

    opts = options or StepOptions()
    model.train()
    if opts.after_train_mode:
        opts.after_train_mode(model)
    criterion = torch.nn.CrossEntropyLoss(weight=opts.class_weights,
                                          label_smoothing=opts.label_smoothing)
    totals = new_totals() if totals is None else totals
    running, last_loss, step = DeviceTotals(rt.device), math.nan, skip_batches
    k, n = max(1, opts.accumulate), len(loader)
    try:
        for step, (x, y) in enumerate(device_batches(loader, rt, skip_batches),
                                      start=skip_batches + 1):
            target = y
            if opts.mix is not None:
                x, target = opts.mix(x, y, step)
            boundary = step % k == 0 or step == n
            # DDP: only the last batch of a group all-reduces its gradients
            sync = model.no_sync() if not boundary and hasattr(model, "no_sync") else \
                contextlib.nullcontext()
            with sync:
                with torch.autocast(rt.device, dtype=rt.amp_dtype,
                                    enabled=rt.amp_dtype is not None):
                    logits = model(x)
                    loss = criterion(logits, target)
                if (step - 1) % k == 0:  # a group's first batch: after the forward pass, so
                    optimizer.zero_grad(set_to_none=True)  # backward reuses the freed memory
                group = min(k, n - (step - 1) // k * k)  # the last group may be short
                scaler.scale(loss / group if group > 1 else loss).backward()
            if boundary:
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if opts.ema is not None:
                    opts.ema.update()
            # under mixup/cutmix the prediction is scored against the mixed target's largest
            # class, not the pre-mix label: the overfitting diagnosis reads this accuracy
            running.add(loss, logits, target.argmax(1) if target.ndim == 2 else y)
            if step % LOG_EVERY == 0 or step == skip_batches + 1 or step == n:
                last_loss = running.flush(totals, step)
            if on_batch:
                on_batch(step, len(y), last_loss, scheduler.get_last_lr()[0])
    finally:  # an interrupt keeps the statistics of every finished step
        running.flush(totals, step)
    seen = max(1, totals["seen"])
    return {"train_loss": totals["loss_sum"] / seen, "train_accuracy": totals["correct"] / seen,
            "train_balanced_accuracy": balanced_from(totals.get("class_correct") or [],
                                                     totals.get("class_seen") or [])}


def predict_logits(model, loader, rt: Runtime) -> tuple[np.ndarray, np.ndarray, float]:
    """Logits and labels of a whole loader, with the mean cross-entropy (one read at the end)."""
    import torch

    model.eval()
    outs, labels = [], []
    with torch.inference_mode(), torch.autocast(rt.device, dtype=rt.amp_dtype,
                                                enabled=rt.amp_dtype is not None):
        for x, y in device_batches(loader, rt):
            outs.append(model(x).float())
            labels.append(y)
    logits, labels_t = torch.cat(outs).cpu(), torch.cat(labels).cpu()
    loss = torch.nn.functional.cross_entropy(logits, labels_t).item()
    return logits.numpy(), labels_t.numpy(), loss


class Throughput:
    """Images per second over a sliding run, for progress bars."""

    def __init__(self) -> None:
        self.start, self.images = time.perf_counter(), 0

    def add(self, n: int) -> float:
        self.images += n
        return self.images / max(1e-9, time.perf_counter() - self.start)
