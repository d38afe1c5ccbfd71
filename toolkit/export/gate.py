"""The accuracy gate: every artifact against the PyTorch reference on held-out images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.metrics import parity


@dataclass(frozen=True)
class Tolerances:
    """Defaults from the export issue; each is a CLI flag.

    Reduced precision is judged on the top-1 delta *and* on agreement with PyTorch: a delta
    alone passes a broken graph whenever the reference is itself near chance.
    """

    fp32_agreement: float = 0.999   # fraction of images with the same top-1 as PyTorch
    fp16_delta: float = 0.3         # accuracy points lost at most
    int8_delta: float = 1.0
    fp16_agreement: float = 0.99
    int8_agreement: float = 0.95

    def limits(self, precision: str) -> dict[str, float]:
        if precision == "fp32":
            return {"agreement": self.fp32_agreement}
        if precision == "fp16":
            return {"top1_delta_points": self.fp16_delta, "agreement": self.fp16_agreement}
        return {"top1_delta_points": self.int8_delta, "agreement": self.int8_agreement}


def judge(row: dict[str, Any], precision: str, tol: Tolerances) -> dict[str, Any]:
    """Add `rule`, `passed` and `warnings` to a parity row.

    Agreement is judged on confident flips only (see metrics.parity): an artifact is not
    refused because the reference was torn between two classes. A damaged graph flips
    confident answers too, and still fails.
    """
    limits = tol.limits(precision)
    ok = all(row["confident_agreement"] >= v if m == "agreement" else row[m] <= v
             for m, v in limits.items())
    rule = ", ".join(f"agree>={v:g}" if m == "agreement" else f"delta<={v:g}"
                     for m, v in limits.items())
    return {**row, "precision": precision, "rule": rule, "passed": bool(ok),
            "warnings": resolution_warnings(row["n"], limits)}


def resolution_warnings(n: int, limits: dict[str, float]) -> list[str]:
    """What a held-out set of `n` images cannot resolve: one image moves top-1 by 100/n points."""
    warnings, step = [], 100.0 / max(1, n)
    delta = limits.get("top1_delta_points")
    if delta is not None and step > delta:
        warnings.append(f"{n} held-out images cannot resolve a {delta:g}-point top-1 tolerance "
                        f"(one image is {step:.2f} points); gate on a larger set with --data")
    agree = limits.get("agreement")
    if agree is not None and n * (1 - agree) < 1:
        warnings.append(f"with {n} images a single confident flip breaks the {agree:g} agreement "
                        f"floor (it needs {int(round(1 / (1 - agree)))} images to allow one)")
    return warnings


def measure(bundle, backend_name: str, device: str, *, paths: Sequence[Path], labels: np.ndarray,
            reference: np.ndarray, progress: bool = False) -> dict[str, Any]:
    """Parity of one backend (artifacts opened even if not yet trusted) against `reference`."""
    from ..backends import open_backend
    from ..backends.run import run_backend

    with open_backend(backend_name, bundle, device, trusted_only=False) as backend:
        logits = run_backend(backend, paths, bundle.preprocessing, batch_size=32, progress=progress)
    return {"backend": backend_name, "device": device, **parity(reference, logits, labels)}
