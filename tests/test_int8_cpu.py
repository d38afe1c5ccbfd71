"""INT8 trust per CPU kind: the class probe, the remedies, the fingerprint, the held-out looks."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_user_error

pytest.importorskip("onnxruntime")

# /proc/cpuinfo flag lines of real CPUs, cut to what matters and a few neighbours
FLAGS = {
    "x86-vnni": "fpu sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni",  # Cascade Lake
    "x86-vnni-client": "fpu sse4_2 avx avx2 fma avx_vnni",  # Alder Lake: AVX-VNNI only
    "x86-amx": "avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8",  # Sapphire Rapids
    "x86-avx2": "fpu sse4_2 avx avx2 fma bmi2",  # Zen 2 EPYC
    "x86-avx512": "avx2 avx512f avx512dq avx512cd avx512bw avx512vl",  # Skylake-SP: no VNNI
}


@pytest.mark.parametrize("flags,machine,expected", [
    (FLAGS["x86-vnni"], "x86_64", "x86-vnni"),
    (FLAGS["x86-vnni-client"], "x86_64", "x86-vnni"),
    (FLAGS["x86-amx"], "x86_64", "x86-vnni"),
    (FLAGS["x86-avx2"], "x86_64", "x86-avx2"),
    (FLAGS["x86-avx512"], "x86_64", "x86-avx2"),  # AVX-512 without VNNI saturates too
    ("fp asimd asimddp sve", "aarch64", "arm64"),
    ("", "x86_64", "unknown"),  # no flags to read: treated as saturating
    ("", "riscv64", "unknown"),
])
def test_the_int8_class_probe_on_recorded_cpus(flags, machine, expected):
    from toolkit.core.host import SATURATING, int8_class

    assert int8_class(set(flags.split()), machine) == expected
    assert (expected in SATURATING) == (expected in ("x86-avx2", "unknown"))


def test_inspect_prints_this_hosts_int8_class(tiny_data, cli):
    from toolkit.core.host import int8_class

    result = cli("inspect", tiny_data)
    assert result.exit_code == 0 and f"CPU int8 class {int8_class()}" in result.output


# -- each remedy for saturating int8 products reaches ONNX Runtime -----------------------------

@pytest.fixture(scope="module")
def quantized(exported, module_tmp):
    """The exported tiny bundle's prepared FP32 graph, quantized by each remedy."""
    from toolkit.core.bundle import Bundle
    from toolkit.export.int8 import calibration_images
    from toolkit.export.precision import first_convolution, prepare_for_int8, to_int8

    bundle, work = Bundle.load(exported), module_tmp("remedies")
    prepared = prepare_for_int8(bundle.path("model.onnx"), work / "prepared.onnx")
    images = calibration_images(bundle, 16)
    made = {}
    for name, kw in {"base": {}, "u8": {"weights": "u8"}, "rr": {"reduce_range": True},
                     "first": {"exclude": first_convolution(prepared)}}.items():
        made[name] = work / f"{name}.onnx"
        to_int8(prepared, made[name], iter([images]), input_name="input", **kw)
    return made, prepared, images


def _weights(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    dq_inputs = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return {k: v for k, v in consts.items() if k in dq_inputs and v.ndim == 4}  # conv weights


def test_u8u8_and_seven_bit_weights_reach_the_quantizer(quantized):
    made, _, _ = quantized
    base, u8, rr = (_weights(made[k]) for k in ("base", "u8", "rr"))
    assert base and all(w.dtype == np.int8 for w in base.values())
    assert max(int(np.abs(w.astype(int)).max()) for w in base.values()) > 64
    assert u8 and all(w.dtype == np.uint8 for w in u8.values())  # U8U8 products
    assert rr and max(int(np.abs(w.astype(int)).max()) for w in rr.values()) <= 64  # 7-bit


def test_the_first_convolution_can_stay_in_float(quantized):
    import onnx

    made, prepared, _ = quantized
    from toolkit.export.precision import first_convolution

    (first,) = first_convolution(prepared)
    graph = onnx.load(str(made["first"])).graph
    producer = {o: n for n in graph.node for o in n.output}
    conv = next(n for n in graph.node if n.name == first)
    assert conv.input[1] not in producer  # its float weights, straight from the initializer
    others = [n for n in graph.node if n.op_type == "Conv" and n.name != first]
    assert others and all(producer[n.input[1]].op_type == "DequantizeLinear" for n in others)


def test_the_session_option_reaches_every_session_that_runs_the_graph(exported, tmp_path):
    from toolkit.backends import open_backend
    from toolkit.core.bundle import Bundle
    from toolkit.export.int8_search import X64_PRECISION, Int8Config, _session

    cfg = Int8Config(x64_precision=True)
    assert cfg.session_config == {X64_PRECISION: "1"} and Int8Config().session_config == {}
    root = Path(shutil.copytree(exported, tmp_path / "run"))
    session = _session(root / "model.int8.onnx", cfg.session_config)  # the search and the gate
    assert session.get_session_options().get_session_config_entry(X64_PRECISION) == "1"
    bundle = Bundle.load(root)  # a graph that needs it records it: eval, predict, bench get it
    bundle.update_artifact("model.int8.onnx", session_config=cfg.session_config)
    bundle.save()
    with open_backend("onnxruntime-int8", Bundle.load(root), trusted_only=False) as backend:
        assert backend.session.get_session_options().get_session_config_entry(X64_PRECISION) == "1"


def test_on_a_saturating_cpu_the_search_tries_the_remedies_first(tmp_path):
    from toolkit.export.gate import Tolerances
    from toolkit.export.int8_search import Int8Config, Search, search

    class Scripted(Search):
        def run(self, cfg):
            done = next((t for t in self.trials if t["cfg"] == cfg), None)
            if done is None:
                done = {"cfg": cfg, "label": cfg.label(), "passed": cfg.reduce_range,
                        "confident_agreement": 0.9 + 0.05 * cfg.reduce_range,
                        "top1_delta_points": 0.5}
                self.trials.append(done)
            return done

    first = Int8Config(calib_size=16)
    s = Scripted(None, None, "input", Tolerances(), tmp_path, tmp_path, saturating=True,
                 first_conv=("conv0",), max_trials=20, echo=lambda *_: None)
    chosen = search(s, first)
    assert chosen["cfg"] == replace(first, reduce_range=True)
    assert [t["cfg"] for t in s.trials] == [first, replace(first, x64_precision=True),
                                            replace(first, weights="u8"),
                                            replace(first, reduce_range=True)]
    vnni = Scripted(None, None, "input", Tolerances(), tmp_path, tmp_path, saturating=False,
                    first_conv=("conv0",), max_trials=3, echo=lambda *_: None)
    search(vnni, first)
    assert all(not (t["cfg"].x64_precision or t["cfg"].weights == "u8") for t in vnni.trials)


def test_bias_correction_puts_a_convolutions_channel_means_back(tmp_path):
    """What bias correction promises is layer-local: a quantized convolution's per-channel
    output mean, over the calibration images, put back to the float convolution's. Checked
    where it is exact: a 1x1 convolution (no borders) behind a float prefix (the contract's
    normalisation stays float, so both graphs feed it the same values). On a whole network
    the logits' mean moved towards float on one tiny model and away on the next."""
    import onnxruntime as ort
    import torch

    from toolkit.export.bias_correction import correct_biases
    from toolkit.export.precision import prepare_for_int8, to_int8

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 1)

        def forward(self, x):
            return self.conv(x * 2.0 + 0.5)  # Mul, Add: the float prefix

    torch.manual_seed(0)
    x = torch.rand(32, 3, 8, 8)
    src = tmp_path / "net.onnx"
    torch.onnx.export(Net().eval(), (x,), str(src), input_names=["input"], output_names=["out"],
                      opset_version=18, dynamo=False,
                      dynamic_axes={"input": {0: "batch"}, "out": {0: "batch"}})
    prepared = prepare_for_int8(src, tmp_path / "prepared.onnx")
    images = x.numpy()
    to_int8(prepared, tmp_path / "q.onnx", iter([images]), input_name="input")
    fixed = tmp_path / "bc.onnx"
    shutil.copyfile(tmp_path / "q.onnx", fixed)
    assert correct_biases(fixed, prepared, "input", [images]) == 1
    assert _weights(fixed).keys() == _weights(tmp_path / "q.onnx").keys()  # biases only

    def means(path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"input": images})[0].mean(axis=(0, 2, 3))

    want = means(prepared)
    before = np.abs(means(tmp_path / "q.onnx") - want).mean()
    after = np.abs(means(fixed) - want).mean()
    assert after < 0.1 * before, (after, before)


# -- the gate row, the fingerprint and the looks ----------------------------------------------

def test_the_int8_gate_row_records_the_cpu_and_the_fingerprint_replays(exported):
    from toolkit.backends import open_backend
    from toolkit.core.bundle import Bundle
    from toolkit.core.host import int8_class

    entry = Bundle.load(exported).entry("model.int8.onnx")
    row = entry.gates[int8_class()]
    assert set(row["host"]) == {"int8_class", "cpu_model", "onnxruntime", "session_config",
                                "threads"}
    assert row["look"] == 1 and len(row["held_out"]) == 64 and row["vs_fp32"] > 0
    doc = json.loads((exported / entry.fingerprint).read_text())
    assert int8_class() in doc["logits"] and (exported / entry.fingerprint).stat().st_size < 64_000
    if entry.trusted:
        with open_backend("onnxruntime-int8", Bundle.load(exported)):
            pass  # replays without drift on the kernels it was gated on


def _swap_in_another_int8_graph(path: Path) -> None:
    """Another INT8 graph under the same name: the last layer's weight scales doubled."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
          and numpy_helper.to_array(inits[n.input[0]]).ndim == 2]
    scale = inits[dq[-1].input[1]]
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 2, scale.name))
    onnx.save(model, str(path))


def test_a_swapped_int8_graph_is_refused_by_the_int8_backend(exported, tmp_path, cli):
    root = Path(shutil.copytree(exported, tmp_path / "run"))
    from toolkit.core.bundle import Bundle

    if not Bundle.load(root).entry("model.int8.onnx").trusted:
        pytest.skip("the tiny INT8 graph did not pass its gate on this CPU")
    _swap_in_another_int8_graph(root / "model.int8.onnx")
    bundle = Bundle.load(root)  # re-recorded as if rtk had made it: only the fingerprint can tell
    bundle.update_artifact("model.int8.onnx", sha256=__import__("toolkit.core.files", fromlist=[
        "sha256"]).sha256(root / "model.int8.onnx"))
    bundle.save()
    result = cli("eval", root, "--backend", "onnxruntime-int8")
    assert_user_error(result, "not served on this CPU", "drift", "rtk export")


def test_target_cpu_it_was_not_gated_on_serves_fp32_and_says_why(exported, tmp_path, cli):
    from toolkit.core.bundle import Bundle
    from toolkit.core.int8_trust import gated_classes

    entry = Bundle.load(exported).entry("model.int8.onnx")
    other = "x86-avx2" if "x86-avx2" not in gated_classes(entry) else "x86-vnni"
    result = cli("triton", exported, "--repo", tmp_path / "r", "--kind", "cpu",
                 "--platform", "python", "--target-cpu", other)
    assert result.exit_code == 0, result.output
    assert "Classifier artifact: model.onnx" in result.output
    assert "Serving FP32, not INT8: model.int8.onnx" in result.output and other in result.output


@pytest.mark.triton
@pytest.mark.slow
def test_the_triton_classifier_refuses_a_swapped_int8_graph(exported, tmp_path):
    from toolkit.core.bundle import Bundle
    from toolkit.core.errors import RtkError
    from toolkit.core.host import int8_class
    from toolkit.triton import RepoOptions, write_repository
    from toolkit.triton.server import TritonServer, free_port

    if int8_class() not in (Bundle.load(exported).entry("model.int8.onnx").gates or {}) or \
            not Bundle.load(exported).entry("model.int8.onnx").trusted:
        pytest.skip("the tiny INT8 graph did not pass its gate on this CPU")
    repo = tmp_path / "repo"
    write_repository(Bundle.load(exported), RepoOptions(repo=str(repo), name="fp", artifact="int8",
                                                        platform="python"), echo=lambda *_: None)
    from toolkit.triton.replay import replay_all

    ports = {f"{p}_port": free_port() for p in ("http", "grpc", "metrics")}
    with TritonServer(repo, **ports) as server:  # the graph as gated: it loads, and rtk serve's
        url = f"http://{server.endpoints['http']}"  # replay over HTTP agrees
        assert replay_all(repo, url) == ["fp_classifier"]
    _swap_in_another_int8_graph(repo / "fp_classifier" / "1" / "model.onnx")
    with pytest.raises(RtkError) as failed:
        TritonServer(repo, **ports).start(timeout=120)
    assert "refusing to serve this INT8 graph" in str(failed.value)
    assert "drift" in str(failed.value) and int8_class() in str(failed.value)


def test_a_fourth_int8_export_on_the_same_held_out_set_refuses_to_look(bundle_copy, cli):
    args = ["--int8", "--int8-search", "off", "--calib-size", "8", "--max-batch", "8",
            "--format", "onnx"]
    for look in (1, 2, 3):
        result = cli("export", bundle_copy, *args)
        assert result.exit_code in (0, 3), result.output  # a verdict either way
        held = json.loads((bundle_copy / "manifest.json").read_text())["held_out"]
        assert [v["int8_looks"] for v in held.values()] == [look]
    result = cli("export", bundle_copy, *args, "--int8-budget", "50")  # more budget: no more looks
    assert_user_error(result, "has given its 3 INT8 verdicts", "--data DIR", "fresh")
    assert result.exit_code == 2
    held = json.loads((bundle_copy / "manifest.json").read_text())["held_out"]
    assert [v["int8_looks"] for v in held.values()] == [3]


def test_export_on_another_cpu_kind_adds_a_row_and_keeps_the_graph(exported, tmp_path, cli):
    """A bundle gated elsewhere (its row moved to arm64 here) is gated again on this host:
    the same graph, a row for this kind beside the other one, one more look on the set."""
    from toolkit.core.bundle import Bundle
    from toolkit.core.host import int8_class

    root = Path(shutil.copytree(exported, tmp_path / "run"))
    bundle = Bundle.load(root)
    entry = bundle.entry("model.int8.onnx")
    row = {**entry.gates[int8_class()], "passed": True}
    bundle.update_artifact("model.int8.onnx", trusted=True, gates={"arm64": row})
    bundle.save()
    before = {a: e.sha256 for a, e in bundle.manifest.artifacts.items()}
    looks = [v["int8_looks"] for v in bundle.manifest.held_out.values()]
    result = cli("export", root, "--int8", "--max-batch", "16")
    assert result.exit_code in (0, 3), result.output
    assert f"passed its gate on arm64; this CPU is {int8_class()}" in result.output
    after = Bundle.load(root)
    assert {a: e.sha256 for a, e in after.manifest.artifacts.items()
            if a != "model.int8.fingerprint.json"} == before  # nothing re-made
    gates = after.entry("model.int8.onnx").gates
    assert set(gates) == {"arm64", int8_class()} and gates["arm64"] == row
    assert [v["int8_looks"] for v in after.manifest.held_out.values()] == [looks[0] + 1]


def test_a_look_is_not_refunded_when_the_export_then_fails(bundle_copy, monkeypatch):
    """The export works on a staged copy that a failure throws away; the look it took is
    written to the run's manifest at once."""
    from toolkit.core.bundle import Bundle
    from toolkit.export import ExportOptions, export
    from toolkit.export import int8 as int8_module

    def broken(*args, **kwargs):
        raise RuntimeError("the machine went away")

    monkeypatch.setattr(int8_module, "int8_speed", broken)  # after the gate's look
    with pytest.raises(RuntimeError):
        export(Bundle.load(bundle_copy), ExportOptions(int8=True, int8_search="off", calib_size=8,
                                                       max_batch=8, format="onnx"),
               echo=lambda *_: None)
    manifest = Bundle.load(bundle_copy).manifest
    assert "model.int8.onnx" not in manifest.artifacts  # the export itself changed nothing
    assert [v["int8_looks"] for v in manifest.held_out.values()] == [1]
