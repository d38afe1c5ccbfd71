"""Fast bias correction of a Q/DQ graph: each quantized convolution's per-channel output mean
put back to the float graph's, over calibration images (as NNCF's post-training default does).

Quantizing a convolution's input and weights shifts the mean of each output channel; the
shift passes through ReLU and adds up layer after layer. It is measured per layer on the
*float* graph's inputs (each layer's own error, not one inherited from upstream) and, since a
convolution is linear, from per-channel means alone: the mean output of channel c moves by
sum_k (sum_ij Wq[c,k,i,j] * E[Q(x)_k] - sum_ij W[c,k,i,j] * E[x_k]), borders aside. The
int32 bias of the layer absorbs minus that shift.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from ..core.errors import require


def _qdq(x: np.ndarray, scale, zero) -> np.ndarray:
    info = np.iinfo(zero.dtype)
    z = zero.astype(np.float64)
    return (np.clip(np.round(x / scale) + z, info.min, info.max) - z) * scale


def _layers(graph, float_graph) -> list[dict]:
    """Quantized Conv/Gemm layers: the float input tensor with its activation scale and zero
    point, the dequantized and the float weights, and the int32 bias with its scale."""
    from onnx import numpy_helper

    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    floats = {i.name: numpy_helper.to_array(i) for i in float_graph.initializer}
    float_nodes = {n.name: n for n in float_graph.node}
    producer = {o: n for n in graph.node for o in n.output}
    layers = []
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
            continue
        dq_x, dq_w, dq_b = (producer.get(name) for name in node.input[:3])
        if not all(d is not None and d.op_type == "DequantizeLinear" for d in (dq_x, dq_w, dq_b)):
            continue
        q_x = producer.get(dq_x.input[0])
        original = float_nodes.get(node.name)
        if q_x is None or q_x.op_type != "QuantizeLinear" or original is None or \
                dq_w.input[0] not in consts or dq_b.input[0] not in consts:
            continue
        w_axis = next((a.i for a in dq_w.attribute if a.name == "axis"), 1)
        attrs = {a.name: a.i for a in node.attribute if a.type == a.INT}
        layers.append({
            "node": node.name, "op": node.op_type, "input": q_x.input[0],
            "x_scale": consts[q_x.input[1]], "x_zero": consts[q_x.input[2]],
            "wq": _dequantize(consts[dq_w.input[0]], consts[dq_w.input[1]],
                              consts[dq_w.input[2]], w_axis),
            "w": floats[original.input[1]], "group": attrs.get("group", 1),
            "trans_b": attrs.get("transB", 0),
            "bias": dq_b.input[0], "bias_scale": consts[dq_b.input[1]]})
    return layers


def _dequantize(q, scale, zero, axis) -> np.ndarray:
    shape = [1] * q.ndim
    if np.ndim(scale):
        shape[axis] = -1
    return (q.astype(np.float64) - np.reshape(zero, shape)) * np.reshape(scale, shape)


def _mean_map(w: np.ndarray, group: int, op: str, trans_b: int) -> np.ndarray:
    """(C_out, C_in) matrix M with E[y_c] = sum_k M[c,k] E[x_k] (kernel summed, groups spread)."""
    if op == "Gemm":
        return w if trans_b else w.T
    summed = w.reshape(w.shape[0], w.shape[1], -1).sum(-1)  # (C_out, C_in / group)
    if group == 1:
        return summed
    out_g, in_g = w.shape[0] // group, w.shape[1]
    full = np.zeros((w.shape[0], in_g * group))
    for g in range(group):
        full[g * out_g:(g + 1) * out_g, g * in_g:(g + 1) * in_g] = summed[g * out_g:(g + 1) * out_g]
    return full


def correct_biases(qdq_path: Path, float_path: Path, input_name: str,
                   batches: Iterable[np.ndarray]) -> int:
    """Rewrite `qdq_path` with corrected int32 biases; returns how many layers were corrected."""
    onnx = require("onnx", "onnx")
    from onnx import numpy_helper

    from .int8_search import run_graph

    model, float_model = onnx.load(str(qdq_path)), onnx.load(str(float_path))
    layers = _layers(model.graph, float_model.graph)
    known = {o for n in float_model.graph.node for o in n.output} | \
        {i.name for i in float_model.graph.input}
    layers = [la for la in layers if la["input"] in known and la["input"] != input_name]
    if not layers:
        return 0
    names = sorted({la["input"] for la in layers})
    for name in names:
        float_model.graph.output.append(onnx.helper.make_tensor_value_info(
            name, onnx.TensorProto.FLOAT, None))
    tapped = qdq_path.with_suffix(".bias-taps.onnx")
    onnx.save(float_model, str(tapped))
    sums: dict[str, list] = {}
    try:
        for images in batches:
            values = dict(zip(names, run_graph(tapped, input_name, images, outputs=names, batch=8)))
            for la in layers:
                x = values[la["input"]].astype(np.float64)
                axes = tuple(i for i in range(x.ndim) if i != 1)
                key = la["node"]
                got = [x.mean(axis=axes), _qdq(x, la["x_scale"], la["x_zero"]).mean(axis=axes)]
                prev = sums.setdefault(key, [0.0, 0.0, 0])
                sums[key] = [prev[0] + got[0], prev[1] + got[1], prev[2] + 1]
    finally:
        tapped.unlink(missing_ok=True)
    inits = {i.name: i for i in model.graph.initializer}
    for la in layers:
        mean_x, mean_qx, n = sums[la["node"]]
        shift = _mean_map(la["wq"], la["group"], la["op"], la["trans_b"]) @ (mean_qx / n) - \
            _mean_map(la["w"].astype(np.float64), la["group"], la["op"], la["trans_b"]) @ (mean_x / n)
        bias = numpy_helper.to_array(inits[la["bias"]]).astype(np.int64)
        fixed = bias - np.round(shift / np.broadcast_to(la["bias_scale"], shift.shape)).astype(np.int64)
        info = np.iinfo(np.int32)
        inits[la["bias"]].CopyFrom(numpy_helper.from_array(
            np.clip(fixed, info.min, info.max).astype(np.int32), la["bias"]))
    onnx.save(model, str(qdq_path))
    return len(layers)
