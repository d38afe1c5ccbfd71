"""Recording the INT8 verdict per CPU kind: a gate row per int8 class, and the fingerprint.

A verdict belongs to the kernels that ran the graph (core.host.int8_class): each row records
the class, the CPU, ONNX Runtime, the session options and threads it was taken with, the
held-out set it looked at and, once measured, INT8's speed against FP32 there. What serving
makes of the rows is core.int8_trust.
"""

from __future__ import annotations

import numpy as np

from ..core import fingerprint
from ..core.bundle import Bundle
from ..core.files import write_text
from ..core.host import int8_class, int8_host

from ..core.int8_trust import FINGERPRINT, INT8, gated_classes

PROBES = 12  # thumbnails of calibration images (never held-out ones), plus fingerprint.NOISE


def record_row(bundle: Bundle, row: dict, *, key: str, look: int) -> None:
    """This host's row for the INT8 graph's verdict `row` (not saved)."""
    entry = bundle.entry(INT8)
    host = int8_host(session_config=entry.session_config)
    verdict = {k: row[k] for k in ("passed", "n", "top1_delta_points", "agreement",
                                   "confident_agreement", "flips_confident", "rule")}
    gates = dict(entry.gates or {})
    gates[host["int8_class"]] = {**verdict, "host": host, "held_out": key, "look": look}
    bundle.update_artifact(INT8, gates=gates, trusted=any(g["passed"] for g in gates.values()))


def record_speed(bundle: Bundle, speed: dict) -> None:
    """INT8's speed against FP32, measured here, on this host's row and the artifact (not saved)."""
    entry = bundle.entry(INT8)
    gates = dict(entry.gates or {})
    cls = int8_class()
    if cls in gates:
        gates[cls] = {**gates[cls], "vs_fp32": speed.get("vs_fp32")}
    bundle.update_artifact(INT8, speed=speed, gates=gates)


def write(bundle: Bundle, probe_images: np.ndarray, *, keep: bool = False) -> None:
    """The fingerprint of the INT8 graph on this host's kernels; `keep` adds this class to the
    logits recorded on other classes (the same graph gated again), else starts afresh."""
    from .int8_search import run_graph

    entry = bundle.entry(INT8)
    path = bundle.path(FINGERPRINT)
    doc = fingerprint.load(path) if keep and path.is_file() else \
        fingerprint.make(probe_images[:PROBES], bundle.preprocessing.crop)
    config = entry.session_config or {}
    logits = run_graph(bundle.path(INT8), bundle.manifest.input.name,
                       fingerprint.probe_inputs(doc), session_config=config)
    fingerprint.add_logits(doc, int8_class(), logits, config)
    write_text(path, fingerprint.dumps(doc))
    bundle.update_artifact(INT8, fingerprint=FINGERPRINT)


def fresh_for_regate(bundle: Bundle) -> bool:
    """The INT8 graph passed on another class and still matches its parents: gate it here
    rather than quantize anew (which would void the other class's verdict)."""
    entry = bundle.manifest.artifact(INT8)
    if entry is None or not gated_classes(entry) or int8_class() in (entry.gates or {}):
        return False
    try:
        bundle.artifact(INT8)
    except Exception:  # changed, stale or missing: quantize anew
        return False
    return True

