"""Accuracy-driven INT8: when one calibration fails, search a bounded space before giving up.

The search is judged on a probe set of *training* images that no calibration ever sees, with
the export gate's own rule at half its slack (agreement with the FP32 graph and top-1 delta;
never loosened); the held-out set is left to the export's gate, which a caller consults a
bounded number of times: a trial it refused is never chosen again, nor one that does no better
on the probe than a refused one, and the next search resumes where this one stopped (so a
refused calibration leads on to the layer-wise fallback). Order, cheapest first: on a CPU whose
int8 products saturate (core.host.SATURATING), ONNX Runtime's documented remedies (the same
graph under session.x64quantprecision, U8U8 products, 7-bit weights) and the first convolution
in float; then calibration method and per-channel weights, a larger calibration set, bias
correction, and layer-wise fallback, which keeps the fewest, most sensitive nodes in float
(ranked by how much of each activation's per-channel signal its quantization destroys,
measured in one pass).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.errors import require
from ..core.metrics import parity
from .gate import Tolerances, judge

METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class Int8Config:
    """One point of the search space."""

    method: str = "minmax"
    per_channel: bool = True
    calib_size: int = 256
    exclude: tuple[str, ...] = ()
    weights: str = "s8"  # s8, or u8: U8U8 products, which VPMADDUBSW never sums in 16 bits
    reduce_range: bool = False  # 7-bit weights: a pair of u8*s7 products fits 16 bits
    x64_precision: bool = False  # session.x64quantprecision: the session's choice, same graph
    bias_correction: bool = False  # each convolution's per-channel output mean put back

    def label(self) -> str:
        kept = f", {len(self.exclude)} node(s) in float" if self.exclude else ""
        extra = "".join(f", {name}" for on, name in (
            (self.weights == "u8", "U8U8"), (self.reduce_range, "7-bit weights"),
            (self.x64_precision, "session.x64quantprecision"),
            (self.bias_correction, "bias-corrected")) if on)
        return (f"{self.method}, {'per-channel' if self.per_channel else 'per-tensor'} weights, "
                f"{self.calib_size} calibration images{extra}{kept}")

    @property
    def session_config(self) -> dict[str, str]:
        """The ONNX Runtime session options this configuration's graph must run with."""
        return {X64_PRECISION: "1"} if self.x64_precision else {}


X64_PRECISION = "session.x64quantprecision"  # ONNX Runtime: U8U8 kernels on x64 without VNNI


@dataclass(frozen=True)
class Probe:
    """Training images (uint8), their labels and the FP32 graph's logits on them."""

    images: np.ndarray
    labels: np.ndarray
    reference: np.ndarray


@dataclass
class Search:
    """Everything a trial needs; `quantize(cfg, dst, cache)` writes one INT8 graph."""

    quantize: Callable[[Int8Config, Path, Path | None], dict]
    probe: Probe
    input_name: str
    tolerances: Tolerances
    work: Path
    prepared: Path  # the float graph that was quantized (for the sensitivity analysis)
    saturating: bool = False  # this CPU's int8 products saturate: try the remedies first
    first_conv: tuple[str, ...] = ()  # the first convolution (it sees the raw pixel range)
    max_trials: int = 12
    max_calib: int = 1024
    echo: Callable = print
    trials: list = field(default_factory=list)
    groups: dict = field(default_factory=dict)  # base config -> its sensitivity ranking

    def run(self, cfg: Int8Config) -> dict:
        """Quantize with `cfg`, judge it on the probe set, remember the result (tried once)."""
        done = next((t for t in self.trials if t["cfg"] == cfg), None)
        if done is not None:
            return done
        start = time.perf_counter()
        graph = replace(cfg, x64_precision=False)
        same = next((t for t in self.trials if t["cfg"] == graph), None) if cfg.x64_precision \
            else None
        if same is not None:  # a session option: the very graph, run another way
            path, info = same["path"], dict(same["info"])
        else:
            path = self.work / f"trial{len(self.trials)}.onnx"
            cache = self.work / f"calib-{cfg.method}-{cfg.calib_size}.json"
            info = self.quantize(graph, path, cache if _has_cache_option() else None)
        info["session_config"] = cfg.session_config
        return self._judge(cfg, path, info, start=start)

    def adopt(self, cfg: Int8Config, path: Path, info: dict) -> dict:
        """Record a graph quantized elsewhere with `cfg` (the single shot) as a trial."""
        return self._judge(cfg, path, info, start=time.perf_counter())

    def ok(self, trial: dict) -> bool:
        """Passed the probe, was not refused by the held-out gate, and did strictly better on
        the probe than every trial the gate refused: a refusal says that a probe score that
        high is not enough (the probe's training images are easier than unseen ones), so a
        configuration that only ties it would spend a held-out look on the same verdict."""
        floors = [probe_score(t) for t in self.trials if refused(t)]
        return (trial["passed"] and not refused(trial)
                and all(probe_score(trial) > floor for floor in floors))

    def _judge(self, cfg: Int8Config, path: Path, info: dict, *, start: float) -> dict:
        logits = run_graph(path, self.input_name, self.probe.images,
                           session_config=cfg.session_config)
        row = judge(parity(self.probe.reference, logits, self.probe.labels), "int8",
                    stricter(self.tolerances))
        trial = {"cfg": cfg, "config": {**asdict(cfg), "exclude": list(cfg.exclude)},
                 "label": cfg.label(),
                 "passed": row["passed"], "agreement": row["agreement"],
                 "confident_agreement": row["confident_agreement"],
                 "top1_delta_points": row["top1_delta_points"],
                 "seconds": round(time.perf_counter() - start, 1), "path": path, "info": info}
        self.trials.append(trial)
        self.echo(f"  INT8 trial {len(self.trials)}: {cfg.label()}: agreement "
                  f"{row['agreement']:.2%}, delta {row['top1_delta_points']:+.2f} pts -> "
                  f"{'PASS' if row['passed'] else 'fail'}")
        return trial

    @property
    def exhausted(self) -> bool:
        return len(self.trials) >= self.max_trials


def refused(trial: dict) -> bool:
    """The held-out gate looked at this trial and refused it."""
    return trial.get("held_out", {}).get("passed") is False


def probe_score(trial: dict) -> tuple[float, float]:
    """How well a trial did on the probe: confident agreement, then the smaller top-1 loss."""
    return trial["confident_agreement"], -trial["top1_delta_points"]


def stricter(tol: Tolerances, share: float = 0.5) -> Tolerances:
    """The gate's INT8 limits with only `share` of their slack: the probe is another sample of
    images than the held-out set, so a configuration that only just passes there may not."""
    return replace(tol, int8_delta=tol.int8_delta * share,
                   int8_agreement=1 - (1 - tol.int8_agreement) * share)


def search(s: Search, first: Int8Config) -> dict:
    """The chosen trial (passing the probe, unrefused, if any did) within `s.max_trials`.

    Called again after the held-out gate refused its choice, it walks the same stages: trials
    already run are remembered (no budget spent), refused ones count as failures, so it goes
    on to the next stage, down to keeping more nodes in float.
    """
    def score(t: dict) -> tuple:
        return (s.ok(t), *probe_score(t))

    best = s.run(first)  # the single shot, which failed the held-out gate before any search
    stages = [remedies(s, first)] if s.saturating else []
    stages.append(lambda b: [replace(first, method=m) for m in METHODS if m != first.method]
                  + [replace(first, per_channel=not first.per_channel)])
    stages.append(lambda b: [replace(b, calib_size=min(2 * b.calib_size, s.max_calib))]
                  if s.max_calib > b.calib_size else [])  # up to twice, as the split allows
    stages.append(lambda b: [] if b.bias_correction else [replace(b, bias_correction=True)])
    for stage in stages:
        for cfg in stage(_base(s, best["cfg"])):
            if s.exhausted:
                return best
            best = max(best, s.run(cfg), key=score)
            if s.ok(best):
                return best
    return _fallback(s, _base(s, best["cfg"]), best, score=score)


def _base(s: Search, cfg: Int8Config) -> Int8Config:
    """`cfg` without the fallback's nodes in float (the first convolution stays if chosen)."""
    return replace(cfg, exclude=cfg.exclude if cfg.exclude == s.first_conv else ())


def remedies(s: Search, first: Int8Config) -> Callable[[Int8Config], list[Int8Config]]:
    """ONNX Runtime's documented remedies for saturating int8 products, then the first
    convolution in float (it multiplies the raw pixel range); cheapest first."""
    def stage(_: Int8Config) -> list[Int8Config]:
        tries = [replace(first, x64_precision=True), replace(first, weights="u8"),
                 replace(first, reduce_range=True)]
        if s.first_conv:
            tries.append(replace(first, exclude=s.first_conv))
        return tries
    return stage


def _fallback(s: Search, base: Int8Config, best: dict, *, score: Callable) -> dict:
    """Keep the top-k most sensitive nodes in float, k = 1, 2, 4...; then the fewest that pass."""
    if base not in s.groups:
        trial = next(t for t in s.trials if t["cfg"] == base)
        s.groups[base] = sensitive_groups(trial["path"], s.prepared, s.input_name,
                                          images=s.probe.images[:8])
        s.echo("  Most sensitive activations: "
               + ", ".join(g["tensor"] for g in s.groups[base][:5]))
    groups = s.groups[base]
    passing, failing_k, k = None, 0, 1
    while k <= len(groups) and not s.exhausted:
        result = s.run(replace(base, exclude=nodes_of(groups[:k], base.exclude)))
        best = max(best, result, key=score)
        if s.ok(result):
            passing = (k, result)
            break
        # doubling, but the last step keeps every group in float rather than jumping past it
        failing_k, k = k, (len(groups) if k < len(groups) < 2 * k else 2 * k)
    if passing is None:
        return best
    low, (high, chosen) = failing_k, passing
    while high - low > 1 and not s.exhausted:  # the fewest groups that still pass
        mid = (low + high) // 2
        result = s.run(replace(base, exclude=nodes_of(groups[:mid], base.exclude)))
        if s.ok(result):
            high, chosen = mid, result
        else:
            low = mid
    return chosen


def nodes_of(groups: list[dict], also: tuple[str, ...] = ()) -> tuple[str, ...]:
    return tuple(sorted({n for g in groups for n in g["nodes"]} | set(also)))


def sensitive_groups(qdq_path: Path, float_path: Path, input_name: str,
                     *, images: np.ndarray) -> list[dict]:
    """Quantized activations ranked by the share of their channels that quantization destroys.

    Each activation of the *float* graph is quantized and dequantized with the scale and zero
    point the INT8 graph gives it, so a tensor's score is its own error, not one inherited from
    layers upstream. The error is measured channel by channel relative to the channel's own
    magnitude and averaged: one per-tensor scale that a few large channels stretch flattens the
    small ones, which an error relative to the whole tensor (SQNR) hides. Each group names the
    nodes to keep in float so that the activation stays unquantized.
    """
    onnx = require("onnx", "onnx")
    from onnx import numpy_helper

    graph = onnx.load(str(qdq_path)).graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consumers: dict[str, list] = {}
    producer: dict[str, str] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        for name in node.output:
            producer[name] = node.name
    quantized = {}  # activation -> (scale, zero point, nodes that keep it in float)
    for q in graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in consts:
            continue
        users = [n.name for dq in consumers.get(q.output[0], []) if dq.op_type == "DequantizeLinear"
                 for n in consumers.get(dq.output[0], [])
                 if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
        nodes = [n for n in [producer.get(q.input[0]), *users] if n]
        quantized[q.input[0]] = (consts[q.input[1]], consts[q.input[2]], nodes)
    if not quantized:
        return []
    names = sorted(quantized)
    model = onnx.load(str(float_path))
    known = {o for n in model.graph.node for o in n.output}
    names = [n for n in names if n in known]
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                     None))
    tapped = qdq_path.with_suffix(".tapped.onnx")
    onnx.save(model, str(tapped))
    try:
        values = dict(zip(names, run_graph(tapped, input_name, images, outputs=names)))
    finally:
        tapped.unlink()
    groups = []
    for name in names:
        scale, zero, nodes = quantized[name]
        info = np.iinfo(zero.dtype)
        x = values[name]
        y = (np.clip(np.round(x / scale) + zero.astype(np.float64), info.min, info.max)
             - zero.astype(np.float64)) * scale
        groups.append({"tensor": name, "score": channel_error(x, y), "nodes": nodes})
    return sorted(groups, key=lambda g: -g["score"])


def channel_error(x: np.ndarray, y: np.ndarray) -> float:
    """Mean over channels of ||y_c - x_c|| / ||x_c||, capped at 1 (silent channels count as exact).

    A channel is silent only at float32 rounding level (1e-6 of the largest): however faint, a
    channel that quantization zeroes is destroyed, and faint is exactly what outliers 1000x
    larger make the informative channels (a 1e-3 cut-off hid them on a model whose outliers
    were at 1000 and its other channels below 1).
    """
    if x.ndim < 2:
        return 0.0
    c = x.shape[1]
    xs = np.moveaxis(x, 1, 0).reshape(c, -1).astype(np.float64)
    ys = np.moveaxis(y, 1, 0).reshape(c, -1).astype(np.float64)
    norm = np.linalg.norm(xs, axis=1)
    live = norm > 1e-6 * max(norm.max(), 1e-30)
    err = np.linalg.norm(ys - xs, axis=1)[live] / norm[live]
    return float(np.minimum(err, 1.0).mean()) if live.any() else 0.0


def _session(path: Path, session_config: dict | None = None):
    ort = require("onnxruntime", "onnx")
    from ..backends.ort import session_options

    return ort.InferenceSession(str(path), sess_options=session_options(config=session_config),
                                providers=["CPUExecutionProvider"])


def run_graph(path: Path, input_name: str, images: np.ndarray, *, outputs=None, batch: int = 32,
              session_config: dict | None = None):
    """Outputs of an ONNX graph on uint8 images, batched (first output unless named)."""
    session = _session(path, session_config)
    chunks = [session.run(outputs, {input_name: images[i:i + batch]})
              for i in range(0, len(images), batch)]
    merged = [np.concatenate([c[j] for c in chunks]) for j in range(len(chunks[0]))]
    return merged if outputs else merged[0]


def images_per_second(paths: dict[str, Path], input_name: str, batch: np.ndarray,
                      *, rounds: int = 4, seconds: float = 0.4,
                      configs: dict[str, dict] | None = None) -> dict[str, float]:
    """Images/s of each graph on one batch (with `configs[key]` session options), interleaved
    round by round (A, B, C, A, B, C...) so all see the same machine load; the median round."""
    sessions = {k: _session(p, (configs or {}).get(k)) for k, p in paths.items()}
    for session in sessions.values():
        session.run(None, {input_name: batch})  # warm-up: allocations, kernel selection
    rates: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for key, session in sessions.items():
            n, start = 0, time.perf_counter()
            while n == 0 or time.perf_counter() - start < seconds:
                session.run(None, {input_name: batch})
                n += len(batch)
            rates[key].append(n / (time.perf_counter() - start))
    return {k: float(np.median(v)) for k, v in rates.items()}


def _has_cache_option() -> bool:
    """onnxruntime >= 1.32 caches calibration ranges: fallback trials then skip calibration."""
    q = require("onnxruntime.quantization", "onnx")
    return "calibration_cache_path" in inspect.signature(q.quantize_static).parameters

