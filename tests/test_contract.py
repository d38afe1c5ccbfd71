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
    from toolkit.bundle import Bundle
    from toolkit.evaluate import batches

    paths = sorted(tiny_data.rglob("*.*"))
    return next(batches(paths, Bundle.load(exported).preprocessing, len(paths)))


@pytest.fixture(scope="module")
def reference(exported, crops):
    from toolkit.backends import open_backend
    from toolkit.bundle import Bundle

    with open_backend("torch", Bundle.load(exported), "cpu") as ref:
        return ref(crops)


def test_the_eval_batches_are_the_contract(crops):
    assert crops.dtype == np.uint8 and crops.shape == (24, 32, 32, 3)
    assert crops.flags["C_CONTIGUOUS"] and 0 < crops.mean() < 255


@pytest.mark.parametrize("name", LOCAL)
def test_backend_takes_uint8_images_and_agrees_with_the_reference(exported, crops, reference, name):
    from toolkit.backends import open_backend
    from toolkit.bundle import Bundle

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
    from toolkit.bundle import Bundle
    from toolkit.errors import RtkError

    x = {"float_nchw": crops.transpose(0, 3, 1, 2).astype(np.float32) / 255,
         "wrong_size": crops[:, :31],
         "float_nhwc": crops.astype(np.float32)}[bad]
    with open_backend(name, Bundle.load(exported), "cpu") as backend:
        with pytest.raises(RtkError, match=r"uint8 batch of shape \(N, 32, 32, 3\)"):
            backend(x)


def test_an_artifact_from_before_the_contract_is_refused_with_a_re_export(exported, tmp_path, cli):
    import shutil

    from conftest import assert_user_error
    from toolkit.bundle import Bundle

    root = shutil.copytree(exported, tmp_path / "old")
    bundle = Bundle.load(root)
    bundle.manifest["artifacts"]["model.onnx"]["io"]["inputs"][0]["dtype"] = "float32"
    bundle.save()
    assert_user_error(cli("eval", root, "--backend", "onnxruntime-int8"), "older rtk",
                      "rtk export")
    assert cli("eval", root, "--backend", "torch").exit_code == 0  # model.pt is unaffected
