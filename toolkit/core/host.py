"""Facts about this machine that several stages size themselves by."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def usable_cores() -> int:
    """CPU cores this process may run on (affinity-aware where the OS tells)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def gpu() -> dict | None:
    """GPU 0 as torch sees it (name, memory, compute capability, CUDA); None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {"gpu": props.name, "memory_gib": props.total_memory / 2**30,
            "compute_capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda}


def tensorrt_version() -> str | None:
    """The installed TensorRT release, read from package metadata (no import of tensorrt)."""
    from importlib import metadata

    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def tensorrt_ready() -> str | None:
    """None when TensorRT engines can be built and run here, else why not."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt package is not installed"
    if gpu() is None:
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


def git_commit() -> str | None:
    """The commit of the rtk checkout this code runs from; None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
