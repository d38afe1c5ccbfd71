"""The training step machinery: devices, precision, schedule, one epoch, evaluation."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import RtkError


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


def pick_amp_dtype(device: str, amp: bool):
    """bf16 where the hardware has it natively, else fp16 on CUDA; None when AMP is off."""
    import torch

    if not amp:
        return None
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    native_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return torch.bfloat16 if native_bf16 else None


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


def warmup_cosine(optimizer, total_steps: int, warmup_steps: int):
    """Linear warm-up then cosine decay to zero, stepped per batch."""
    import torch

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def new_totals() -> dict[str, float]:
    return {"loss_sum": 0.0, "correct": 0, "seen": 0}


def train_one_epoch(model, loader, optimizer, scheduler, scaler, rt: Runtime, *,
                    skip_batches: int = 0, on_batch=None,
                    totals: dict[str, float] | None = None) -> dict[str, float]:
    """One pass over `loader`; `on_batch(step, n_images, loss, lr)` reports progress.

    `totals` (loss sum, correct, seen) is updated in place, so an interrupted epoch can be
    checkpointed and its statistics completed after a resume.
    """
    import torch

    model.train()
    criterion = torch.nn.CrossEntropyLoss()
    totals = new_totals() if totals is None else totals
    for step, (x, y) in enumerate(loader):
        if step < skip_batches:  # resuming mid-epoch: the loader order is seeded per epoch
            continue
        x = x.to(rt.device, non_blocking=True, memory_format=torch.channels_last)
        y = y.to(rt.device, non_blocking=True)
        with torch.autocast(rt.device, dtype=rt.amp_dtype, enabled=rt.amp_dtype is not None):
            logits = model(x)
            loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if not torch.isfinite(loss):
            raise RtkError(f"The loss became {loss.item()} at step {step}.",
                           "Lower --lr, or train without AMP (--no-amp).")
        totals["loss_sum"] += loss.item() * len(y)
        totals["correct"] += (logits.argmax(1) == y).sum().item()
        totals["seen"] += len(y)
        if on_batch:
            on_batch(step + 1, len(y), loss.item(), scheduler.get_last_lr()[0])
    seen = max(1, totals["seen"])
    return {"train_loss": totals["loss_sum"] / seen, "train_accuracy": totals["correct"] / seen}


def predict_logits(model, loader, rt: Runtime) -> tuple[np.ndarray, np.ndarray, float]:
    """Logits and labels of a whole loader, with the mean cross-entropy."""
    import torch

    model.eval()
    outs, labels = [], []
    with torch.inference_mode(), torch.autocast(rt.device, dtype=rt.amp_dtype,
                                                enabled=rt.amp_dtype is not None):
        for x, y in loader:
            x = x.to(rt.device, non_blocking=True, memory_format=torch.channels_last)
            outs.append(model(x).float().cpu())
            labels.append(y)
    logits, labels_t = torch.cat(outs), torch.cat(labels)
    loss = torch.nn.functional.cross_entropy(logits, labels_t).item()
    return logits.numpy(), labels_t.numpy(), loss


class Throughput:
    """Images per second over a sliding run, for progress bars."""

    def __init__(self) -> None:
        self.start, self.images = time.perf_counter(), 0

    def add(self, n: int) -> float:
        self.images += n
        return self.images / max(1e-9, time.perf_counter() - self.start)
