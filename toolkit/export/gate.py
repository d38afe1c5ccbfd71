"""The accuracy gate: every artifact against the PyTorch reference on held-out images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..metrics import parity


@dataclass(frozen=True)
class Tolerances:
    """Defaults from the export issue; each is a CLI flag.

    Reduced precision is judged on the top-1 delta *and* on agreement with PyTorch: a delta
    alone passes a broken graph whenever the reference is itself near chance.
    """

    fp32_agreement: float = 0.999   # fraction of images with the same top-1 as PyTorch
    fp16_top1_delta: float = 0.3    # accuracy points lost at most
    int8_top1_delta: float = 1.0
    fp16_agreement: float = 0.99
    int8_agreement: float = 0.95

    def limits(self, precision: str) -> dict[str, float]:
        if precision == "fp32":
            return {"agreement": self.fp32_agreement}
        if precision == "fp16":
            return {"top1_delta_points": self.fp16_top1_delta, "agreement": self.fp16_agreement}
        return {"top1_delta_points": self.int8_top1_delta, "agreement": self.int8_agreement}


def judge(row: dict[str, Any], precision: str, tol: Tolerances) -> dict[str, Any]:
    """Add `rule` and `passed` to a parity row: agreement at least, delta at most, its limit."""
    limits = tol.limits(precision)
    ok = all(row[m] >= v if m == "agreement" else row[m] <= v for m, v in limits.items())
    rule = ", ".join(f"agree>={v:g}" if m == "agreement" else f"delta<={v:g}"
                     for m, v in limits.items())
    return {**row, "precision": precision, "rule": rule, "passed": bool(ok)}


def measure(bundle, backend_name: str, device: str, paths: Sequence[Path], labels: np.ndarray,
            reference: np.ndarray, progress: bool = False) -> dict[str, Any]:
    """Parity of one backend (artifacts opened even if not yet trusted) against `reference`."""
    from ..backends import open_backend
    from ..evaluate import run_backend

    with open_backend(backend_name, bundle, device, trusted_only=False) as backend:
        logits = run_backend(backend, paths, bundle.preprocessing, 32, progress)
    return {"backend": backend_name, "device": device, **parity(reference, logits, labels)}
