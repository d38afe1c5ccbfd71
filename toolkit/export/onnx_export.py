"""FP32 ONNX export with a dynamic batch dimension, checked and self-describing.

The graph takes the contract's uint8 NHWC images (toolkit/core/contract.py) and normalises them in
its first ops, so every artifact derived from it (FP16, INT8, TensorRT) does the same.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from ..core.bundle import Bundle
from ..core.errors import RtkError, require
from ..core.files import atomic_path

MIN_OPSET = 17


def export_onnx(bundle: Bundle, opset: int = 18, max_batch: int = 64) -> Path:
    """Export model.pt to model.onnx; the batch dimension is symbolic and verified."""
    import torch

    from ..core.contract import input_spec, with_preprocessing
    from ..train.model import load_bundle_model

    onnx = require("onnx", "onnx")
    require("onnxscript", "onnx")  # the dynamo exporter needs it
    if opset < MIN_OPSET:
        raise RtkError(f"--opset {opset} is too old.", f"Use {MIN_OPSET} or newer (default 18).")
    model = with_preprocessing(load_bundle_model(bundle), bundle.preprocessing)
    crop = bundle.preprocessing.crop
    example = torch.randint(0, 256, (2, crop, crop, 3), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=max(2, max_batch))
    # Runs exported by an older rtk recorded float32 NCHW; the contract is set here for them too.
    bundle.update(input=input_spec(crop, bundle.manifest.input.name))
    inp, out = bundle.manifest.input.name, bundle.manifest.output.name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), input_names=[inp], output_names=[out],
                                    dynamic_shapes=({0: batch},), opset_version=opset,
                                    dynamo=True, verbose=False)
    proto = program.model_proto
    _check_dynamic_batch(proto, inp, out)
    for key, value in (("rtk.classes", json.dumps(bundle.classes)),
                       ("rtk.preprocessing", json.dumps(bundle.preprocessing.to_json())),
                       ("rtk.arch", bundle.manifest.arch)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    path = bundle.path("model.onnx")
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
    return path


def _check_dynamic_batch(proto, inp: str, out: str) -> None:
    for value in list(proto.graph.input) + list(proto.graph.output):
        dim0 = value.type.tensor_type.shape.dim[0]
        if value.name in (inp, out) and not dim0.dim_param:
            raise RtkError(f"The exported {value.name} has a fixed batch size ({dim0.dim_value}).",
                           "This torch version exported a static batch; report it with "
                           "`rtk --debug export`.")


def io_spec(path: str | Path) -> dict:
    """Input/output names, shapes (-1 for symbolic) and dtypes of an ONNX file."""
    onnx = require("onnx", "onnx")
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)

    def describe(values):
        return [{"name": v.name,
                 "dtype": helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 "shape": [d.dim_value if d.dim_value else -1
                           for d in v.type.tensor_type.shape.dim]} for v in values]

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output),
            "opset": opset}
