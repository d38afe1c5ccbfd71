"""`--batch-size auto`: the memory probe, one decision for every process, and the halving of
the batch when the first epoch runs out of memory anyway."""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from typing import Callable

BATCH_CANDIDATES = (64, 48, 32, 24, 16, 12, 8, 6, 4, 2)  # the card's 2-64, largest first
MAX_OOM_RETRIES = 3  # halvings of the batch after an out-of-memory error in the first epoch
MIN_BATCH = BATCH_CANDIDATES[-1]


@contextmanager
def buffers_kept(model):
    """Run a probe in train mode without moving BatchNorm's running statistics: the pretrained
    (or resumed) buffers are restored afterwards."""
    import torch

    saved = {name: b.clone() for name, b in model.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(saved[name])


def saved_bytes_per_image(model, image_size: int, device: str = "cpu") -> int:
    """The activations a training step keeps for backward, per image: every tensor autograd
    saves during one forward pass of 2 images, counted by a saved-tensors hook."""
    import torch

    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    x = torch.zeros(2, 3, image_size, image_size, device=device)
    was_training = model.training
    model.train()
    with buffers_kept(model), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum()
    model.train(was_training)
    return total[0] // 2


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo, else the free physical pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def param_bytes(model) -> int:
    """The parameters of one copy of the model (a gradient or an AdamW moment is as large)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def model_bytes(model) -> int:
    """Parameters and buffers of one copy of the model (the EMA keeps one more)."""
    return param_bytes(model) + sum(b.numel() * b.element_size() for b in model.buffers())


def cpu_batch_size(model, image_size: int, *, ema: bool = False) -> tuple[int, str]:
    """The largest card batch whose saved activations and weights (x4: AdamW's two moments
    and the gradient; one more copy with the EMA) fit in a quarter of the available memory;
    (batch, why)."""
    per_image = saved_bytes_per_image(model, image_size)
    weights = 4 * param_bytes(model) + (model_bytes(model) if ema else 0)
    budget = available_memory_bytes() // 4
    batch = next((b for b in BATCH_CANDIDATES if weights + b * per_image <= budget), MIN_BATCH)
    return batch, (f"CPU: picked by memory ({per_image / 2**20:.0f} MiB of activations per "
                   f"image, {budget / 2**30:.1f} GiB budget = a quarter of the available"
                   + (", the EMA copy counted" if ema else "") + ")")


def decode_bytes_per_image(image_size: int) -> int:
    """GPU decoding's buffers per image (an estimate): the decoded uint8 image at twice the
    crop's short side (toolkit.data.loaders.train_min_short), 4:3, and two float32 copies of
    the crop while it is augmented."""
    short = 2 * image_size
    return 3 * short * (short * 4 // 3) + 2 * 4 * 3 * image_size * image_size


def cuda_batch_size(model, image_size: int, amp_dtype, *, num_classes: int, ema: bool = False,
                    gpu_decode: bool = False) -> tuple[int, str]:
    """The largest card batch for which a forward and backward pass run without running out
    of memory, largest first, within 90% of what the device has free (plus what this process
    already holds), counting what comes after the probe: AdamW's moments, the EMA copy and
    GPU decoding's buffers. cuDNN's autotuner is off during the probe (it may pick
    workspace-hungry kernels per shape). UNVERIFIED: written against torch's documented CUDA
    memory API (mem_get_info, max_memory_allocated, OutOfMemoryError); the test suite has no
    GPU, and a torch.compile graph's own memory is not counted."""
    import torch

    free, _ = torch.cuda.mem_get_info()
    budget = 0.9 * (free + torch.cuda.memory_allocated())
    # AdamW's moments are created by its first step, after the probe: count them now
    later = 2 * param_bytes(model) + (model_bytes(model) if ema else 0)
    per_image = decode_bytes_per_image(image_size) if gpu_decode else 0
    benchmark, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, False
    try:
        with buffers_kept(model):  # the probe's training-mode passes must not move BatchNorm
            for batch in BATCH_CANDIDATES:
                fits, peak = _probe(model, batch, image_size, amp_dtype, num_classes)
                peak += later + batch * per_image
                if fits and peak <= budget:
                    return batch, (f"CUDA probe: batch {batch} peaked at {peak / 2**30:.1f} GiB "
                                   "with the optimizer's moments"
                                   + (", the EMA copy" if ema else "")
                                   + (", the GPU decode buffers" if gpu_decode else ""))
    finally:
        torch.backends.cudnn.benchmark = benchmark
    return MIN_BATCH, "CUDA probe: even batch 4 ran out of memory; using the card's minimum 2"


def _probe(model, batch: int, image_size: int, amp_dtype, num_classes: int) -> tuple[bool, float]:
    """(ran, peak bytes) of one forward and backward pass at `batch` on the current GPU."""
    import torch

    x = y = loss = None
    try:
        torch.cuda.reset_peak_memory_stats()
        x = torch.randn(batch, 3, image_size, image_size, device="cuda").contiguous(
            memory_format=torch.channels_last)
        y = torch.randint(0, num_classes, (batch,), device="cuda")
        with torch.autocast("cuda", dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        torch.cuda.synchronize()
        return True, float(torch.cuda.max_memory_allocated())
    except torch.cuda.OutOfMemoryError:
        return False, math.inf
    finally:
        model.zero_grad(set_to_none=True)
        x = y = loss = None  # noqa: F841 - free the probe's tensors before the next try
        torch.cuda.empty_cache()


def shared_batch(batch: int, rt) -> int:
    """Rank 0's batch, broadcast to every process (`batch` is ignored on the others): ranks
    that trained at different batch sizes would run different numbers of steps and hang in
    their collectives."""
    if rt.world <= 1:
        return batch
    import torch
    import torch.distributed as dist

    value = torch.tensor([batch if rt.is_main else 0], dtype=torch.int64,
                         device="cuda" if rt.device == "cuda" else "cpu")
    dist.broadcast(value, 0)
    return int(value.item())


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA (or CPU allocator) out-of-memory error: torch.OutOfMemoryError, as documented."""
    import torch

    return isinstance(exc, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))


def halving_retries(run: Callable[[], object], batch: int, *, rebuild: Callable[[int], None],
                    echo: Callable[[str], None], is_oom: Callable[[BaseException], bool] =
                    is_out_of_memory, tries: int = MAX_OOM_RETRIES):
    """`run()`; when it runs out of memory, halve `batch`, `rebuild(batch)` and run again, at
    most `tries` times and never below the card's minimum; (result, batch)."""
    attempt = 0
    while True:
        try:
            return run(), batch
        except Exception as exc:
            if not is_oom(exc) or attempt >= tries or batch // 2 < MIN_BATCH:
                raise
        # outside the except block: the error's frames (and the tensors they hold) are gone
        attempt, old, batch = attempt + 1, batch, batch // 2
        echo(f"Out of memory in the first epoch at batch {old}: retrying it at batch {batch} "
             f"(retry {attempt} of {tries}).")
        rebuild(batch)
