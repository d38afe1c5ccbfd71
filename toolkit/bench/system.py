"""The environment a benchmark ran in: CPU, GPU, driver, CUDA, library versions, commit."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import time

from ..core import host


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
    """GPU 0 (the host probe) plus the driver version nvidia-smi reports."""
    found = host.gpu()
    if found is None:
        return {"gpu": None}
    driver = None
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"gpu": found["gpu"], "gpu_memory_gib": round(found["memory_gib"], 1),
            "compute_capability": found["compute_capability"], "driver": driver,
            "cuda": found["cuda"]}


def environment() -> dict:
    """Everything needed to judge and reproduce a benchmark run."""
    cores = host.usable_cores()
    libs = ["torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt",
            "tritonclient", "numpy", "rtk"]
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu": cpu_model(), "cpu_cores": cores,
            "platform": platform.platform(), "python": platform.python_version(), **gpu(),
            "versions": {name: v for name in libs if (v := _version(name))},
            "git_commit": host.git_commit()}


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
