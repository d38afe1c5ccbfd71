"""Classification metrics and parity between two sets of logits (NumPy only)."""

from __future__ import annotations

from typing import Any

import numpy as np


def classification(logits: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy (mean per-class recall), top-5, per-class accuracy and
    confusion matrix."""
    labels = np.asarray(labels)
    n, k = logits.shape
    pred = logits.argmax(axis=1)
    topk = np.argsort(-logits, axis=1)[:, : min(5, k)]
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    support = confusion.sum(axis=1)
    per_class = {c: (float(confusion[i, i] / support[i]) if support[i] else None)
                 for i, c in enumerate(classes)}
    recalls = [a for a in per_class.values() if a is not None]
    return {
        "n": int(n),
        "accuracy": float((pred == labels).mean()) if n else 0.0,
        "balanced_accuracy": float(np.mean(recalls)) if recalls else 0.0,
        "top5": float((topk == labels[:, None]).any(axis=1).mean()) if n else 0.0,
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def weakest(per_class: dict[str, float | None], k: int = 3) -> list[tuple[str, float]]:
    scored = [(c, a) for c, a in per_class.items() if a is not None]
    return sorted(scored, key=lambda ca: ca[1])[:k]


TIE_MARGIN = 0.05  # reference top-1 minus top-2 softmax probability below which a flip is a tie


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the class axis (float64)."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def parity(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray,
           *, tie_margin: float = TIE_MARGIN) -> dict[str, float]:
    """How far a candidate's logits are from the reference's on the same images.

    The top-1 delta comes with a 95% confidence interval (paired, normal approximation), and
    the flips of top-1 are split: a flip where the reference itself hesitated (top-2 within
    `tie_margin` in probability) says little about the artifact, a confident flip says a lot.
    """
    ref_pred, cand_pred = reference.argmax(1), candidate.argmax(1)
    n = int(len(labels))
    diff = (ref_pred == labels).astype(np.float64) - (cand_pred == labels)
    half_width = 196.0 * diff.std(ddof=1) / np.sqrt(n) if n > 1 else float("inf")
    top2 = np.sort(softmax(reference), axis=1)[:, -2:] if reference.shape[1] > 1 else None
    margin = top2[:, 1] - top2[:, 0] if top2 is not None else np.ones(n)
    flips = ref_pred != cand_pred
    confident = int((flips & (margin >= tie_margin)).sum())
    return {
        "n": n,
        "reference_top1": float((ref_pred == labels).mean()),
        "top1": float((cand_pred == labels).mean()),
        "top1_delta_points": float(100 * diff.mean()),
        "top1_delta_ci95": [float(100 * diff.mean() - half_width),
                            float(100 * diff.mean() + half_width)],
        "agreement": float(1 - flips.mean()),
        "confident_agreement": float(1 - confident / max(1, n)),
        "flips_near_tie": int(flips.sum()) - confident,
        "flips_confident": confident,
        "tie_margin": tie_margin,
        "max_abs_diff": float(np.abs(reference.astype(np.float64) - candidate).max()),
    }
