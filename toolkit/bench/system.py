"""The environment a benchmark ran in: CPU, GPU, driver, CUDA, library versions, commit."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import time

from ..core.host import usable_cores


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def gpu() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"gpu": None}
    props = torch.cuda.get_device_properties(0)
    driver = None
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}", "driver": driver,
            "cuda": torch.version.cuda}


def environment() -> dict:
    """Everything needed to judge and reproduce a benchmark run."""
    from ..core.bundle import _git_commit

    cores = usable_cores()
    libs = ["torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt",
            "tritonclient", "numpy", "rtk"]
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu": cpu_model(), "cpu_cores": cores,
            "platform": platform.platform(), "python": platform.python_version(), **gpu(),
            "versions": {name: v for name in libs if (v := _version(name))},
            "git_commit": _git_commit()}


def _status_mb(pid: int | str, field: str) -> float | None:
    """A memory field (VmRSS, VmHWM) of /proc/PID/status in MiB; None off Linux."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def rss_mb(pid: int | str = "self") -> float | None:
    """Resident memory of a process in MiB."""
    return _status_mb(pid, "VmRSS")
