"""model.int8.onnx for a bundle: calibration and probe images, the search, the manifest record."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.bundle import Bundle
from ..core.files import atomic_path
from ..core.manifest import Preprocess
from .int8_search import Int8Config, Probe, Search, images_per_second, search
from .looks import MAX_LOOKS, left, spent
from .precision import prepare_for_int8, to_int8

PROBE_MAX, PROBE_MIN = 512, 64
CALIB_FLOOR = 128  # calibrates ResNet-50 about as well as 256; below it the probe gives way
BIAS_IMAGES = 128  # calibration images the bias correction averages over
FEW_X = 2.0  # an INT8 graph under this speed-up over FP32 buys little


@dataclass(frozen=True)
class Split:
    """How the training images are shared: calibration, its growth, the search's probe."""

    total: int
    calib: int  # the first calibration's images: order[:calib]
    grow: int  # more calibration images a larger-calibration trial may add: order[calib:calib+grow]
    probe: int  # the search's judges, never calibrated on: order[calib+grow:][:probe]

    def describe(self, held_out: int | None = None) -> str:
        more = f" (+{self.grow} for a larger-calibration trial)" if self.grow else ""
        gate = f"; the held-out gate's {held_out} images are separate" if held_out else ""
        return (f"INT8 images: {self.total} training images split into {self.calib} for "
                f"calibration{more} and {self.probe} that judge each configuration and are "
                f"never calibrated on{gate}.")


def plan_split(total: int, calib_size: int) -> Split:
    """Calibration gives way to the probe (down to CALIB_FLOOR, or half a tiny set): a probe
    that overlaps calibration flatters the method calibrated on it, Percentile most of all."""
    probe_floor = min(PROBE_MIN, total // 2)
    calib = min(calib_size, max(min(CALIB_FLOOR, calib_size), total - PROBE_MAX))
    calib = max(1, min(calib, total - probe_floor))
    grow = min(calib, max(0, total - calib - PROBE_MAX))
    return Split(total, calib, grow, min(PROBE_MAX, total - calib - grow))


def stratified_order(bundle: Bundle, seed: int = 0) -> list[tuple[Path, int]]:
    """(path, label) of the training images interleaved class by class (each class shuffled):
    any prefix is balanced."""
    from ..data.loaders import round_robin

    root = Path(bundle.manifest.data.train_dir)
    return [(root / rel, k) for rel, k in round_robin(bundle.split()["train"], seed)]


def _load(samples: list[tuple[Path, int]], pre: Preprocess) -> np.ndarray:
    from ..backends.run import batches

    return np.concatenate(list(batches([p for p, _ in samples], pre, 64)))


def calibration_images(bundle: Bundle, n: int) -> np.ndarray:
    """The first `n` calibration images (training images, never held-out ones)."""
    return _load(stratified_order(bundle)[:n], bundle.preprocessing)


def _probe(bundle: Bundle, order: list[tuple[Path, int]], split: Split) -> Probe:
    """The probe's training images, their labels and the FP32 graph's logits on them."""
    from .int8_search import run_graph

    samples = order[split.calib + split.grow:][:split.probe]
    images = _load(samples, bundle.preprocessing)
    reference = run_graph(bundle.path("model.onnx"), bundle.manifest.input.name, images)
    return Probe(images, np.array([y for _, y in samples]), reference)


class Quantizer:
    """Quantizes the bundle's prepared FP32 graph with one configuration (calibration cached)."""

    def __init__(self, bundle: Bundle, opts, work: Path):
        self.order = stratified_order(bundle)
        self.split = plan_split(len(self.order), opts.calib_size)
        # search off: no probe is needed, so the calibration takes all it was asked for
        calib = self.split.calib if opts.int8_search == "auto" else min(opts.calib_size,
                                                                         len(self.order))
        self.first = Int8Config(calib_size=calib)
        self.bundle, self.opts = bundle, opts
        self.name, self.pre = bundle.manifest.input.name, bundle.preprocessing
        self.prepared = prepare_for_int8(bundle.path("model.onnx"), work / "prepared.onnx")
        self._loaded: dict[int, np.ndarray] = {}

    def __call__(self, cfg: Int8Config, dst: Path, cache: Path | None) -> dict:
        calib = None
        if cache is None or not cache.is_file():
            images = self._images(cfg.calib_size)
            calib = (images[i:i + 16] for i in range(0, len(images), 16))
        info = to_int8(self.prepared, dst, calib, input_name=self.name, scheme=self.opts.int8_scheme,
                       method=cfg.method, per_channel=cfg.per_channel, exclude=cfg.exclude,
                       cache=cache, weights=cfg.weights, reduce_range=cfg.reduce_range)
        if cfg.bias_correction:
            from .bias_correction import correct_biases

            images = self._images(min(cfg.calib_size, BIAS_IMAGES))
            info["bias_corrected_layers"] = correct_biases(
                dst, self.prepared, self.name, (images[i:i + 16] for i in range(0, len(images), 16)))
        return info

    def _images(self, n: int) -> np.ndarray:
        if n not in self._loaded:
            self._loaded = {n: _load(self.order[:n], self.pre)}  # one set in memory at a time
        return self._loaded[n]


def export_int8(bundle: Bundle, opts, echo: Callable = print) -> dict:
    """Write model.int8.onnx with one calibration; returns its manifest fields."""
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=bundle.root) as tmp:
        q = Quantizer(bundle, opts, Path(tmp))
        if opts.int8_search == "auto":
            echo(q.split.describe())
        echo(f"Calibrating INT8 on {q.first.calib_size} training images ({q.first.label()})...")
        with atomic_path(bundle.path("model.int8.onnx")) as out:
            info = q(q.first, out, None)
    return {**info, "kept_float_nodes": 0, "calibration_images": q.first.calib_size,
            "search": {"mode": opts.int8_search, "trials": [], "chosen": q.first.label(),
                       "held_out_looks": 1}, "session_config": {}}


def search_int8(bundle: Bundle, opts, gate, *, first_row: dict, echo: Callable = print) -> str | None:
    """After the single shot failed the held-out gate: search, consult the gate while the
    held-out set has looks left (looks.MAX_LOOKS in all, across runs), keep the best graph.
    Returns None if it passed, else why not."""
    from ..core.host import SATURATING, int8_class
    from .precision import first_convolution

    artifact = "model.int8.onnx"
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=bundle.root) as tmp:
        work = Path(tmp)
        q = Quantizer(bundle, opts, work)
        made = bundle.entry(artifact).to_json()  # to_int8's fields, replayed into the trial
        probe = _probe(bundle, q.order, q.split)
        cls = int8_class()
        echo(f"  {q.split.describe(first_row['n'])}")
        echo(f"  Judging each configuration on those {len(probe.labels)} images at half the "
             f"gate's slack; at most {opts.int8_budget} trials, {left(bundle, gate.key)} "
             f"held-out look(s) left of {MAX_LOOKS}. This CPU's int8 class: {cls}"
             + (" (saturating products: ONNX Runtime's remedies first)" if cls in SATURATING else ""))
        s = Search(q, probe, q.name, opts.tolerances, work, q.prepared,
                   saturating=cls in SATURATING, first_conv=first_convolution(q.prepared),
                   max_trials=opts.int8_budget, max_calib=q.split.calib + q.split.grow, echo=echo)
        single = work / "single.onnx"
        shutil.copyfile(bundle.path(artifact), single)
        first = s.adopt(q.first, single, {k: made[k] for k in ("format", "scheme", "activations",
                                                                 "weights", "calibration",
                                                                 "kept_float", "quantized_ops")
                                                if k in made})
        first["held_out"] = _verdict(first_row)
        looks, in_place = 1, first  # this export's looks; the graph on disk, its verdict
        reserve = 1 if getattr(opts, "qat", False) else 0  # a look kept for the QAT graph
        while left(bundle, gate.key) > reserve:
            chosen = search(s, q.first)
            if not s.ok(chosen):
                break  # nothing new passed the probe within the budget: no look to spend
            row = _look(bundle, gate, chosen, echo=echo)
            looks, in_place = looks + 1, chosen
            if row["passed"]:
                break
        judged = [t for t in s.trials if "held_out" in t]
        final = max(judged, key=lambda t: (t["held_out"]["passed"], t["held_out"]["score"]))
        # Trials are listed in creation order, not look order (bisection creates a midpoint
        # after the trial it started from), so compare with what is on disk.
        if final is not in_place:  # the best look was not the last: put it back, its verdict too
            _place(bundle, final)
            gate.record(artifact, final["held_out"]["row"])
        speed = int8_speed(bundle, single, final["path"], echo=echo,
                           session_config=final["cfg"].session_config)
    _record(bundle, opts, s, final=final, looks=looks, speed=speed, total=spent(bundle, gate.key))
    echo(f"INT8 search: {'chose' if final['held_out']['passed'] else 'nothing passed; best was'} "
         f"{final['label']} after {len(s.trials)} trial(s) and {looks} held-out look(s) "
         f"({spent(bundle, gate.key)} of {MAX_LOOKS} on this held-out set)"
         + (f"; kept in float: {', '.join(final['cfg'].exclude)}" if final["cfg"].exclude else ""))
    return None if final["held_out"]["passed"] else _failure(
        s, final, spent(bundle, gate.key), opts=opts, split=q.split)


def _look(bundle: Bundle, gate, trial: dict, *, echo: Callable) -> dict:
    """Put the trial's graph in place and ask the held-out gate (one look)."""
    _place(bundle, trial)
    row = gate.check("model.int8.onnx", "onnxruntime-int8", "int8")
    trial["held_out"] = _verdict(row)
    echo(f"  Held-out look {row['look']}/{MAX_LOOKS}: {trial['label']}: top-1 delta "
         f"{row['top1_delta_points']:+.2f} pts, agreement {row['agreement']:.2%} "
         f"({row['flips_confident']} confident flips) -> {'PASS' if row['passed'] else 'fail'}")
    return row


def _place(bundle: Bundle, trial: dict) -> None:
    """The trial's graph as model.int8.onnx, recorded as not yet gated."""
    from .onnx_export import io_spec

    with atomic_path(bundle.path("model.int8.onnx")) as out:
        shutil.copyfile(trial["path"], out)
    bundle.record_artifact("model.int8.onnx", parent="model.onnx", trusted=False, gate="pending",
                           precision="int8", io=io_spec(bundle.path("model.int8.onnx")),
                           **trial["info"])


def _verdict(row: dict) -> dict:
    return {"passed": row["passed"], "top1_delta_points": row["top1_delta_points"],
            "agreement": row["agreement"], "confident_agreement": row["confident_agreement"],
            "flips_confident": row["flips_confident"],
            "score": (row["confident_agreement"], -row["top1_delta_points"]), "row": row}


def _record(bundle: Bundle, opts, s: Search, *, final: dict, looks: int, speed: dict,
            total: int) -> None:
    """The chosen (or best refused) graph's manifest fields: search, looks, nodes in float."""
    trials = [{k: v for k, v in t.items() if k not in ("cfg", "path", "info")} for t in s.trials]
    for t in trials:
        if "held_out" in t:
            t["held_out"] = {k: v for k, v in t["held_out"].items() if k not in ("row", "score")}
    from .cpu_gate import record_speed

    record_speed(bundle, speed)
    bundle.update_artifact(
        "model.int8.onnx", **final["info"], kept_float_nodes=len(final["cfg"].exclude),
        calibration_images=final["cfg"].calib_size,
        search={"mode": opts.int8_search, "budget_trials": opts.int8_budget,
                "split": asdict(s.quantize.split),
                "probe_images": len(s.probe.labels), "probe_overlaps_calibration": False,
                "trials": trials, "chosen": final["label"], "held_out_looks": looks,
                "held_out_looks_on_set": total, "max_held_out_looks": MAX_LOOKS})
    bundle.save()


def _failure(s: Search, best: dict, looks: int, *, opts, split: Split) -> str:
    """Why nothing passed, the best graph's held-out numbers and the next thing to try."""
    h = best["held_out"]
    said = (f"INT8: no configuration passed the held-out gate ({len(s.trials)} of "
            f"{opts.int8_budget} trials, {looks} of {MAX_LOOKS} held-out looks). Best tried: "
            f"{best['label']}: top-1 delta {h['top1_delta_points']:+.2f} pts, agreement "
            f"{h['agreement']:.2%}, {h['flips_confident']} confident flips.")
    if looks >= MAX_LOOKS:  # first: a re-run with more budget would look at this set again
        step = ("bring a fresh labelled held-out folder the model never saw: --data DIR (this "
                f"set has given {looks} INT8 verdicts; more budget would look at it again)")
    elif not getattr(opts, "qat", False):  # post-training quantization has had its chance
        step = (f"quantization-aware training: --qat (a short fine-tune; or raise the trial "
                f"budget: --int8-budget {2 * opts.int8_budget})")
    elif s.exhausted:
        step = f"raise the trial budget: --int8-budget {2 * opts.int8_budget}"
    elif split.calib < opts.calib_size or split.probe < PROBE_MAX:
        step = (f"a larger data set: its {split.total} training images were too few to give "
                f"calibration {opts.calib_size} images and the probe {PROBE_MAX}; or gate on a "
                "larger held-out set with --data DIR")
    else:
        step = f"calibrate on more images: --calib-size {2 * (split.calib + split.grow)}"
    return f"{said} Next: {step}."


def int8_speed(bundle: Bundle, single: Path, chosen: Path, *, echo: Callable = print,
               session_config: dict | None = None) -> dict:
    """Images/s at batch 8 of FP32, the single-shot INT8 and the chosen INT8 graph, measured
    interleaved in one run; the ratios are what keeping nodes in float cost."""
    crop = bundle.preprocessing.crop
    batch = np.random.default_rng(0).integers(0, 256, (8, crop, crop, 3), dtype=np.uint8)
    paths = {"fp32": bundle.path("model.onnx"), "single_shot_int8": single}
    if chosen != single or session_config:
        paths["int8"] = chosen
    rates = images_per_second(paths, bundle.manifest.input.name, batch,
                              configs={"int8": session_config or {}})
    rates.setdefault("int8", rates["single_shot_int8"])
    vs_fp32 = rates["int8"] / rates["fp32"]
    out = {"batch": 8, "images_per_s": {k: round(v, 1) for k, v in rates.items()},
           "vs_single_shot_int8": round(rates["int8"] / rates["single_shot_int8"], 3),
           "vs_fp32": round(vs_fp32, 3)}
    echo(f"INT8 speed (ONNX Runtime CPU, batch 8, interleaved): {vs_fp32:.2f}x FP32, "
         f"{out['vs_single_shot_int8']:.2f}x the single-shot INT8 graph.")
    if vs_fp32 < FEW_X:
        out["note"] = f"INT8 buys little on this model: {vs_fp32:.2f}x FP32 (under {FEW_X:g}x)"
        echo(f"Note: {out['note']}.")
    return out
