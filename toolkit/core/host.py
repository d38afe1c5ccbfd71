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


def package_version(*dists: str) -> str | None:
    """The first of `dists` installed, read from package metadata (nothing is imported)."""
    from importlib import metadata

    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def tensorrt_version() -> str | None:
    """The installed TensorRT release."""
    return package_version("tensorrt", "tensorrt-cu12", "tensorrt-cu13")


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


# ONNX Runtime's x86 int8 kernels: with VNNI (AVX512_VNNI, AVX_VNNI) or AMX a u8*s8 product is
# summed straight into 32 bits; without it (AVX2, AVX-512 core) VPMADDUBSW first adds pairs of
# products in 16 bits, which saturate. A graph gated on one kind may lose points on the other.
INT8_CLASSES = ("x86-vnni", "x86-avx2", "arm64", "unknown")
SATURATING = ("x86-avx2", "unknown")
_VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8", "amx_tile"}


def int8_class(flags: set[str] | None = None, machine: str | None = None) -> str:
    """This CPU's int8 kernel class (see INT8_CLASSES); `flags`/`machine` for recorded hosts."""
    import platform

    machine = (machine or platform.machine()).lower()
    if machine in ("arm64", "aarch64"):
        return "arm64"
    if machine not in ("x86_64", "amd64", "i686", "x86"):
        return "unknown"
    flags = cpu_flags() if flags is None else {f.lower() for f in flags}
    if flags & _VNNI_FLAGS:
        return "x86-vnni"
    if "avx2" in flags:
        return "x86-avx2"
    return "unknown"  # no flags to read: treated as saturating


def cpu_flags() -> set[str]:
    """The CPU's feature flags: /proc/cpuinfo on Linux, sysctl on macOS, else empty."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].lower().split())
    except OSError:
        pass
    try:  # macOS on Intel: leaf-7 features name AVX512VNNI, AVX2...
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.features", "machdep.cpu.leaf7_features"],
                             capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return set()
    names = {f.lower().replace(".", "_") for f in out.split()}
    return names | ({"avx512_vnni"} if "avx512vnni" in names else set())


def cpu_model() -> str:
    """The CPU's model name as the OS reports it ('unknown' where it does not)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def int8_host(threads: int | None = None, session_config: dict | None = None) -> dict:
    """What an INT8 verdict belongs to: kernel class, CPU, ONNX Runtime, session, threads."""
    return {"int8_class": int8_class(), "cpu_model": cpu_model(),
            "onnxruntime": package_version("onnxruntime", "onnxruntime-gpu"),
            "session_config": dict(session_config or {}), "threads": threads or usable_cores()}
