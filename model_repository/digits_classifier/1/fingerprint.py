"""An INT8 graph's fingerprint: its logits on a few probe inputs, replayed where it is served.

ONNX Runtime's int8 products are exact integer arithmetic on every CPU except the x86 path
without VNNI, whose 16-bit pair sums saturate; so the same graph replays its logits to float
rounding on the kernels it was gated on, and drifts on kernels that compute something else
(or when another graph was swapped in under the same name). Measured on the digits run's
ResNet-50: 0.0 relative drift between 1 and 2 threads and with session.x64quantprecision on a
VNNI CPU; 0.083 for the same model quantized with 7-bit weights instead.

The probes are thumbnails of training images (never held-out ones), upsampled by repetition,
and a few noise images whose large activations are the ones that saturate; only the 16x16
thumbnails and the logits are stored (kilobytes). This file is also copied into the Triton
classifier's folder, so it needs nothing but numpy and the standard library.
"""

from __future__ import annotations

import base64
import hashlib
import json

import numpy as np

VERSION = 1
THUMB = 16  # thumbnail side; probes are upsampled to the model's crop
NOISE = 4  # noise probes after the thumbnails
RTOL = 5e-3  # relative L2 drift allowed: exact kernels replay at 0.0, another graph at ~0.08


def _pack(a: np.ndarray) -> dict:
    return {"dtype": str(a.dtype), "shape": list(a.shape),
            "data": base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()}


def _unpack(d: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["data"]), dtype=d["dtype"]).reshape(d["shape"])


def thumbnails(images: np.ndarray) -> np.ndarray:
    """16x16 thumbnails (nearest pixel) of uint8 NHWC images."""
    h, w = images.shape[1:3]
    return images[:, (np.arange(THUMB) * h) // THUMB][:, :, (np.arange(THUMB) * w) // THUMB]


def probe_inputs(doc: dict) -> np.ndarray:
    """The probe batch (uint8 NHWC at the model's crop) that `doc`'s logits were taken on."""
    thumbs, crop = _unpack(doc["thumbnails"]), int(doc["crop"])
    up = (np.arange(crop) * THUMB) // crop
    images = thumbs[:, up][:, :, up]
    size = int(doc.get("noise", NOISE)) * crop * crop * 3
    noise = np.frombuffer(hashlib.shake_256(b"rtk-fingerprint").digest(size), np.uint8)
    return np.concatenate([images, noise.reshape(-1, crop, crop, 3)])


def make(images: np.ndarray, crop: int) -> dict:
    """A fingerprint document without logits yet: the probes are taken from `images`."""
    return {"version": VERSION, "crop": int(crop), "noise": NOISE, "rtol": RTOL,
            "thumbnails": _pack(thumbnails(images)), "logits": {}}


def add_logits(doc: dict, int8_class: str, logits: np.ndarray, session_config: dict) -> dict:
    """Record the logits the graph gives on `int8_class` kernels (with its session options)."""
    doc["logits"][int8_class] = {"session_config": dict(session_config),
                                 "values": _pack(np.asarray(logits, np.float32))}
    return doc


def drift(reference: np.ndarray, logits: np.ndarray) -> tuple[float, int]:
    """(relative L2 drift, probes whose top-1 changed where the reference was not near a tie)."""
    reference, logits = np.asarray(reference, np.float64), np.asarray(logits, np.float64)
    rel = float(np.linalg.norm(logits - reference) / max(np.linalg.norm(reference), 1e-12))
    top2 = np.sort(reference, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-3 * max(float(np.abs(reference).max()), 1e-12)
    flips = int(((reference.argmax(1) != logits.argmax(1)) & clear).sum())
    return rel, flips


def replay(doc: dict, run, int8_class: str) -> str | None:
    """None when `run` (uint8 images -> logits) reproduces the logits recorded for
    `int8_class`, else why not."""
    entry = doc["logits"].get(int8_class)
    if entry is None:
        return f"the fingerprint records no logits for {int8_class}"
    rel, flips = drift(_unpack(entry["values"]), run(probe_inputs(doc)))
    if rel > float(doc.get("rtol", RTOL)) or flips:
        return (f"its logits on the {len(_unpack(doc['thumbnails'])) + int(doc.get('noise', NOISE))} "
                f"fingerprint probes drift {rel:.2%} from those recorded on {int8_class} "
                f"(limit {float(doc.get('rtol', RTOL)):.2%}; {flips} top-1 changed)")
    return None


def load(path) -> dict:
    with open(path) as f:
        return json.load(f)


def dumps(doc: dict) -> str:
    return json.dumps(doc, indent=1)
