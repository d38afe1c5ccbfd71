"""model.int8.onnx for a bundle: calibration and probe images, the search, the manifest record."""

from __future__ import annotations

import random
import shutil
import tempfile
from itertools import chain, zip_longest
from pathlib import Path
from typing import Callable

import numpy as np

from ..bundle import Bundle
from ..fileio import atomic_path
from .int8_search import Int8Config, Probe, Search, images_per_second, search
from .precision import prepare_for_int8, to_int8

PROBE_MAX, PROBE_MIN = 512, 64


def stratified_order(bundle: Bundle, seed: int = 0) -> list[tuple[Path, int]]:
    """(path, label) of the training images interleaved class by class (each class shuffled):
    any prefix is balanced."""
    by_class: dict[int, list[str]] = {}
    for rel, label in bundle.split()["train"]:
        by_class.setdefault(label, []).append(rel)
    rng = random.Random(seed)
    for rels in by_class.values():
        rng.shuffle(rels)
    root = Path(bundle.manifest["data"]["train_dir"])
    mixed = chain.from_iterable(zip_longest(*([(root / rel, k) for rel in by_class[k]]
                                               for k in sorted(by_class))))
    return [item for item in mixed if item is not None]


def _load(samples: list[tuple[Path, int]], pre: dict) -> np.ndarray:
    from ..evaluate import batches

    return np.concatenate(list(batches([p for p, _ in samples], pre, 64)))


def _probe(bundle: Bundle, order: list[tuple[Path, int]], reserved: int) -> tuple[Probe, bool]:
    """Training images the calibration never sees (all of them when too few are left)."""
    from .int8_search import _run

    rest = order[reserved:]
    overlap = len(rest) < PROBE_MIN
    samples = (order if overlap else rest)[:PROBE_MAX]
    images = _load(samples, bundle.preprocessing)
    reference = _run(bundle.path("model.onnx"), bundle.manifest["input"]["name"], images)
    return Probe(images, np.array([y for _, y in samples]), reference), overlap


def export_int8(bundle: Bundle, opts, echo: Callable = print, searching: bool = False) -> dict:
    """Write model.int8.onnx: one calibration, or (`searching`, after that one failed its gate)
    the search's choice. Returns its manifest fields."""
    order = stratified_order(bundle)
    first = Int8Config(calib_size=min(opts.calib_size, len(order)))
    name, pre = bundle.manifest["input"]["name"], bundle.preprocessing
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=bundle.root) as tmp:
        work = Path(tmp)
        prepared = prepare_for_int8(bundle.path("model.onnx"), work / "prepared.onnx")

        def quantize(cfg: Int8Config, dst: Path, cache: Path | None) -> dict:
            calib = None
            if cache is None or not cache.is_file():
                images = _load(order[:cfg.calib_size], pre)
                calib = (images[i:i + 16] for i in range(0, len(images), 16))
            return to_int8(prepared, dst, calib, name, opts.int8_scheme, cfg.method,
                           cfg.per_channel, cfg.exclude, cache)

        if not searching:
            echo(f"Calibrating INT8 on {first.calib_size} training images ({first.label()})...")
            with atomic_path(bundle.path("model.int8.onnx")) as out:
                info = quantize(first, out, None)
            return {**info, "calibration_images": first.calib_size,
                    "search": {"mode": opts.int8_search, "trials": [], "chosen": first.label()}}
        max_calib = min(len(order), 4 * first.calib_size)
        probe, overlap = _probe(bundle, order, min(max_calib, 2 * first.calib_size))
        echo(f"  Judging each configuration on {len(probe.labels)} training images"
             f"{' (overlapping the calibration set)' if overlap else ' kept out of calibration'}, "
             f"at half the gate's slack; at most {opts.int8_budget} trials.")
        s = Search(quantize, probe, name, opts.tolerances, work, prepared,
                   max_trials=opts.int8_budget, max_calib=max_calib, echo=echo)
        chosen = search(s, first)
        speed = _speed(s.trials[0], chosen, name, probe.images)
        with atomic_path(bundle.path("model.int8.onnx")) as out:
            shutil.copyfile(chosen["path"], out)
    trials = [{k: v for k, v in t.items() if k not in ("path", "info")} for t in s.trials]
    echo(f"INT8 search: chose {chosen['label']} after {len(trials)} trial(s)"
         + (f"; kept in float: {', '.join(chosen['config']['exclude'])}"
            if chosen["config"]["exclude"] else ""))
    return {**chosen["info"], "calibration_images": chosen["config"]["calib_size"],
            "search": {"mode": opts.int8_search, "budget_trials": opts.int8_budget,
                       "probe_images": len(probe.labels), "probe_overlaps_calibration": overlap,
                       "trials": trials, "chosen": chosen["label"], **speed}}


def _speed(single: dict, chosen: dict, name: str, images: np.ndarray) -> dict:
    """Images/s of the chosen graph against the fully quantized single shot (batch 8)."""
    if not chosen["config"]["exclude"]:
        return {}
    full = images_per_second(single["path"], name, images, 1.5)
    kept = images_per_second(chosen["path"], name, images, 1.5)
    return {"speed_images_per_s": {"all_int8": round(full, 1), "chosen": round(kept, 1)},
            "speed_cost": round(1 - kept / full, 3)}
