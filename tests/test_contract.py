"""The served input contract: every local backend takes uint8 NHWC images and normalises inside."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

# torch-compile is covered by the bench tests; compiling here would double the suite's cost.
LOCAL = ["torch", "torch-amp", "torch-half", "onnxruntime", "onnxruntime-fp16", "onnxruntime-int8"]
# Agreement floors as in the export gate (bf16 models are held to the INT8 floor).
FLOOR = {"torch": 1.0, "onnxruntime": 1.0, "onnxruntime-fp16": 0.99}


@pytest.fixture(scope="module")
def crops(exported, tiny_data):
    """The eval crops of every tiny image, as the contract's uint8 (N, 32, 32, 3) batch."""
    from toolkit.core.bundle import Bundle
    from toolkit.backends.run import batches

    paths = sorted(tiny_data.rglob("*.*"))
    return next(batches(paths, Bundle.load(exported).preprocessing, len(paths)))


@pytest.fixture(scope="module")
def reference(exported, crops):
    from toolkit.backends import open_backend
    from toolkit.core.bundle import Bundle

    with open_backend("torch", Bundle.load(exported), "cpu") as ref:
        return ref(crops)


def test_the_eval_batches_are_the_contract(crops):
    assert crops.dtype == np.uint8 and crops.shape == (24, 32, 32, 3)
    assert crops.flags["C_CONTIGUOUS"] and 0 < crops.mean() < 255


@pytest.mark.parametrize("name", LOCAL)
def test_backend_takes_uint8_images_and_agrees_with_the_reference(exported, crops, reference, name):
    from toolkit.backends import open_backend
    from toolkit.core.bundle import Bundle

    with open_backend(name, Bundle.load(exported), "cpu") as backend:
        logits = backend(crops)
        single = backend(crops[:1])
    assert logits.dtype == np.float32 and logits.shape == (len(crops), 3)
    agreement = (logits.argmax(1) == reference.argmax(1)).mean()
    assert agreement >= FLOOR.get(name, 0.95), (name, agreement)
    np.testing.assert_allclose(single, logits[:1], rtol=0.05, atol=0.05)  # batch-independent


@pytest.mark.parametrize("name", ["torch", "onnxruntime"])
@pytest.mark.parametrize("bad", ["float_nchw", "wrong_size", "float_nhwc"])
def test_backend_refuses_a_batch_outside_the_contract(exported, crops, name, bad):
    from toolkit.backends import open_backend
    from toolkit.core.bundle import Bundle
    from toolkit.core.errors import RtkError

    x = {"float_nchw": crops.transpose(0, 3, 1, 2).astype(np.float32) / 255,
         "wrong_size": crops[:, :31],
         "float_nhwc": crops.astype(np.float32)}[bad]
    with open_backend(name, Bundle.load(exported), "cpu") as backend:
        with pytest.raises(RtkError, match=r"uint8 batch of shape \(N, 32, 32, 3\)"):
            backend(x)


def test_an_artifact_from_before_the_contract_is_refused_with_a_re_export(exported, tmp_path, cli):
    import dataclasses
    import shutil

    from conftest import assert_user_error
    from toolkit.core.bundle import Bundle

    root = shutil.copytree(exported, tmp_path / "old")
    bundle = Bundle.load(root)
    io = bundle.entry("model.onnx").io
    old = dataclasses.replace(io.inputs[0], dtype="float32")  # as an older rtk recorded it
    bundle.update_artifact("model.onnx", io=dataclasses.replace(io, inputs=(old,)))
    bundle.save()
    assert_user_error(cli("eval", root, "--backend", "onnxruntime-int8"), "older rtk",
                      "rtk export")
    assert cli("eval", root, "--backend", "torch").exit_code == 0  # model.pt is unaffected


def uint8_readers(path) -> list[str]:
    """'op_type name' of every node other than Cast or Shape that reads a UINT8 tensor."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph, uint8 = model.graph, onnx.TensorProto.UINT8
    typed = list(graph.input) + list(graph.value_info) + list(graph.output)
    names = {v.name for v in typed if v.type.tensor_type.elem_type == uint8}
    names |= {t.name for t in graph.initializer if t.data_type == uint8}
    return [f"{n.op_type} {n.name}" for n in graph.node
            if n.op_type not in ("Cast", "Shape") and names.intersection(n.input)]


@pytest.fixture(scope="module")
def tensorrt_int8(exported, module_tmp):
    """The `--int8-scheme tensorrt` graph, made by rtk export's own INT8 step."""
    import shutil

    from toolkit.core.bundle import Bundle
    from toolkit.export import ExportOptions
    from toolkit.export.int8 import export_int8

    root = shutil.copytree(exported, module_tmp("trt_int8") / "run")
    bundle = Bundle.load(root)
    export_int8(bundle, ExportOptions(int8=True, int8_scheme="tensorrt", calib_size=16),
                echo=lambda *_: None)
    return bundle.path("model.int8.onnx")


@pytest.mark.parametrize("graph", ["model.onnx", "model.fp16.onnx", "tensorrt int8"])
def test_only_a_cast_reads_the_uint8_images_in_every_tensorrt_bound_graph(exported, tensorrt_int8,
                                                                          graph):
    # TensorRT takes UINT8 only as a network input converted by a Cast (DataType.UINT8 docs).
    path = tensorrt_int8 if graph == "tensorrt int8" else exported / graph
    assert uint8_readers(path) == []


def test_the_uint8_check_finds_a_transpose_before_the_cast(tmp_path):
    """The graph exported before issue 16 (Transpose, then Cast) fails the check above."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Transpose", ["images"], ["t"], name="tr", perm=[0, 3, 1, 2]),
             helper.make_node("Cast", ["t"], ["out"], name="cast", to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "images", TensorProto.UINT8, [1, 2, 2, 3])], [helper.make_tensor_value_info(
            "out", TensorProto.FLOAT, [1, 3, 2, 2])])
    onnx.save(helper.make_model(graph), str(tmp_path / "old.onnx"))
    assert uint8_readers(tmp_path / "old.onnx") == ["Transpose tr"]
