"""Measurements above the noise: windows until k in a row agree (perf_analyzer's rule), and
an interleaved comparison whose speedup comes with an interval.

perf_analyzer measures in windows and calls a point stable when the throughput and the
latency of its last 3 windows are each within 10% of their mean (`--stability-percentage`),
giving up after 10 (`--max-trials`). rtk uses the same rule, both numbers settable, for the
local backends (`rtk bench`), the served ensemble and `rtk tune`; an unstable point keeps its
numbers but is marked, and nothing picks it as a winner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np


@dataclass(frozen=True)
class Stability:
    """How many consecutive windows must agree, how closely, and how many windows at most."""

    windows: int = 3
    percent: float = 10.0
    max_windows: int = 5


@dataclass
class Window:
    """One measurement window: images done, its wall time and each call's latency (ms)."""

    images: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def mean_ms(self) -> float:
        return float(np.mean(self.latencies_ms)) if self.latencies_ms else float("nan")


def spread(values: Sequence[float]) -> float:
    """The largest deviation from the mean, in percent of the mean."""
    mean = float(np.mean(values))
    return float(np.max(np.abs(np.asarray(values) - mean)) / mean * 100) if mean > 0 else float("inf")


def is_stable(windows: Sequence[Window], rule: Stability) -> bool:
    """The last `rule.windows` windows agree in throughput and mean latency within the rule."""
    last = list(windows)[-rule.windows:]
    if len(last) < rule.windows or any(not w.latencies_ms for w in last):
        return False
    return (spread([w.rate for w in last]) <= rule.percent
            and spread([w.mean_ms for w in last]) <= rule.percent)


def until_stable(measure: Callable[[], Window], rule: Stability) -> list[Window]:
    """Measure windows until the rule holds or `rule.max_windows` were taken."""
    windows: list[Window] = []
    while len(windows) < max(rule.windows, rule.max_windows):
        windows.append(measure())
        if is_stable(windows, rule):
            break
    return windows


def summarize(windows: Sequence[Window], rule: Stability) -> dict:
    """Throughput (mean of the last k windows' rates, as perf_analyzer reports), latency
    percentiles over those windows, and whether they met the rule."""
    last = list(windows)[-rule.windows:]
    lat = np.concatenate([np.asarray(w.latencies_ms, float) for w in last]) if last else np.zeros(0)
    stable = is_stable(windows, rule)
    out = {"throughput": float(np.mean([w.rate for w in last])) if last else None,
           "windows": len(windows), "stable": stable,
           "spread_pct": round(spread([w.rate for w in last]), 1) if last else None}
    for q in (50, 90, 99):
        out[f"p{q}_ms"] = float(np.percentile(lat, q)) if lat.size else None
    if not stable:
        out["unstable"] = (f"unstable: the last {len(last)} of {len(windows)} windows spread "
                           f"{out['spread_pct']}% (rule: {rule.windows} within {rule.percent:g}%)")
    return out


@dataclass(frozen=True)
class Comparison:
    """Per-round ratios of a candidate's throughput to the baseline's, measured interleaved."""

    ratios: tuple[float, ...]
    confidence: float = 0.9

    @property
    def median(self) -> float:
        return float(np.median(self.ratios))

    def interval(self) -> tuple[float, float]:
        """A bootstrap interval of the median ratio (seeded: the same rounds give the same
        interval); with fewer than 3 rounds, the range of the rounds."""
        r = np.asarray(self.ratios, float)
        if r.size < 3:
            return float(r.min()), float(r.max())
        rng = np.random.default_rng(0)
        medians = np.median(rng.choice(r, size=(2000, r.size), replace=True), axis=1)
        tail = (1 - self.confidence) / 2 * 100
        return float(np.percentile(medians, tail)), float(np.percentile(medians, 100 - tail))

    def measurable_gain(self) -> bool:
        """True when the whole interval lies above 1."""
        return self.interval()[0] > 1.0


def interleaved(measure: Callable[[object], float], candidates: Sequence, baseline,
                *, rounds: int) -> dict:
    """Each round measures the baseline and every candidate once, in turn, so a busy moment
    falls on all of them; returns per candidate its Comparison against the baseline."""
    ratios: dict = {c: [] for c in candidates}
    for _ in range(rounds):
        base = measure(baseline)
        for c in candidates:
            ratios[c].append(measure(c) / base if base > 0 else 0.0)
    return {c: Comparison(tuple(r)) for c, r in ratios.items()}
