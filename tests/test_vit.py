"""The card's upgrade paths: a Vision Transformer through finetune, export (FP32, FP16, INT8),
every ONNX backend, rtk triton, a real Triton server, bench and report; ViT-B/16's size rule;
ResNet-101.

The end-to-end run uses a tiny torchvision VisionTransformer (2 blocks, 32 channels, 16 px
patches) registered through `toolkit.train.archs.register`, the path every --arch takes.
ViT-B/16 itself is trained once, at 64 px, as a smoke test.
"""

from __future__ import annotations

import json
import logging
import signal
import time

import numpy as np
import pytest

from conftest import TINY_TRAIN, assert_user_error, popen_rtk

TINY_VIT = "vit_tiny_test"


def _tiny_vit(image_size):
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=image_size or 32, patch_size=16, num_layers=2,
                             num_heads=2, hidden_dim=32, mlp_dim=64)


@pytest.fixture(scope="module", autouse=True)
def registered():
    from toolkit.train import archs

    archs.register(TINY_VIT, _tiny_vit, patch_size=16)
    yield
    archs._CUSTOM.pop(TINY_VIT, None)


def _train(cli, data, out, *extra):
    args = [a if a != "resnet18" else TINY_VIT for a in TINY_TRAIN]
    result = cli("finetune", data, "--out", out, *args, *extra)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def vit_run(tiny_data, module_tmp):
    """A tiny ViT, fine-tuned and exported to FP32, FP16 and INT8 ONNX (logs captured)."""
    from click.testing import CliRunner

    from toolkit.cli import main

    def cli(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    root = module_tmp("vit") / "run"
    trained = _train(cli, tiny_data, root)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    try:
        exported = cli("export", root, "--fp16", "--int8")
    finally:
        logging.getLogger().removeHandler(handler)
    assert exported.exit_code == 0, exported.output
    return root, trained.output, exported.output, records


def test_vit_trains_with_the_transformer_recipe(vit_run):
    from toolkit.core.bundle import Bundle

    root, trained, _, _ = vit_run
    manifest = Bundle.load(root).manifest
    assert manifest.arch == TINY_VIT and manifest.preprocessing.crop == 32
    assert manifest.config["label_smoothing"] == 0.1  # the anchors' ViT fine-tuning default


def test_vit_exports_every_precision_and_each_passes_its_gate(vit_run):
    from toolkit.core.bundle import Bundle

    root, _, output, _ = vit_run
    bundle = Bundle.load(root)
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx"):
        entry = bundle.entry(name)
        assert entry.trusted and entry.gate == "passed", (name, output)


def test_vit_int8_quantizes_the_matrix_products_only(vit_run):
    """ONNX Runtime's transformer rule: the inputs of MatMul/Gemm with constant weights in
    int8, their outputs float; LayerNorm, Softmax, GELU (Erf) and the attention's
    activation products in float; no per-channel axis aimed at a LayerNorm weight."""
    import onnx

    root, _, _, records = vit_run
    graph = onnx.load(str(root / "model.int8.onnx")).graph
    producer = {out: n for n in graph.node for out in n.output}
    weights = {i.name for i in graph.initializer}

    def dequantized(name):
        node = producer.get(name)
        return node is not None and node.op_type == "DequantizeLinear"

    def constant(name):  # a weight: an initializer, or the DequantizeLinear of one
        node = producer.get(name)
        return name in weights or (node is not None and node.op_type == "DequantizeLinear"
                                   and node.input[0] in weights)

    quantized = [n for n in graph.node if any(dequantized(i) for i in n.input)]
    kinds = {n.op_type for n in quantized}
    assert kinds and kinds <= {"MatMul", "Gemm"}, kinds
    for node in graph.node:
        if node.op_type in ("LayerNormalization", "Softmax", "Erf"):
            assert not any(dequantized(i) for i in node.input), node.name
        if node.op_type == "MatMul" and any(dequantized(i) for i in node.input):
            assert constant(node.input[1]), f"{node.name}: an activation-by-activation product"
    consumers = {i: n for n in graph.node for i in n.input}
    for node in quantized:  # outputs stay float: DQ -> MatMul runs as MatMulIntegerToFloat
        assert node.output[0] not in consumers or \
            consumers[node.output[0]].op_type != "QuantizeLinear", node.name
    assert not [r for r in records if "out-of-range" in r.getMessage()]


def test_vit_fp16_keeps_layernorm_in_float(vit_run):
    import onnx
    from onnx import TensorProto

    root, _, _, _ = vit_run
    model = onnx.shape_inference.infer_shapes(onnx.load(str(root / "model.fp16.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    halves = [n for n in model.graph.node if n.op_type == "MatMul"
              and types.get(n.output[0]) == TensorProto.FLOAT16]
    assert norms and halves  # the products run in half, the norms do not:
    assert all(types.get(n.output[0]) == TensorProto.FLOAT for n in norms)


def test_vit_runs_on_every_onnx_backend(vit_run, cli):
    root = vit_run[0]
    results = {}
    for backend in ("torch", "onnxruntime", "onnxruntime-fp16", "onnxruntime-int8"):
        r = cli("eval", root, "--backend", backend, "--json")
        assert r.exit_code == 0, r.output
        results[backend] = json.loads(r.stdout)
    assert results["onnxruntime"]["accuracy"] == results["torch"]["accuracy"]
    assert results["onnxruntime-fp16"]["n"] == results["torch"]["n"] > 0


def test_vit_bench_and_report(vit_run, cli, tmp_path):
    root = vit_run[0]
    out = tmp_path / "bench"
    r = cli("bench", root, "--backends", "torch,onnxruntime-int8", "--batch-sizes", "1",
            "--duration", "0.2", "--max-windows", "2", "--stable-windows", "2", "--out", out)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "results.json").read_text())
    assert report["arch"] == TINY_VIT
    assert {row["backend"] for row in report["results"]} >= {"torch", "onnxruntime-int8"}
    r = cli("report", root)
    assert r.exit_code == 0, r.output
    assert TINY_VIT in (root / "report.html").read_text()


@pytest.mark.triton
@pytest.mark.slow
def test_vit_is_served_by_a_real_triton_server(vit_run, cli, tmp_path):
    pytest.importorskip("tritonclient.http")
    from toolkit.backends import open_backend
    from toolkit.backends.run import run_backend, validation_samples
    from toolkit.core.bundle import Bundle
    from toolkit.triton.server import free_port

    bundle = Bundle.load(vit_run[0])
    repo = tmp_path / "repo"
    r = cli("triton", bundle.root, "--repo", repo, "--name", "vit", "--platform", "python")
    assert r.exit_code == 0, r.output
    ports = {p: free_port() for p in ("http", "grpc", "metrics")}
    proc = popen_rtk(["serve", repo, "--http-port", ports["http"], "--grpc-port", ports["grpc"],
                      "--metrics-port", ports["metrics"], "--quiet"])
    try:
        deadline, seen = time.monotonic() + 120, ""
        while "Press Ctrl-C to stop." not in seen:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("rtk serve did not become ready:\n" + seen + proc.stderr.read())
            seen += proc.stdout.readline()
        images = [p for p, _ in validation_samples(bundle)][:2]
        with open_backend("triton", bundle, url=f"127.0.0.1:{ports['http']}",
                          protocol="http", send_bytes=False) as served, \
                open_backend("onnxruntime", bundle) as local:
            got = run_backend(served, images, bundle.preprocessing)
            want = run_backend(local, images, bundle.preprocessing)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


# -- ViT-B/16 and ResNet-101, as a user would type them ----------------------------------------

def test_a_size_that_is_not_a_whole_number_of_patches_is_refused_before_the_data_is_read(
        cli, tmp_path):
    result = cli("finetune", tmp_path / "not-scanned", "--arch", "vit_b_16", "--image-size", "60",
                 "--out", tmp_path / "run")
    assert_user_error(result, "--image-size 60", "multiple of 16", "48 or 64")
    assert "not-scanned" not in result.output


def test_pretrained_position_embeddings_are_interpolated_to_the_new_grid(tmp_path):
    import torch

    from toolkit.train.model import build_model

    source = _tiny_vit(32)  # "pretrained" at 32 px: a 2 x 2 grid
    torch.save(source.state_dict(), tmp_path / "w.pt")
    model = build_model(TINY_VIT, 3, str(tmp_path / "w.pt"), image_size=64)
    embedding = model.encoder.pos_embedding
    assert embedding.shape == (1, 1 + 4 * 4, 32)
    torch.testing.assert_close(embedding[:, :1], source.encoder.pos_embedding[:, :1])  # class token
    grid = embedding[0, 1:].reshape(4, 4, 32)
    assert not torch.equal(grid[0, 0], grid[3, 3])  # interpolated, not one repeated vector
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3)


def test_layer_decay_scales_each_block_below_the_head():
    from toolkit.core.errors import RtkError
    from toolkit.train.archs import layer_decay_groups
    from toolkit.train.model import build_model

    model = build_model(TINY_VIT, 3, "none", image_size=32)
    groups = layer_decay_groups(model, 0.5)
    scales = [scale for _, scale in groups]
    assert scales == [0.125, 0.25, 0.5, 1.0]  # embeddings, block 0, block 1, norm + head
    head = {id(p) for p in model.heads.parameters()}
    assert head <= {id(p) for p in groups[-1][0]}
    assert sum(len(ps) for ps, _ in groups) == len(list(model.parameters()))
    with pytest.raises(RtkError, match="Vision Transformer"):
        layer_decay_groups(build_model("resnet18", 3, "none"), 0.5)


def test_label_smoothing_defaults_follow_the_architecture():
    from toolkit.train.config import TrainConfig, resolve

    def smoothing(**kw):
        return resolve(TrainConfig(data_dir="d", out="o", **kw), 100, "cpu").label_smoothing

    assert smoothing(arch="vit_b_16") == 0.1
    assert smoothing(arch="resnet50") == 0.0
    assert smoothing(arch="vit_b_16", label_smoothing=0.0) == 0.0  # as given


def test_layer_decay_replaces_the_flat_backbone_multiplier():
    from toolkit.train.config import TrainConfig, resolve

    def mult(**kw):
        cfg = TrainConfig(data_dir="d", out="o", arch="vit_b_16", weights="imagenet", **kw)
        return resolve(cfg, 100, "cpu").backbone_lr_mult

    assert mult() == 0.1  # pretrained: the backbone at a tenth of --lr
    assert mult(layer_decay=0.65) == 1.0  # the blocks' own rates instead
    assert mult(layer_decay=0.65, backbone_lr_mult=0.5) == 0.5  # as given


def test_the_advice_names_the_option_that_takes_it():
    from toolkit.train import presets

    assert "--arch vit_b_16" in " ".join(presets.preset_for(6_000).notes)
    assert "--arch vit_b_16" in " ".join(presets.preset_for(60_000).notes)
    history = [{"epoch": 1, "train_accuracy": 0.4, "val_accuracy": 0.4,
                "val_balanced_accuracy": 0.4}]
    text = " ".join(presets.diagnose(history, 5e-5, "resnet50"))
    assert "--arch resnet101" in text and "--arch vit_b_16" in text
    text = " ".join(presets.diagnose(history, 5e-5, "resnet101"))
    assert "--arch resnet101" not in text and "--arch vit_b_16" in text


@pytest.mark.slow
def test_vit_b_16_fine_tunes_at_64_px(tiny_data, tmp_path, cli):
    from toolkit.core.bundle import Bundle

    args = ["--arch", "vit_b_16", "--weights", "none", "--image-size", "64", "--epochs", "1",
            "--batch-size", "4", "--device", "cpu", "--no-progress"]
    result = cli("finetune", tiny_data, "--out", tmp_path / "vit", *args)
    assert result.exit_code == 0, result.output
    bundle = Bundle.load(tmp_path / "vit")
    assert bundle.manifest.arch == "vit_b_16" and bundle.preprocessing.crop == 64
    from toolkit.train.model import load_bundle_model

    assert load_bundle_model(bundle).encoder.pos_embedding.shape[1] == 1 + 4 * 4


@pytest.mark.slow
def test_resnet101_fine_tunes(tiny_data, tmp_path, cli):
    args = [a if a != "resnet18" else "resnet101" for a in TINY_TRAIN]
    from toolkit.core.bundle import Bundle
    from toolkit.train.model import load_bundle_model

    result = cli("finetune", tiny_data, "--out", tmp_path / "r101", *args)
    assert result.exit_code == 0, result.output
    bundle = Bundle.load(tmp_path / "r101")
    assert bundle.manifest.arch == "resnet101"
    assert len(load_bundle_model(bundle).layer3) == 23  # ResNet-101's depth, not ResNet-50's 6


def test_layer_decay_reaches_the_optimizer(tiny_data, tmp_path, cli):
    """--layer-decay 0.5 on the tiny ViT: four depths, each at half the rate of the one above,
    with no flat backbone multiplier on top; the weight-decay split is kept."""
    import torch

    from toolkit.core.bundle import Bundle

    _train(cli, tiny_data, tmp_path / "run", "--layer-decay", "0.5", "--lr", "1e-4")
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    initial = sorted({g["initial_lr"] for g in state["optimizer"]["param_groups"]})
    assert initial == pytest.approx([1.25e-5, 2.5e-5, 5e-5, 1e-4])
    assert {g["weight_decay"] for g in state["optimizer"]["param_groups"]} == {0.0, 0.05}
    recipe = Bundle.load(tmp_path / "run").manifest.recipe
    assert "layer-wise lr decay 0.5" in recipe["transformer"]
