"""Reduced-precision ONNX graphs: FP16 baked into the graph, INT8 as calibrated Q/DQ nodes."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from ..core.errors import require
from ..core.files import atomic_path


def to_fp16(src: Path, dst: Path) -> str:
    """FP16 graph with the uint8 input and FP32 logits kept; ModelOpt AutoCast where installed.

    A transformer's LayerNorms stay FP32: after attention their sums of squares overflow
    half precision, as TensorRT's build warns. It also keeps ONNX Runtime 1.32 from crashing:
    ViT-B/16's graph with half LayerNorms segfaults session creation at ORT_ENABLE_ALL, the
    one with FP32 LayerNorms opens (both probed in a child, 224 px, 2026-12-03)."""
    onnx = require("onnx", "onnx")
    model = onnx.load(str(src))
    keep = list(FP32_TRANSFORMER_OPS) if is_transformer(model.graph) else []
    autocast = _modelopt_autocast()
    if autocast is not None:
        model, tool = autocast(str(src), low_precision_type="fp16", keep_io_types=True,
                               op_types_to_exclude=keep or None), "modelopt-autocast"
    else:
        float16 = require("onnxconverter_common.float16", "onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # per-initializer range warnings; the gate judges
            model = float16.convert_float_to_float16(
                model, keep_io_types=True,
                op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + keep)
        tool = "onnxconverter-common"
        _cast_images_to_half(model)
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp))
    return tool


def _modelopt_autocast():
    """ModelOpt's convert_to_mixed_precision where it imports (modelopt[onnx]), else None: a
    ModelOpt installed for PyTorch alone lacks onnx_graphsurgeon and must not break FP16."""
    if importlib.util.find_spec("modelopt") is None:
        return None
    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError:
        return None
    return convert_to_mixed_precision


def _cast_images_to_half(model) -> None:
    """The converter halves every float tensor but leaves Cast(uint8 images -> float32) as is:
    point that Cast at float16 (exact for 0..255) so the graph type-checks and stays half."""
    from onnx import TensorProto

    images = {i.name for i in model.graph.input
              if i.type.tensor_type.elem_type == TensorProto.UINT8}
    produced = set(images)
    for node in model.graph.node:  # topological order: follow the images through Transpose
        if node.op_type == "Transpose" and node.input[0] in produced:
            produced.update(node.output)
        elif node.op_type == "Cast" and node.input[0] in produced:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16


INT8_SCHEMES = ("cpu", "tensorrt")


def prepare_for_int8(src: Path, dst: Path) -> Path:
    """Shape-inferred, folded copy of `src`: better Q/DQ placement; done once per export."""
    require("onnxruntime.quantization", "onnx")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    return dst


def preprocessing_nodes(graph) -> list[str]:
    """Names of the nodes between the image input and the first convolution or matmul."""
    reached = {i.name for i in graph.input}
    prefix = []
    for node in graph.node:  # topological order
        if node.op_type in ("Conv", "MatMul", "Gemm", "Shape"):  # Shape: the batch size only
            continue
        if any(i in reached for i in node.input):
            prefix.append(node.name)
            reached.update(node.output)
    return prefix


def first_convolution(path: Path) -> tuple[str, ...]:
    """The name of the first Conv node (the one that multiplies the normalised pixels)."""
    onnx = require("onnx", "onnx")
    graph = onnx.load(str(path), load_external_data=False).graph
    return next(((n.name,) for n in graph.node if n.op_type == "Conv"), ())


FP32_TRANSFORMER_OPS = ("LayerNormalization",)

# ONNX Runtime's guidance for transformers: quantize the matrix products with a constant
# weight (the QKV, projection and MLP layers) and keep LayerNorm, Softmax, GELU and the
# attention's activation-by-activation products in float. Their outputs stay float too
# (ONNX Runtime runs DQ -> MatMul as MatMulIntegerToFloat): on ViT-B/16 at 224 px that
# halved the largest logit error against quantized outputs (0.017 against 0.035) at the
# same speed (2.15x against 2.17x FP32, this CPU, 2026-12-03).
TRANSFORMER_OPS = ("MatMul", "Gemm")


def is_transformer(graph) -> bool:
    """A graph (GraphProto) with LayerNormalization: converted by the transformer rules."""
    return any(n.op_type == "LayerNormalization" for n in graph.node)


def activation_products(graph) -> list[str]:
    """MatMul nodes whose second operand is not a weight (attention's Q.K^T and A.V).
    ONNX Runtime's MatMulConstBOnly option covers its QOperator format only, not Q/DQ."""
    weights = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] not in weights]


def to_int8(prepared: Path, dst: Path, calibration: Iterator[np.ndarray] | None, *, input_name: str,
            scheme: str = "cpu", method: str = "minmax", per_channel: bool = True,
            exclude: tuple[str, ...] = (), cache: Path | None = None, weights: str = "s8",
            reduce_range: bool = False) -> dict:
    """Static INT8 in Q/DQ form, int8 symmetric weights, calibrated on real images.

    `prepared` comes from prepare_for_int8. `exclude` names nodes kept in float (layer-wise
    fallback); `cache` (onnxruntime >= 1.32) stores the calibration ranges so trials that
    differ only in `exclude` skip calibration.

    scheme "tensorrt": symmetric int8 activations, as TensorRT's explicit quantization requires.
    ONNX Runtime then keeps every ReLU in float between DQ and Q, so most convolutions stay
    unfused and the graph runs no faster than FP32 on a CPU (measured here: 25.6 vs 23.3
    images/s, ResNet-18 at 224 px). scheme "cpu" (default): asymmetric uint8 activations, which
    let the quantizer absorb the ReLUs and ONNX Runtime fuse QLinearConv (65.7 images/s there).

    `weights` "u8" (U8U8 products) and `reduce_range` (7-bit weights) are ONNX Runtime's
    remedies for x86 CPUs without VNNI, whose u8*s8 pair sums saturate 16 bits.

    A transformer (`is_transformer`) gets the inputs of its constant-weight TRANSFORMER_OPS
    quantized, weights per output channel, and nothing else.
    """
    q = require("onnxruntime.quantization", "onnx")
    symmetric = scheme == "tensorrt"
    methods = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
               "percentile": q.CalibrationMethod.Percentile}

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration or ())

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    extra = {"ActivationSymmetric": symmetric, "WeightSymmetric": True}
    graph = require("onnx", "onnx").load(str(prepared)).graph  # read once for the rules below
    transformer = is_transformer(graph)
    ops = {"op_types_to_quantize": list(TRANSFORMER_OPS)} if transformer else {}
    products = activation_products(graph) if transformer else []
    if transformer:
        extra["OpTypesToExcludeOutputQuantization"] = list(TRANSFORMER_OPS)
    # The contract's normalisation (toolkit/core/contract.py) stays float: quantized, its per-pixel
    # Mul and Add ran as QLinearMul/QLinearAdd at full resolution, 20% of ResNet-50's time here.
    float_prefix = preprocessing_nodes(graph)
    cached = {"calibration_cache_path": str(cache)} if cache is not None else {}
    # The histogram calibrators print progress to stdout, which holds `--json` output.
    with atomic_path(dst) as tmp, contextlib.redirect_stdout(sys.stderr):
        q.quantize_static(
            str(prepared), str(tmp), Reader(), quant_format=q.QuantFormat.QDQ,
            activation_type=q.QuantType.QInt8 if symmetric else q.QuantType.QUInt8,
            weight_type=q.QuantType.QUInt8 if weights == "u8" else q.QuantType.QInt8,
            per_channel=per_channel, reduce_range=reduce_range,
            nodes_to_exclude=[*float_prefix, *products, *exclude], calibrate_method=methods[method],
            extra_options=extra, **ops, **cached)
        require("onnx", "onnx").checker.check_model(str(tmp))
    return {"format": "QDQ", "scheme": scheme,
            "activations": "int8 symmetric" if symmetric else "uint8 asymmetric",
            "weights": (f"{'uint8' if weights == 'u8' else 'int8'}"
                        f"{' 7-bit' if reduce_range else ''} symmetric "
                        f"{'per-channel' if per_channel else 'per-tensor'}"),
            "calibration": method, "kept_float": list(exclude),
            "quantized_ops": list(TRANSFORMER_OPS) if transformer else "all"}
