"""Facts about this machine that several stages size themselves by."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """CPU cores this process may run on (affinity-aware where the OS tells)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def tensorrt_ready() -> str | None:
    """None when TensorRT engines can be built and run here, else why not."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt package is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None


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
