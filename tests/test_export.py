"""rtk export: FP32/FP16/INT8 ONNX graphs gated against PyTorch; staleness; TensorRT guards."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_user_error

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ONNX_ARTIFACTS = ["model.onnx", "model.fp16.onnx", "model.int8.onnx"]


def test_every_onnx_artifact_is_recorded_trusted_and_gated(exported):
    manifest = json.loads((exported / "manifest.json").read_text())
    for name in ONNX_ARTIFACTS:
        entry = manifest["artifacts"][name]
        assert (exported / name).is_file()
        assert entry["trusted"] is True, entry
        assert entry["parity"]["passed"] is True
        assert entry["parity"]["n"] == manifest["data"]["val_images"]
    assert manifest["artifacts"]["model.onnx"]["parity"]["agreement"] >= 0.999
    assert manifest["artifacts"]["model.onnx"]["parity"]["max_abs_diff"] < 1e-3
    assert manifest["artifacts"]["model.fp16.onnx"]["parent"] == "model.onnx"
    assert [r["artifact"] for r in manifest["export"]["parity"]] == ONNX_ARTIFACTS


def test_onnx_describes_itself(exported):
    manifest = json.loads((exported / "manifest.json").read_text())
    io = manifest["artifacts"]["model.onnx"]["io"]
    assert io["opset"] >= 17
    assert io["inputs"] == [{"name": "input", "dtype": "uint8", "shape": [-1, 32, 32, 3]}]
    assert manifest["input"] == {"name": "input", "dtype": "uint8", "layout": "NHWC",
                                 "shape": [-1, 32, 32, 3]}
    assert io["outputs"] == [{"name": "logits", "dtype": "float32", "shape": [-1, 3]}]
    model = onnx.load(str(exported / "model.onnx"))
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["rtk.classes"]) == ["circle", "square", "stripe"]
    assert json.loads(meta["rtk.preprocessing"])["crop"] == 32


@pytest.mark.parametrize("name", ONNX_ARTIFACTS)
def test_every_onnx_artifact_takes_uint8_images_and_normalises_first(exported, name):
    model = onnx.load(str(exported / name))
    (inp,) = model.graph.input
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [32, 32, 3]  # NHWC, symbolic batch
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    consumers = [n.op_type for n in model.graph.node if inp.name in n.input]
    assert consumers == ["Cast"], consumers  # cast, layout, scale, then the net (TensorRT)


def test_fp16_graph_is_half_inside(exported):
    model = onnx.load(str(exported / "model.fp16.onnx"))
    half = onnx.TensorProto.FLOAT16
    assert sum(t.data_type == half for t in model.graph.initializer) > 10
    casts = [a.i for n in model.graph.node if n.op_type == "Cast" for a in n.attribute]
    assert half in casts  # the uint8 images are cast straight to half


def test_normalisation_in_the_graph_matches_the_training_transform(exported, tiny_data):
    """ONNX on uint8 crops == the PyTorch model on eval_array's normalised floats."""
    import torch

    from toolkit.core.bundle import Bundle
    from toolkit.data.images import eval_array, eval_uint8, open_rgb
    from toolkit.train.model import load_bundle_model

    bundle = Bundle.load(exported)
    images = [open_rgb(p) for p in sorted(tiny_data.rglob("*.*"))[:6]]
    pre = bundle.preprocessing.to_json()  # images.py takes the plain dict (copied into Triton)
    crops = np.stack([eval_uint8(im, pre) for im in images])
    floats = np.stack([eval_array(im, pre) for im in images])
    with torch.inference_mode():
        expected = load_bundle_model(bundle)(torch.from_numpy(floats)).numpy()
    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": crops})
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_int8_graph_is_qdq(exported):
    ops = {n.op_type for n in onnx.load(str(exported / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


@pytest.mark.parametrize("name", ONNX_ARTIFACTS)
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_dynamic_batch(exported, name, batch):
    session = ort.InferenceSession(str(exported / name), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(batch).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    (logits,) = session.run(None, {"input": x})
    assert logits.shape == (batch, 3) and logits.dtype == np.float32
    assert np.isfinite(logits).all()


def test_eval_backends_agree_with_torch(exported, cli):
    results = {}
    for backend in ["torch", "onnxruntime", "onnxruntime-fp16", "onnxruntime-int8"]:
        r = cli("eval", exported, "--backend", backend, "--json")
        assert r.exit_code == 0, r.output
        results[backend] = json.loads(r.stdout)
    assert results["onnxruntime"]["accuracy"] == results["torch"]["accuracy"]
    assert results["onnxruntime-fp16"]["accuracy"] == results["torch"]["accuracy"]


def _damage_classifier(path: Path) -> None:
    """Reverse the rows of the final layer: the graph stays valid, its answers go wrong."""
    model = onnx.load(str(path))
    biggest = None
    for init in model.graph.initializer:
        arr = onnx.numpy_helper.to_array(init)
        if arr.ndim == 2 and 3 in arr.shape:
            biggest = (init, arr)
    init, arr = biggest
    axis = 0 if arr.shape[0] == 3 else 1
    init.CopyFrom(onnx.numpy_helper.from_array(np.flip(arr, axis).copy(), init.name))
    onnx.save(model, str(path))


def test_damaged_artifact_fails_gate_and_is_refused(bundle_copy, cli, monkeypatch):
    from toolkit.export import precision

    real = precision.to_fp16

    def broken_converter(src, dst):
        tool = real(src, dst)
        _damage_classifier(dst)
        return tool

    monkeypatch.setattr(precision, "to_fp16", broken_converter)
    result = cli("export", bundle_copy, "--fp16", "--format", "onnx")
    assert result.exit_code == 3, result.output
    assert "FAIL" in result.output and "model.fp16.onnx" in result.output
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    assert manifest["artifacts"]["model.fp16.onnx"]["trusted"] is False
    assert manifest["artifacts"]["model.onnx"]["trusted"] is True
    page = (bundle_copy / "report.html").read_text()  # refreshed by export, failure included
    assert "<code>model.fp16.onnx</code>" in page and "UNTRUSTED (failed)" in page
    refused = cli("eval", bundle_copy, "--backend", "onnxruntime-fp16")
    assert_user_error(refused, "untrusted")


def test_stale_artifacts_are_refused_after_retraining(exported, tmp_path, cli):
    import torch

    from toolkit.core.bundle import Bundle

    root = Path(shutil.copytree(exported, tmp_path / "run"))
    ckpt = torch.load(root / "model.pt", weights_only=True)
    ckpt["state_dict"]["fc.bias"] += 1.0
    torch.save(ckpt, root / "model.pt")
    assert_user_error(cli("eval", root, "--backend", "onnxruntime"), "model.pt")  # unrecorded change
    Bundle.load(root).record_artifact("model.pt")  # what a new training run records
    for backend in ["onnxruntime", "onnxruntime-fp16", "onnxruntime-int8"]:
        assert_user_error(cli("eval", root, "--backend", backend), "stale", "rtk export")


def test_an_artifact_never_gated_is_refused(exported, tmp_path, cli):
    """An export that stopped between conversion and gate leaves a pending, unusable artifact."""
    from toolkit.core.bundle import Bundle

    root = Path(shutil.copytree(exported, tmp_path / "run"))
    bundle = Bundle.load(root)
    bundle.update_artifact("model.int8.onnx", trusted=False, gate="pending", parity=None)
    bundle.save()
    assert_user_error(cli("eval", root, "--backend", "onnxruntime-int8"), "never checked")
    assert cli("eval", root, "--backend", "onnxruntime").exit_code == 0


def test_torch_amp_backend_agrees_with_eager(exported, cli):
    amp = json.loads(cli("eval", exported, "--backend", "torch-amp", "--json").stdout)
    eager = json.loads(cli("eval", exported, "--backend", "torch", "--json").stdout)
    assert amp["backend"] == "torch-amp" and amp["n"] == eager["n"]
    assert abs(amp["accuracy"] - eager["accuracy"]) <= 1 / eager["n"] + 1e-9


def test_tensorrt_format_without_tensorrt_is_an_error_with_the_command(bundle_copy, cli):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here; this checks the no-TensorRT path")
    result = cli("export", bundle_copy, "--fp16", "--format", "tensorrt")
    assert_user_error(result, "TensorRT", f"rtk export {bundle_copy} --fp16 --format tensorrt")


def test_fp16_export_without_tensorrt_says_where_the_engine_is_built(bundle_copy, cli):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    result = cli("export", bundle_copy, "--fp16")
    assert result.exit_code == 0, result.output
    # the command names the run folder, not export's staging folder inside it
    assert f"rtk export {bundle_copy} --fp16 --format tensorrt" in " ".join(result.output.split())
    assert not (bundle_copy / "model.fp16.plan").exists()


@pytest.mark.tensorrt
def test_tensorrt_engine_builds_and_passes_gate(bundle_copy):
    pytest.importorskip("tensorrt", reason="tensorrt is not installed (pip install 'rtk[gpu]')")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible")
    from toolkit.core.bundle import Bundle
    from toolkit.export import ExportOptions, export

    rows = export(Bundle.load(bundle_copy), ExportOptions(fp16=True, format="all", max_batch=8),
                  echo=lambda *_: None)
    plan = next(r for r in rows if r["artifact"] == "model.fp16.plan")
    assert plan["passed"] and plan["agreement"] >= 0.99
    entry = Bundle.load(bundle_copy).entry("model.fp16.plan")
    assert entry.profile.to_json() == {"input": "input", "min": 1, "opt": 4, "max": 8}
    assert entry.tensorrt_version and entry.compute_capability


REMOVED_TRT_APIS = ["BuilderFlag.FP16", "BuilderFlag.INT8", "set_int8_calibrator",
                    "int8_calibrator", "build_engine(", "max_workspace_size",
                    "platform_has_fast_fp16", "EXPLICIT_BATCH", "execute_async_v2"]


@pytest.mark.parametrize("source", ["toolkit/export/tensorrt.py", "toolkit/backends/tensorrt.py"])
def test_tensorrt_code_uses_no_removed_api(source):
    root = Path(__file__).resolve().parents[1]
    code = "\n".join(line for line in (root / source).read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    code = re.sub(r'"""[\s\S]*?"""', "", code)  # docstrings may name what is avoided
    used = [api for api in REMOVED_TRT_APIS if api in code.replace("build_engine(onnx", "")]
    assert not used, f"{source} uses APIs removed in TensorRT 10/11: {used}"
    assert "build_serialized_network" in code or "execute_async_v3" in code


class _FakeContext:
    """An execution context whose enqueue succeeds or fails as told."""

    def __init__(self, ok: bool):
        self.ok, self.calls = ok, []

    def execute_async_v3(self, stream_handle):
        self.calls.append(stream_handle)
        return self.ok


@pytest.mark.parametrize("ok", [True, False])
def test_a_failed_tensorrt_enqueue_is_an_error_not_garbage_logits(ok):
    """execute_async_v3 returns False when enqueue fails (its output buffer stays unwritten)."""
    from toolkit.backends.tensorrt import enqueue
    from toolkit.core.errors import RtkError

    context = _FakeContext(ok)
    if ok:
        enqueue(context, 1234, 8)
    else:
        with pytest.raises(RtkError, match="failed to enqueue a batch of 8"):
            enqueue(context, 1234, 8)
    assert context.calls == [1234]
