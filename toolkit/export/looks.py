"""Held-out looks: how often an INT8 verdict was asked of each held-out set, across runs.

Every verdict the INT8 gate gives on a held-out set leaks a little of it into the choice of
graph; after MAX_LOOKS verdicts a pass says more about the set than about unseen images. So
the count is kept in the manifest per set, keyed by its content (each image's bytes and
label), and survives re-runs, a larger --int8-budget and gating on another CPU kind alike.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

from ..core.bundle import Bundle
from ..core.errors import RtkError
from ..core.files import sha256

MAX_LOOKS = 3


def held_out_key(samples: Sequence[tuple[Path, int]]) -> str:
    """Content hash of a labelled image set: the same images with the same labels, in any
    order and under any folder, give the same key."""
    digests = sorted(f"{sha256(path)}:{label}" for path, label in samples)
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def spent(bundle: Bundle, key: str) -> int:
    """INT8 verdicts already asked of the held-out set `key`."""
    return int(((bundle.manifest.held_out or {}).get(key) or {}).get("int8_looks", 0))


def left(bundle: Bundle, key: str) -> int:
    return max(0, MAX_LOOKS - spent(bundle, key))


def spend(bundle: Bundle, key: str, *, images: int, source: str) -> int:
    """Count one more INT8 verdict on `key`, saved at once in the run directory too (an
    export works on a staged copy): a crash or Ctrl-C after the look does not refund it."""
    n = spent(bundle, key) + 1
    for target in filter(None, (bundle, bundle.origin)):
        record = dict(target.manifest.held_out or {})
        record[key] = {"int8_looks": n, "images": images, "source": source}
        target.update(held_out=record)
        target.save()
    return n


def refuse_when_spent(bundle: Bundle, key: str, *, source: str, run_dir: Path) -> None:
    """An RtkError before any INT8 work when the held-out set has no look left."""
    if left(bundle, key) == 0:
        raise RtkError(
            f"The held-out set ({source}) has given its {MAX_LOOKS} INT8 verdicts: another look "
            "would turn it into a tuning set, and a pass would no longer say how INT8 does on "
            "unseen images.",
            f"Bring a fresh labelled held-out folder the model never saw: rtk export {run_dir} "
            "--int8 --data DIR (a larger --int8-budget would look at the same images again).")
