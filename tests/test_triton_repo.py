"""`rtk triton`: repository layout, protobuf configs, golden files, atomic writes, refusals.

These need no server: the bundle is synthetic (fixed bytes stand in for the weights, so
hashes and golden files are stable). Serving is covered by test_triton_serve.py.
Regenerate the golden files with RTK_UPDATE_GOLDEN=1 after an intended change.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

pytest.importorskip("tritonclient.grpc.model_config_pb2")

from conftest import FAKE_CLASSES, FAKE_IO, FAKE_PLAN, FAKE_PRE, fake_bundle  # noqa: E402

from toolkit.core.bundle import Bundle  # noqa: E402
from toolkit.core.errors import RtkError  # noqa: E402
from toolkit.triton import RepoOptions, verify_repository, write_repository  # noqa: E402
from toolkit.triton import configs, repository  # noqa: E402

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture
def bundle(tmp_path) -> Bundle:
    return fake_bundle(tmp_path / "golden_run")


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_python_platform_layout(bundle, tmp_path):
    repo = tmp_path / "repo"
    summary = write_repository(bundle, RepoOptions(repo=str(repo), name="pets", platform="python"),
                               echo=lambda *_: None)
    assert summary["max_batch"] == 64
    assert verify_repository(repo) == ["pets", "pets_classifier", "pets_postprocess", "pets_preprocess"]
    files = tree(repo)
    assert files["pets_classifier/1/model.onnx"] == b"onnx-fp32"
    assert files["pets_classifier/labels.txt"].decode().splitlines() == FAKE_CLASSES
    assert files["pets/labels.txt"] == files["pets_classifier/labels.txt"]
    imageio = (Path(repository.__file__).parent.parent / "data" / "images.py").read_bytes()
    assert files["pets_preprocess/1/imageio.py"] == imageio  # the very same transform code
    assert "import torch" not in files["pets_preprocess/1/model.py"].decode()
    warm = files["pets_preprocess/warmup/sample_image.bin"]
    assert struct.unpack("<I", warm[:4])[0] == len(warm) - 4 and warm[5:8] == b"PNG"
    classifier = configs.parse(files["pets_classifier/config.pbtxt"].decode())
    assert classifier.backend == "python" and classifier.max_batch_size == 64
    assert list(classifier.input[0].dims) == [32, 32, 3] and classifier.input[0].name == "input"
    assert classifier.input[0].data_type == configs.pb().DataType.Value("TYPE_UINT8")
    assert classifier.output[0].label_filename == "labels.txt"
    assert classifier.parameters["rtk.artifact_sha256"].string_value == \
        bundle.entry("model.onnx").sha256
    pre = configs.parse(files["pets_preprocess/config.pbtxt"].decode())
    assert json.loads(pre.parameters["preprocessing"].string_value) == FAKE_PRE
    assert [s.model_name for s in configs.parse(files["pets/config.pbtxt"].decode())
            .ensemble_scheduling.step] == ["pets_preprocess", "pets_classifier", "pets_postprocess"]


def test_onnxruntime_cpu_defaults(bundle, tmp_path):
    repo = tmp_path / "repo"
    write_repository(bundle, RepoOptions(repo=str(repo)), echo=lambda *_: None)
    config = configs.parse((repo / "golden_run_classifier" / "config.pbtxt").read_text())
    assert config.platform == "onnxruntime_onnx" and config.default_model_filename == "model.onnx"
    assert config.instance_group[0].kind == configs.pb().ModelInstanceGroup.KIND_CPU
    assert list(config.dynamic_batching.preferred_batch_size) == [16, 32, 64]
    assert config.version_policy.latest.num_versions == 1
    assert config.model_warmup[0].inputs["input"].zero_data
    assert not (repo / "golden_run_classifier" / "1" / "model.py").exists()


def test_gpu_preprocess_decodes_on_its_gpu_instance(bundle, tmp_path):
    """KIND_GPU: the preprocess instance is on the GPU with its nvJPEG decoder beside it."""
    repo = tmp_path / "repo"
    write_repository(bundle, RepoOptions(repo=str(repo), name="pets", kind="gpu"),
                     echo=lambda *_: None)
    pre = configs.parse((repo / "pets_preprocess" / "config.pbtxt").read_text())
    assert pre.instance_group[0].kind == configs.pb().ModelInstanceGroup.KIND_GPU
    assert pre.output[0].data_type == configs.pb().DataType.Value("TYPE_UINT8")
    assert list(pre.output[0].dims) == [32, 32, 3]
    assert (repo / "pets_preprocess" / "1" / "gpu_decode.py").is_file()
    cpu = tmp_path / "cpu"
    write_repository(bundle, RepoOptions(repo=str(cpu), name="pets"), echo=lambda *_: None)
    assert not (cpu / "pets_preprocess" / "1" / "gpu_decode.py").exists()


def _golden(bundle, tmp_path, variant: str, opts: RepoOptions) -> None:
    repo = tmp_path / variant
    opts.repo, opts.name = str(repo), "pets"
    write_repository(bundle, opts, echo=lambda *_: None)
    for path in sorted(repo.glob("*/config.pbtxt")):
        role = path.parent.name.split("_", 1)[1] if "_" in path.parent.name else "ensemble"
        golden = GOLDEN / f"{variant}.{role}.pbtxt"
        if os.environ.get("RTK_UPDATE_GOLDEN") == "1":
            golden.write_text(path.read_text())
        assert golden.is_file(), f"missing {golden}: run with RTK_UPDATE_GOLDEN=1"
        assert path.read_text() == golden.read_text(), f"{path.parent.name} differs from {golden.name}"
        configs.parse(golden.read_text())


def test_golden_onnxruntime_gpu(bundle, tmp_path):
    _golden(bundle, tmp_path, "onnxruntime_gpu",
            RepoOptions(platform="onnxruntime", kind="gpu", max_batch=32, instances=2, trt_fp16=True))


def test_golden_tensorrt_plan(bundle, tmp_path):
    _golden(bundle, tmp_path, "tensorrt_plan",
            RepoOptions(platform="tensorrt", kind="gpu", target_tensorrt="10.9.0.34", target_cc="9.0"))
    assert (tmp_path / "tensorrt_plan" / "pets_classifier" / "1" / "model.plan").read_bytes() == b"plan"


@pytest.mark.parametrize("target,reason", [
    ({"target_tensorrt": "10.13.0", "target_cc": "9.0"}, "TensorRT 10.9.0.34 but the target has"),
    ({"target_tensorrt": "10.9.0.34", "target_cc": "8.9"},
     r"compute capability 9\.0\) but the target GPU has compute capability 8\.9"),
])
def test_tensorrt_plan_refused_when_it_does_not_fit(bundle, tmp_path, target, reason):
    opts = RepoOptions(repo=str(tmp_path / "repo"), platform="tensorrt", kind="gpu", **target)
    with pytest.raises(RtkError, match=reason):
        write_repository(bundle, opts, echo=lambda *_: None)
    assert not (tmp_path / "repo").exists()


def test_tensorrt_plan_target_defaults_to_this_machine(bundle, tmp_path):
    from toolkit.triton.targets import local_target

    here = local_target()
    if here == {"tensorrt_version": FAKE_PLAN["tensorrt_version"], "compute_capability": "9.0"}:
        pytest.skip("this machine is the plan's exact target")
    with pytest.raises(RtkError, match="does not fit the target") as info:
        write_repository(bundle, RepoOptions(repo=str(tmp_path / "repo"), platform="tensorrt",
                                             kind="gpu"), echo=lambda *_: None)
    assert "--target-tensorrt" in info.value.hint


@pytest.mark.parametrize("opts,fragment", [
    ({"platform": "tensorrt", "kind": "cpu"}, "GPU instances"),
    ({"max_batch": 65}, "batch range 1..64"),
    ({"max_batch": 64, "platform": "tensorrt", "kind": "gpu", "target_tensorrt": "10.9.0.34",
      "target_cc": "9.0"}, "batch range 1..32"),
    ({"name": "../evil"}, "Invalid model name"),
    ({"name": "a/b"}, "Invalid model name"),
    ({"name": ".hidden"}, "Invalid model name"),
    ({"instances": 0}, "at least 1"),
])
def test_refusals_write_nothing(bundle, tmp_path, opts, fragment):
    with pytest.raises(RtkError, match=fragment.replace(".", r"\.")):
        write_repository(bundle, RepoOptions(repo=str(tmp_path / "repo"), **opts), echo=lambda *_: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["golden_run"]


def test_stale_artifact_refused(bundle, tmp_path):
    (bundle.root / "model.onnx").write_bytes(b"retrained")
    with pytest.raises(RtkError, match="changed after rtk recorded it"):
        write_repository(bundle, RepoOptions(repo=str(tmp_path / "repo")), echo=lambda *_: None)


def test_failure_midway_leaves_repository_untouched(bundle, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "other_model" / "1").mkdir(parents=True)
    (repo / "other_model" / "config.pbtxt").write_text('name: "other_model"\nbackend: "python"\n')
    write_repository(bundle, RepoOptions(repo=str(repo), name="pets"), echo=lambda *_: None)
    before = tree(repo)
    calls = []
    real = repository._write_model

    def flaky(folder, role, config, **kwargs):
        calls.append(role)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(folder, role, config, **kwargs)

    monkeypatch.setattr(repository, "_write_model", flaky)
    with pytest.raises(OSError, match="disk full"):
        write_repository(bundle, RepoOptions(repo=str(repo), name="pets", platform="python"),
                         echo=lambda *_: None)
    assert tree(repo) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["golden_run", "repo"]  # no temp left


def test_regeneration_replaces_only_its_own_models(bundle, tmp_path):
    repo = tmp_path / "repo"
    (repo / "other_model" / "1").mkdir(parents=True)
    (repo / "other_model" / "config.pbtxt").write_text('name: "other_model"\nbackend: "python"\n')
    write_repository(bundle, RepoOptions(repo=str(repo), name="pets", platform="python"),
                     echo=lambda *_: None)
    (repo / "pets_classifier" / "1" / "leftover.txt").write_text("old")
    write_repository(bundle, RepoOptions(repo=str(repo), name="pets"), echo=lambda *_: None)
    assert (repo / "other_model" / "config.pbtxt").is_file()
    assert not (repo / "pets_classifier" / "1" / "leftover.txt").exists()
    assert not (repo / "pets_classifier" / "1" / "model.py").exists()  # now onnxruntime_onnx
    assert sorted(p.name for p in tmp_path.iterdir()) == ["golden_run", "repo"]


def test_invalid_config_text_is_a_user_error():
    with pytest.raises(RtkError, match="Invalid config.pbtxt"):
        configs.parse('name: "x"\nmax_batch_size: "many"\n')


def test_cli_triton(bundle, tmp_path, cli):
    result = cli("triton", bundle.root, "--repo", tmp_path / "repo", "--platform", "python",
                 "--name", "pets", "--max-batch", "8", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["max_batch"] == 8 and summary["names"]["ensemble"] == "pets"
    bad = cli("triton", bundle.root, "--repo", tmp_path / "repo2", "--name", "../x")
    assert bad.exit_code != 0 and "Error: Invalid model name" in bad.output and "Hint:" in bad.output


@pytest.mark.slow
def test_committed_model_repository_parses_and_holds_no_weights():
    """The top-level model_repository/ (configs and labels of the sample model) stays valid."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo = Path(__file__).resolve().parents[1] / "model_repository"
    configs = sorted(repo.glob("*/config.pbtxt"))
    assert len(configs) == 4
    roles = set()
    for path in configs:
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        assert config.name == path.parent.name
        roles.add(config.parameters["rtk.role"].string_value)
    assert roles == {"ensemble", "preprocess", "classifier", "postprocess"}
    labels = (repo / "digits_classifier" / "labels.txt").read_text().split()
    assert labels == [str(d) for d in range(10)]
    import subprocess

    tracked = subprocess.run(["git", "ls-files", str(repo)], capture_output=True, text=True,
                             cwd=repo.parent).stdout.split()
    assert tracked and not [t for t in tracked if t.endswith((".onnx", ".plan", ".pt"))]


def _with_int8(bundle: Bundle, trusted: bool, *, gated_on: str = "x86-vnni",
               vs_fp32: float = 2.0, session_config: dict | None = None) -> Bundle:
    """A fake INT8 artifact whose gate ran on `gated_on` CPUs and measured `vs_fp32` there."""
    (bundle.root / "model.int8.onnx").write_bytes(b"onnx-int8")
    (bundle.root / "model.int8.fingerprint.json").write_text("{}")
    row = {"passed": trusted, "vs_fp32": vs_fp32, "host": {"int8_class": gated_on}}
    bundle.record_artifact("model.int8.onnx", parent="model.onnx", io=FAKE_IO, trusted=trusted,
                           gate="passed" if trusted else "failed", gates={gated_on: row},
                           fingerprint="model.int8.fingerprint.json",
                           session_config=session_config or {})
    return bundle


@pytest.mark.parametrize("trusted,kind,expected", [
    (True, "cpu", "model.int8.onnx"), (False, "cpu", "model.onnx"), (True, "gpu", "model.onnx")])
def test_cpu_serving_picks_int8_only_when_trusted(bundle, tmp_path, trusted, kind, expected):
    _with_int8(bundle, trusted)
    summary = write_repository(bundle, RepoOptions(repo=str(tmp_path / "r"), name="pets",
                                                   platform="python", kind=kind,
                                                   target_cpu="x86-vnni"),
                               echo=lambda *_: None)
    assert summary["artifact"] == expected
    served = (tmp_path / "r" / "pets_classifier" / "1" / "model.onnx").read_bytes()
    assert served == (bundle.root / expected).read_bytes()
    config = configs.parse((tmp_path / "r" / "pets_classifier" / "config.pbtxt").read_text())
    assert config.parameters["rtk.artifact"].string_value == expected
    if expected == "model.int8.onnx":  # the classifier replays the fingerprint it is given
        version = tmp_path / "r" / "pets_classifier" / "1"
        assert (version / "fingerprint.json").is_file() and (version / "fingerprint.py").is_file()
        assert config.parameters["fingerprint_class"].string_value == "x86-vnni"
    assert list(config.dynamic_batching.preferred_batch_size) == [16, 32, 64]
    if kind == "cpu":  # ONNX Runtime threads sized to the cores the instances share
        threads = int(config.parameters["intra_op_threads"].string_value)
        assert threads * summary["instances"] >= 1 and threads == summary["threads_per_instance"]


def test_an_untrusted_artifact_is_refused_when_asked_for(bundle, tmp_path):
    _with_int8(bundle, trusted=False)
    with pytest.raises(RtkError, match="failed its accuracy gate"):
        write_repository(bundle, RepoOptions(repo=str(tmp_path / "r"), artifact="int8"),
                         echo=lambda *_: None)
    summary = write_repository(bundle, RepoOptions(repo=str(tmp_path / "r"), artifact="onnx"),
                               echo=lambda *_: None)
    assert summary["artifact"] == "model.onnx"


def test_decoding_instances_default_to_the_cores_and_are_settable(bundle, tmp_path, monkeypatch):
    """A camera JPEG's decode costs more than the classifier's share of a batch: one decoding
    instance per core on CPU, so no core idles while one decodes (issue 29)."""
    from toolkit.core import host

    monkeypatch.setattr(host, "usable_cores", lambda: 6)
    made, facts = repository.build_configs(bundle, RepoOptions(platform="python"))
    assert facts["preprocess_instances"] == 6 and facts["instances"] == 1
    assert made["preprocess"].instance_group[0].count == 6
    assert made["classifier"].instance_group[0].count == 1
    made, facts = repository.build_configs(bundle, RepoOptions(platform="python",
                                                               preprocess_instances=3))
    assert made["preprocess"].instance_group[0].count == 3 == facts["preprocess_instances"]
    _, gpu = repository.build_configs(bundle, RepoOptions(kind="gpu", instances=2))
    assert gpu["preprocess_instances"] == 2  # nvJPEG on the GPU: as many as the classifier
    with pytest.raises(RtkError, match="--preprocess-instances must be at least 1"):
        repository.build_configs(bundle, RepoOptions(preprocess_instances=0))


def test_idle_onnxruntime_threads_sleep_unless_asked_to_spin(bundle):
    """The Python-backend classifier on CPU: spinning threads would take the cores that the
    decoding instances need (12 MP photos); --ort-spin trades them back for latency."""
    made, _ = repository.build_configs(bundle, RepoOptions(platform="python"))
    assert made["classifier"].parameters["intra_op_allow_spinning"].string_value == "0"
    made, _ = repository.build_configs(bundle, RepoOptions(platform="python", ort_spin=True))
    assert made["classifier"].parameters["intra_op_allow_spinning"].string_value == "1"
    model = (Path(repository.__file__).parent / "models" / "classifier.py").read_text()
    assert 'params.get("intra_op_allow_spinning"' in model and "session.intra_op.allow_spinning" in model


@pytest.mark.parametrize("target,vs_fp32,config,platform,why", [
    ("x86-avx2", 2.0, None, "python", "gated on x86-vnni, not on x86-avx2"),
    ("x86-vnni", 1.1, None, "python", "1.10x FP32, under the 1.3x"),
    ("x86-vnni", 2.0, {"session.x64quantprecision": "1"}, "onnxruntime",
     "Triton's onnxruntime backend cannot set"),
])
def test_int8_is_served_only_to_its_cpu_kind_and_where_it_pays(bundle, tmp_path, target, vs_fp32,
                                                               config, platform, why):
    _with_int8(bundle, True, vs_fp32=vs_fp32, session_config=config)
    said = []
    summary = write_repository(bundle, RepoOptions(repo=str(tmp_path / "r"), name="pets",
                                                   platform=platform, target_cpu=target),
                               echo=said.append)
    assert summary["artifact"] == "model.onnx" and why in summary["int8_note"]
    assert any(line.startswith("Serving FP32, not INT8:") and why in line for line in said)


def test_int8_session_options_reach_the_python_classifier(bundle, tmp_path):
    _with_int8(bundle, True, session_config={"session.x64quantprecision": "1"})
    write_repository(bundle, RepoOptions(repo=str(tmp_path / "r"), name="pets", platform="python",
                                         target_cpu="x86-vnni"), echo=lambda *_: None)
    config = configs.parse((tmp_path / "r" / "pets_classifier" / "config.pbtxt").read_text())
    assert json.loads(config.parameters["session_config"].string_value) == {
        "session.x64quantprecision": "1"}
    assert config.parameters["rtk.target_cpu"].string_value == "x86-vnni"


def test_asking_for_int8_on_a_kind_it_was_not_gated_on_is_an_error(bundle, tmp_path):
    _with_int8(bundle, True)
    with pytest.raises(RtkError, match="gated on x86-vnni, not on arm64"):
        write_repository(bundle, RepoOptions(repo=str(tmp_path / "r"), artifact="int8",
                                             target_cpu="arm64"), echo=lambda *_: None)
