"""Timing one backend at one batch size: warm-up, repeated windows until stable, percentiles."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


@dataclass(frozen=True)
class Timing:
    """How long and how carefully to time."""

    duration: float = 10.0        # seconds of timed work at most, per (backend, batch size)
    warmup: float = 1.0           # seconds of untimed warm-up (at least 2 calls)
    windows: int = 5              # stable when the last 3 windows agree within `tolerance`
    tolerance: float = 0.05


def _sync(device: str) -> Callable[[], None]:
    if device != "cuda":
        return lambda: None
    import torch

    return torch.cuda.synchronize


def time_calls(fn: Callable[[], Any], images_per_call: int, timing: Timing,
               *, device: str = "cpu") -> dict[str, Any]:
    """Throughput (images/s) and per-call latency percentiles of `fn`."""
    sync = _sync(device)
    end = time.perf_counter() + timing.warmup
    calls = 0
    while calls < 2 or time.perf_counter() < end:
        fn()
        calls += 1
    sync()
    window_s = timing.duration / timing.windows
    latencies: list[float] = []
    rates: list[float] = []
    stop = time.perf_counter() + timing.duration
    while time.perf_counter() < stop:
        start, n = time.perf_counter(), 0
        while n == 0 or time.perf_counter() - start < window_s:
            t0 = time.perf_counter()
            fn()
            sync()
            latencies.append(time.perf_counter() - t0)
            n += 1
        rates.append(n * images_per_call / (time.perf_counter() - start))
        if len(rates) >= 3 and _stable(rates[-3:], timing.tolerance):
            break
    lat_ms = np.asarray(latencies) * 1000
    return {"throughput": float(np.median(rates)), "p50_ms": float(np.percentile(lat_ms, 50)),
            "p90_ms": float(np.percentile(lat_ms, 90)), "p99_ms": float(np.percentile(lat_ms, 99)),
            "calls": len(latencies), "windows": len(rates),
            "stable": len(rates) >= 3 and _stable(rates[-3:], timing.tolerance)}


def _stable(rates: list[float], tolerance: float) -> bool:
    return (max(rates) - min(rates)) / max(1e-9, float(np.median(rates))) <= tolerance
