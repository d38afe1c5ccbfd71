"""The accuracy gate: every artifact against the PyTorch reference on held-out images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..metrics import parity


@dataclass(frozen=True)
class Tolerances:
    """Defaults from the export issue; each is a CLI flag."""

    fp32_agreement: float = 0.999   # fraction of images with the same top-1 as PyTorch
    fp16_top1_delta: float = 0.3    # accuracy points lost at most
    int8_top1_delta: float = 1.0

    def rule(self, precision: str) -> tuple[str, float]:
        if precision == "fp32":
            return "agreement", self.fp32_agreement
        return "top1_delta_points", self.fp16_top1_delta if precision == "fp16" else self.int8_top1_delta


def judge(row: dict[str, Any], precision: str, tol: Tolerances) -> dict[str, Any]:
    """Add `rule`, `limit` and `passed` to a parity row."""
    metric, limit = tol.rule(precision)
    passed = row[metric] >= limit if metric == "agreement" else row[metric] <= limit
    return {**row, "precision": precision, "rule": f"{metric} {'>=' if metric == 'agreement' else '<='} "
            f"{limit:g}", "passed": bool(passed)}


def measure(bundle, backend_name: str, device: str, paths: Sequence[Path], labels: np.ndarray,
            reference: np.ndarray, progress: bool = False) -> dict[str, Any]:
    """Parity of one backend (artifacts opened even if not yet trusted) against `reference`."""
    from ..backends import open_backend
    from ..evaluate import run_backend

    with open_backend(backend_name, bundle, device, trusted_only=False) as backend:
        logits = run_backend(backend, paths, bundle.preprocessing, 32, progress)
    return {"backend": backend_name, "device": device, **parity(reference, logits, labels)}
