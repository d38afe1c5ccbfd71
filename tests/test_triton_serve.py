"""`rtk serve` and the triton backend against a real Triton server (the one in nvidia-pytriton).

One server per module: the tiny bundle is exported, its repository generated with the
Python-backend classifier (this Triton build has no onnxruntime backend), and `rtk serve`
is started on free ports, then stopped with SIGINT (Ctrl-C) at the end.
"""

from __future__ import annotations

import json
import shutil
import signal
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.http")
pytest.importorskip("tritonclient.grpc")

from conftest import assert_user_error, bomb_png, popen_rtk  # noqa: E402

from toolkit.core.errors import RtkError  # noqa: E402


# conftest skips these, with the reason, where no Triton server can start (under CI: fails)
pytestmark = [pytest.mark.triton, pytest.mark.slow]


class Served:
    """A running `rtk serve` process and what the tests need to talk to it."""

    def __init__(self, proc, bundle, ports, output):
        self.proc, self.bundle, self.ports, self.output = proc, bundle, ports, output

    def url(self, protocol: str) -> str:
        return f"127.0.0.1:{self.ports[protocol]}"

    def text(self) -> str:
        return "".join(self.output)


def _drain(stream, sink: list) -> threading.Thread:
    thread = threading.Thread(target=lambda: sink.extend(iter(stream.readline, "")), daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def served(tiny_bundle, module_tmp):
    from toolkit.core.bundle import Bundle
    from toolkit.export import ExportOptions, export
    from toolkit.triton import RepoOptions, write_repository
    from toolkit.triton.server import free_port

    root = module_tmp("triton") / "run"
    shutil.copytree(tiny_bundle, root)
    bundle = Bundle.load(root)
    export(bundle, ExportOptions(max_batch=16), echo=lambda *_: None)
    repo = root.parent / "repo"
    write_repository(bundle, RepoOptions(repo=str(repo), name="tiny", platform="python"),
                     echo=lambda *_: None)
    ports = {p: free_port() for p in ("http", "grpc", "metrics")}
    proc = popen_rtk(["serve", repo, "--http-port", ports["http"], "--grpc-port", ports["grpc"],
                      "--metrics-port", ports["metrics"], "--quiet"])
    output: list[str] = []
    readers = [_drain(proc.stdout, output), _drain(proc.stderr, output)]
    deadline = time.monotonic() + 120
    while "Press Ctrl-C to stop." not in "".join(output):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("rtk serve did not become ready:\n" + "".join(output))
        time.sleep(0.2)
    yield Served(proc, bundle, ports, output)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C does
    code = proc.wait(timeout=60)
    for reader in readers:
        reader.join(timeout=5)
    assert code == 0, "".join(output)
    assert "Triton stopped." in "".join(output)
    from toolkit.triton.server import TritonServer

    TritonServer(repo, **{f"{k}_port": v for k, v in ports.items()})._check_ports()  # all freed


@pytest.fixture(scope="module")
def images(served) -> list[Path]:
    from toolkit.backends.run import validation_samples

    return [p for p, _ in validation_samples(served.bundle)]


@pytest.fixture(scope="module")
def local_logits(served, images) -> np.ndarray:
    from toolkit.backends import open_backend
    from toolkit.backends.run import run_backend

    with open_backend("onnxruntime", served.bundle) as ort:
        return run_backend(ort, images, served.bundle.preprocessing)


def _client(served, protocol: str, send_bytes: bool):
    from toolkit.backends import open_backend

    return open_backend("triton", served.bundle, url=served.url(protocol), protocol=protocol,
                        send_bytes=send_bytes)


def test_announces_endpoints(served):
    text = served.text()
    assert f"http://127.0.0.1:{served.ports['http']}" in text
    assert f"127.0.0.1:{served.ports['grpc']}" in text
    assert "4 model(s): tiny, tiny_classifier, tiny_postprocess, tiny_preprocess" in text


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_tensor_path_matches_local_onnxruntime(served, images, local_logits, protocol):
    from toolkit.backends.run import run_backend

    with _client(served, protocol, send_bytes=False) as client:
        assert not client.accepts_bytes and client.model == "tiny_classifier"
        logits = run_backend(client, images, served.bundle.preprocessing, batch_size=4)
    assert logits.dtype == np.float32 and logits.shape == local_logits.shape
    assert np.abs(logits - local_logits).max() <= 1e-4


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bytes_path_through_the_ensemble(served, images, local_logits, protocol):
    from toolkit.backends.run import run_backend

    with _client(served, protocol, send_bytes=True) as client:
        assert client.accepts_bytes and client.model == "tiny"
        logits = run_backend(client, images, served.bundle.preprocessing, batch_size=5)
        probs = client.probabilities([p.read_bytes() for p in images[:3]])
    assert logits.dtype == np.float32 and logits.shape == local_logits.shape
    assert (logits.argmax(1) == local_logits.argmax(1)).all()
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (probs.argmax(1) == local_logits[:3].argmax(1)).all()


@pytest.mark.parametrize("protocol,send_bytes", [("http", True), ("grpc", False)])
def test_labels_from_the_classification_extension(served, images, local_logits, protocol,
                                                  send_bytes):
    from toolkit.data.images import eval_uint8, open_rgb

    pre, classes = served.bundle.preprocessing.to_json(), served.bundle.classes
    x = ([p.read_bytes() for p in images[:4]] if send_bytes
         else np.stack([eval_uint8(open_rgb(p), pre) for p in images[:4]]))
    with _client(served, protocol, send_bytes) as client:
        rows = client.labels(x, k=2)
    assert len(rows) == 4 and all(len(r) == 2 for r in rows)
    for row, ref in zip(rows, local_logits[:4]):
        assert row[0]["label"] == classes[int(ref.argmax())] and row[0]["index"] == int(ref.argmax())
        assert row[0]["score"] >= row[1]["score"]


def test_cli_predict_and_eval(served, images, cli):
    import json

    root = served.bundle.root
    result = cli("predict", root, images[0], "--backend", "triton", "--url", served.url("http"),
                 "--topk", "2", "--json")
    assert result.exit_code == 0, result.output
    top = json.loads(result.stdout)[0]["top"]
    assert len(top) == 2 and top[0]["label"] in served.bundle.classes
    local = cli("eval", root, "--backend", "onnxruntime", "--json")
    remote = cli("eval", root, "--backend", "triton", "--url", served.url("grpc"),
                 "--protocol", "grpc", "--json")
    assert remote.exit_code == 0, remote.output
    assert json.loads(remote.stdout)["accuracy"] == json.loads(local.stdout)["accuracy"]


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (a decompression bomb's first bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_requests_fail_alone(served, images, protocol):
    import importlib

    lib = importlib.import_module(f"tritonclient.{protocol}")
    client = lib.InferenceServerClient(served.url(protocol))
    crop = served.bundle.preprocessing.crop

    def infer(model, name, array, dtype):
        inp = lib.InferInput(name, list(array.shape), dtype)
        inp.set_data_from_numpy(array)
        return client.infer(model, [inp])

    def good():
        out = infer("tiny", "image", np.array([[images[0].read_bytes()]], dtype=object), "BYTES")
        assert out.as_numpy("logits").shape == (1, 3)
        out = infer("tiny_classifier", "input", np.zeros((2, crop, crop, 3), np.uint8), "UINT8")
        assert out.as_numpy("logits").shape == (2, 3)

    bad = [("tiny_classifier", "input", np.zeros((1, crop + 1, crop, 3), np.uint8), "UINT8"),
           ("tiny_classifier", "input", np.zeros((1, crop, crop), np.uint8), "UINT8"),
           ("tiny_classifier", "input", np.zeros((1, crop, crop, 3), np.float32), "FP32"),
           ("tiny_classifier", "input", np.zeros((1, 3, crop, crop), np.float32), "FP32"),
           ("tiny", "image", np.array([[b"definitely not an image"]], dtype=object), "BYTES"),
           ("tiny", "image", np.array([[b""]], dtype=object), "BYTES"),
           ("tiny", "image", np.array([[_png_header_only(9000, 9000)]], dtype=object), "BYTES"),
           ("tiny", "image", np.zeros((1, 1), np.float32), "FP32")]
    good()
    for model, name, array, dtype in bad:
        with pytest.raises(Exception) as info:
            infer(model, name, array, dtype)
        assert "InferenceServerException" in type(info.value).__name__, info.value
        good()
    client.close()


def test_client_errors_are_user_errors(served, tmp_path):
    from toolkit.backends import open_backend

    with _client(served, "http", True) as client:
        with pytest.raises(RtkError, match="preprocess: cannot decode image"):
            client([b"garbage"])
    with pytest.raises(RtkError, match="Cannot reach Triton"):
        open_backend("triton", served.bundle, url="127.0.0.1:9", protocol="http")
    with pytest.raises(RtkError, match="needs the server address"):
        open_backend("triton", served.bundle)
    other = shutil.copytree(served.bundle.root, tmp_path / "other")
    (other / "manifest.json").write_text((other / "manifest.json").read_text().replace(
        served.bundle.entry("model.onnx").sha256, "0" * 64))
    from toolkit.core.bundle import Bundle

    with pytest.raises(RtkError, match="No ready ensemble"):
        open_backend("triton", Bundle.load(other), url=served.url("http"))


def test_busy_port_is_a_clear_error(served, cli):
    result = cli("serve", served.bundle.root.parent / "repo", "--http-port", served.ports["http"],
                 "--grpc-port", served.ports["grpc"], "--metrics-port", served.ports["metrics"])
    assert_user_error(result, f"127.0.0.1:{served.ports['http']}", "already in use", "--http-port")


def test_model_that_fails_to_load_reports_tritons_reason(served, tmp_path, cli):
    from toolkit.triton.server import free_port

    repo = shutil.copytree(served.bundle.root.parent / "repo", tmp_path / "repo")
    (repo / "tiny_classifier" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    result = cli("serve", repo, "--http-port", free_port(), "--grpc-port", free_port(),
                 "--metrics-port", free_port(), "--quiet")
    assert_user_error(result, "Triton exited", "tiny_classifier", "UNAVAILABLE", "INVALID_PROTOBUF")


def test_missing_repository(cli, tmp_path):
    assert_user_error(cli("serve", tmp_path / "nope"), "No model repository", "rtk triton")


def test_bench_against_the_server_gives_the_concurrency_table(served, cli, tmp_path):
    out = tmp_path / "bench"
    result = cli("bench", served.bundle.root, "--backends", "onnxruntime,triton", "--batch-sizes",
                 "1", "--duration", "0.8", "--triton-url", f"127.0.0.1:{served.ports['http']}",
                 "--triton-grpc-url", f"127.0.0.1:{served.ports['grpc']}", "--concurrency", "1,2",
                 "--soak", "1", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    sweep = [r for r in report["results"] if r["backend"] == "triton"]
    assert {(r["protocol"], r["concurrency"]) for r in sweep} == {
        ("http", 1), ("http", 2), ("grpc", 1), ("grpc", 2)}
    for r in sweep:
        assert r["status"] == "ok" and r["throughput"] > 0 and r["p50_ms"] <= r["p99_ms"]
        assert "tiny_classifier" in r["server"] and r["server"]["tiny_classifier"]["compute_ms"] > 0
    soak = report["triton"]["soak"]
    assert soak["requests"] > 0 and soak["failed"] == 0
    md = (out / "report.md").read_text()
    assert "server-side time per request" in md and "Triton soak" in md
    assert (out / "triton.png").is_file()


def _bad_inputs(image: bytes, photo: bytes) -> dict:
    """name -> (tensor, dtype, the fragment Triton's error must contain)."""
    import io

    from PIL import Image

    png = io.BytesIO()
    Image.open(io.BytesIO(image)).save(png, "PNG")
    png = png.getvalue()
    corrupt_png = png[:33] + bytes(b ^ 0xFF for b in png[33:60]) + png[60:]  # IDAT data damaged
    corrupt_jpeg = photo[:2000] + bytes(4000) + photo[6000:]  # zeros in the middle of the scan
    raw = lambda *items: np.array([[b] for b in items], dtype=object)  # noqa: E731
    return {
        "random bytes": (raw(np.random.default_rng(0).bytes(5000)), "BYTES", "cannot decode image"),
        "truncated JPEG": (raw(photo[:len(photo) // 3]), "BYTES", "cannot decode image"),
        "corrupt JPEG": (raw(corrupt_jpeg[:200]), "BYTES", "cannot decode image"),
        "truncated PNG": (raw(png[:len(png) // 2]), "BYTES", "cannot decode image"),
        "corrupt PNG": (raw(corrupt_png), "BYTES", "cannot decode image"),
        "decompression bomb (9000x9000 PNG)": (raw(bomb_png(9000, 9000)), "BYTES", "exceeds 64000000 pixels"),
        "empty input": (raw(b""), "BYTES", "empty image bytes"),
        "wrong dtype": (np.zeros((1, 1), np.float32), "FP32", "data-type"),
        "wrong shape": (np.array([[image, image]], dtype=object), "BYTES", "shape"),
        "over-long request (17 > max batch 16)": (raw(*[image] * 17), "BYTES", "batch"),
    }


def test_bad_input_run_through_the_served_ensemble(served, images):
    """Every bad input gets an error naming its cause, good requests batched with them are
    answered, the server stays live and ready, and its memory stays bounded."""
    import io
    from concurrent.futures import ThreadPoolExecutor

    import tritonclient.grpc as lib
    from PIL import Image

    from toolkit.bench.triton import server_rss_mb

    url, image = served.url("grpc"), images[0].read_bytes()
    photo = io.BytesIO()
    Image.open(images[0]).convert("RGB").resize((4032, 3024)).save(photo, "JPEG", quality=90)
    photo = photo.getvalue()
    cases = _bad_inputs(image, photo)
    client = lib.InferenceServerClient(url)

    def infer(array, dtype):
        inp = lib.InferInput("image", list(array.shape), dtype)
        inp.set_data_from_numpy(array)
        return client.infer("tiny", [inp]).as_numpy("logits")

    good = np.array([[image]], dtype=object)
    assert infer(good, "BYTES").shape == (1, 3)
    assert infer(np.array([[photo]], dtype=object), "BYTES").shape == (1, 3)  # 12 MP: answered
    rss_before, started, counts = server_rss_mb(), time.monotonic(), {}
    with ThreadPoolExecutor(8) as pool:
        for name, (array, dtype, fragment) in cases.items():
            # the bad request in flight together with good ones: the preprocessing model
            # batches them, and must fail only the bad one
            goods = [pool.submit(infer, good, "BYTES") for _ in range(6)]
            with pytest.raises(Exception) as info:
                infer(array, dtype)
            assert fragment in str(info.value), (name, str(info.value))
            assert all(g.result().shape == (1, 3) for g in goods), name
            counts[name] = str(info.value).split("\n")[0][:100]
    seconds = time.monotonic() - started
    for _ in range(3):
        assert infer(good, "BYTES").shape == (1, 3)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
    client.close()
    rss_after = server_rss_mb()
    print(f"\nbad-input run: {len(cases)} bad inputs, each with 6 good requests beside it, "
          f"{seconds:.1f} s; server RSS {rss_before:.0f} -> {rss_after:.0f} MiB")
    for name, message in counts.items():
        print(f"  {name}: {message}")
    assert seconds < 120  # bounded in time: nothing hung (a wide margin for a busy machine)
    assert rss_after < rss_before + 256, (rss_before, rss_after)  # bounded memory
