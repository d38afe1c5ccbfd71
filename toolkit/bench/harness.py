"""Timing one backend at one batch size: warm-up, windows until stable (stability.py), percentiles."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .stability import Stability, Window, summarize, until_stable


@dataclass(frozen=True)
class Timing:
    """How long and how carefully to time: windows of `duration / stability.max_windows`
    seconds until the stability rule holds, so `duration` bounds a point's timed work."""

    duration: float = 10.0        # seconds of timed work at most, per (backend, batch size)
    warmup: float = 1.0           # seconds of untimed warm-up (at least 2 calls)
    stability: Stability = field(default_factory=Stability)

    @property
    def window_s(self) -> float:
        return self.duration / max(self.stability.windows, self.stability.max_windows)


def _sync(device: str) -> Callable[[], None]:
    if device != "cuda":
        return lambda: None
    import torch

    return torch.cuda.synchronize


def time_calls(fn: Callable[[], Any], images_per_call: int, timing: Timing,
               *, device: str = "cpu") -> dict[str, Any]:
    """Throughput (images/s), per-call latency percentiles of `fn`, and the stability verdict."""
    sync = _sync(device)
    end = time.perf_counter() + timing.warmup
    calls = 0
    while calls < 2 or time.perf_counter() < end:
        fn()
        calls += 1
    sync()

    def window() -> Window:
        start, latencies = time.perf_counter(), []
        while not latencies or time.perf_counter() - start < timing.window_s:
            t0 = time.perf_counter()
            fn()
            sync()
            latencies.append((time.perf_counter() - t0) * 1000)
        return Window(len(latencies) * images_per_call, time.perf_counter() - start, latencies)

    windows = until_stable(window, timing.stability)
    return {**summarize(windows, timing.stability), "calls": sum(len(w.latencies_ms) for w in windows)}
