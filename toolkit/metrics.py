"""Classification metrics and parity between two sets of logits (NumPy only)."""

from __future__ import annotations

from typing import Any

import numpy as np


def classification(logits: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, top-5, per-class accuracy and confusion matrix."""
    labels = np.asarray(labels)
    n, k = logits.shape
    pred = logits.argmax(axis=1)
    topk = np.argsort(-logits, axis=1)[:, : min(5, k)]
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    support = confusion.sum(axis=1)
    per_class = {c: (float(confusion[i, i] / support[i]) if support[i] else None)
                 for i, c in enumerate(classes)}
    return {
        "n": int(n),
        "accuracy": float((pred == labels).mean()) if n else 0.0,
        "top5": float((topk == labels[:, None]).any(axis=1).mean()) if n else 0.0,
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def weakest(per_class: dict[str, float | None], k: int = 3) -> list[tuple[str, float]]:
    scored = [(c, a) for c, a in per_class.items() if a is not None]
    return sorted(scored, key=lambda ca: ca[1])[:k]


def parity(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """How far a candidate's logits are from the reference's on the same images."""
    ref_pred, cand_pred = reference.argmax(1), candidate.argmax(1)
    return {
        "n": int(len(labels)),
        "reference_top1": float((ref_pred == labels).mean()),
        "top1": float((cand_pred == labels).mean()),
        "top1_delta_points": float(100 * ((ref_pred == labels).mean() - (cand_pred == labels).mean())),
        "agreement": float((ref_pred == cand_pred).mean()),
        "max_abs_diff": float(np.abs(reference.astype(np.float64) - candidate).max()),
    }
