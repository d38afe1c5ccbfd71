"""The environment a benchmark ran in: CPU, GPU, driver, CUDA, library versions, commit."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import time
from pathlib import Path

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


BUSY_CORES = 0.25  # other processes' CPU use above which a measurement is flagged as busy


def _jiffies(path: str, fields: slice) -> int:
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return 0
    if path.endswith("/proc/stat"):
        values = text.splitlines()[0].split()[1:]
        return sum(int(v) for i, v in enumerate(values) if i not in (3, 4))  # not idle, iowait
    return sum(int(v) for v in text.rsplit(")", 1)[-1].split()[fields])


def _ours() -> list[str]:
    """This process and the local Triton server's processes (their work is the measurement)."""
    pids = ["self"]
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith(("tritonserver", "triton_python_b")):
            pids.append(entry.name)
    return pids


class LoadMeter:
    """CPU time that processes other than this one and the local Triton server used while a
    measurement ran (from /proc: cores busy with other work), and the load average."""

    def __enter__(self) -> "LoadMeter":
        self.pids = _ours()
        self.t0, self.busy0, self.ours0 = time.monotonic(), self._busy(), self._own()
        self.result: dict = {}
        return self

    @staticmethod
    def _busy() -> int:
        return _jiffies("/proc/stat", slice(None))

    def _own(self) -> int:  # utime, stime, cutime, cstime: fields 14-17 of /proc/PID/stat
        return sum(_jiffies(f"/proc/{pid}/stat", slice(11, 15)) for pid in self.pids)

    def __exit__(self, *exc) -> None:
        wall = max(1e-6, time.monotonic() - self.t0)
        tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        other = max(0, (self._busy() - self.busy0) - (self._own() - self.ours0)) / tick / wall
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        self.result = {"other_cores_busy": round(other, 2), "loadavg_1min": load,
                       "busy": other > BUSY_CORES}
