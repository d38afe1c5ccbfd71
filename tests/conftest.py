"""Shared fixtures: a tiny image folder and a tiny trained bundle (one CPU epoch at 32 px).

Everything here is session-scoped and read-only for the tests that use it; a test that
changes a bundle takes `bundle_copy` instead of `tiny_bundle`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import signal
import subprocess
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

# One intra-op thread in this process and every rtk it starts: the tiny models gain nothing
# from more, a busy 2-core machine loses a lot to oversubscription, and identical thread
# counts keep in-process and subprocess runs bit-comparable. Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Distinct, learnable content per class: a dominant colour plus per-image noise.
CLASS_COLOURS = {"circle": (220, 40, 40), "square": (40, 200, 40), "stripe": (40, 60, 220)}
IMAGES_PER_CLASS = 8
IMAGE_SIDE = 40  # a little larger than the 32 px crop, so resize + crop really run

# The options every tiny training run shares: small, CPU-only, offline.
TINY_TRAIN = ["--arch", "resnet18", "--weights", "none", "--image-size", "32", "--epochs", "1",
              "--batch-size", "4", "--device", "cpu", "--no-progress"]


@functools.lru_cache(maxsize=1)
def tritonserver_missing() -> str | None:
    """Why no local Triton server can start here; None when one can.

    The tests use what `rtk serve` uses: tritonserver on PATH, else nvidia-pytriton's in the
    backend environment (toolkit.triton.backend_env: $RTK_TRITON_ENV or beside this venv).
    """
    from toolkit.core.errors import RtkError
    from toolkit.triton import backend_env

    if shutil.which("tritonserver"):
        return None
    try:
        backend_env.check()
    except RtkError as exc:
        return f"{exc.message} {exc.hint}"
    return None


def capability_missing(name: str) -> str | None:
    """Why `gpu`, `tensorrt` or `triton` tests cannot run here (None: they can)."""
    from toolkit.core import host

    if name == "gpu":
        return None if host.gpu() else "needs a CUDA GPU"
    if name == "tensorrt":
        trt = host.tensorrt_ready()
        return trt and f"needs TensorRT: {trt} (pip install 'rtk[gpu]')"
    why = tritonserver_missing()
    return why and f"Triton server missing: {why}"


@pytest.hookimpl(trylast=True)  # after -m/-k deselection: probe only for tests that will run
def pytest_collection_modifyitems(config, items):
    """Skip `gpu`, `tensorrt` and `triton` tests on machines without the capability, with the
    reason. Under CI a missing Triton server fails the run instead: CI must serve for real."""
    reasons: dict[str, str | None] = {}
    for item in items:
        for name in ("gpu", "tensorrt", "triton"):
            if not item.get_closest_marker(name):
                continue
            if name not in reasons:
                reasons[name] = capability_missing(name)
                if name == "triton" and reasons[name] and os.environ.get("CI"):
                    raise pytest.UsageError(f"CI is set but no Triton server can start: "
                                            f"{reasons[name]}")
            if reasons[name]:
                item.add_marker(pytest.mark.skip(reason=reasons[name]))
                break


# A synthetic bundle (fake_bundle): fixed bytes stand in for the weights, so hashes and the
# Triton golden files are stable.
FAKE_CLASSES = ["cat", "dog", "fox"]
FAKE_PRE = {"resize": 37, "crop": 32, "interpolation": "bilinear",
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "source": "IMAGENET1K_V1"}
FAKE_IO = {"inputs": [{"name": "input", "dtype": "uint8", "shape": [-1, 32, 32, 3]}],
           "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 3]}], "opset": 18}
FAKE_PLAN = {"tensorrt_version": "10.9.0.34", "gpu": "NVIDIA H100 80GB HBM3",
             "compute_capability": "9.0", "strongly_typed": True,
             "profile": {"input": "input", "min": 1, "opt": 16, "max": 32}}


def fake_bundle(root: Path):
    """A run directory whose artifacts are fixed bytes with a consistent manifest."""
    from toolkit.core.bundle import Bundle

    root.mkdir(parents=True)
    files = {"model.pt": b"pt", "model.onnx": b"onnx-fp32", "model.fp16.onnx": b"onnx-fp16",
             "model.fp16.plan": b"plan"}
    sha = {}
    for name, data in files.items():
        (root / name).write_bytes(data)
        sha[name] = hashlib.sha256(data).hexdigest()
    artifacts = {
        "model.pt": {"sha256": sha["model.pt"], "parent": None},
        "model.onnx": {"sha256": sha["model.onnx"], "parent": "model.pt",
                       "parent_sha256": sha["model.pt"], "io": FAKE_IO, "max_batch": 64,
                       "trusted": True},
        "model.fp16.onnx": {"sha256": sha["model.fp16.onnx"], "parent": "model.onnx",
                            "parent_sha256": sha["model.onnx"], "io": FAKE_IO, "trusted": True},
        "model.fp16.plan": {"sha256": sha["model.fp16.plan"], "parent": "model.fp16.onnx",
                            "parent_sha256": sha["model.fp16.onnx"], "trusted": True, **FAKE_PLAN},
    }
    bundle = Bundle.create(root, arch="resnet18", classes=FAKE_CLASSES, num_classes=3,
                           preprocessing=FAKE_PRE, artifacts=artifacts)
    bundle.save()
    return bundle


def write_class_images(root: Path, colours: dict[str, tuple[int, int, int]] = CLASS_COLOURS,
                       n: int = IMAGES_PER_CLASS, side: int = IMAGE_SIDE, seed: int = 0) -> Path:
    """Write `n` noisy images per class (alternating PNG and JPEG) under `root/<class>/`."""
    rng = np.random.default_rng(seed)
    for name, colour in colours.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            noise = rng.integers(-40, 40, (side, side, 3))
            arr = np.clip(np.asarray(colour) + noise, 0, 255).astype(np.uint8)
            ext = "png" if i % 2 == 0 else "jpg"
            Image.fromarray(arr, "RGB").save(folder / f"{name}_{i}.{ext}")
    return root


@pytest.fixture(scope="module")
def module_tmp(request, tmp_path_factory):
    """`module_tmp(name)`: a fresh directory for a module-scoped fixture, removed once the
    module's tests are done unless one of them failed. A tiny bundle weighs about 250 MB;
    kept to the session's end, as `tmp_path_factory` keeps them, the suite's copies outgrew
    a small CI disk."""
    failed_before = request.session.testsfailed
    made: list[Path] = []

    def mktemp(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    if request.session.testsfailed == failed_before:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """3 classes x 8 images of 40x40 px: circle, square, stripe (distinct colours)."""
    return write_class_images(tmp_path_factory.mktemp("tiny_data"))


def fit_tiny(data: Path, out: Path, **options):
    """Train in-process, quietly: resnet18, weights none, 32 px, 1 epoch, batch 4, CPU, seed 0
    unless `options` (TrainConfig fields) say otherwise; returns fit's Bundle."""
    from toolkit.train.config import TrainConfig
    from toolkit.train.session import fit

    tiny = dict(arch="resnet18", weights="none", image_size=32, epochs=1, batch_size=4,
                device="cpu", seed=0)
    return fit(TrainConfig(data_dir=str(data), out=str(out), **{**tiny, **options}),
               progress=False, echo=lambda *_: None)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_data, tmp_path_factory) -> Path:
    """A finished run directory: the fit_tiny defaults (one CPU epoch at 32 px)."""
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    fit_tiny(tiny_data, out)
    return out


@pytest.fixture(scope="session")
def exported(tiny_bundle, tmp_path_factory) -> Path:
    """The tiny bundle with FP32, FP16 and INT8 graphs, all gated (read-only for tests)."""
    from toolkit.core.bundle import Bundle
    from toolkit.export import ExportOptions, export

    root = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("exp") / "run"))
    export(Bundle.load(root), ExportOptions(fp16=True, int8=True, calib_size=16, max_batch=16),
           echo=lambda *_: None)
    return root


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    """A private copy of the tiny bundle that a test may modify."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


@pytest.fixture
def make_data(tmp_path):
    """Factory: make_data(name, classes=..., n=...) writes a fresh class folder tree."""
    def make(name: str = "data", colours=CLASS_COLOURS, n: int = IMAGES_PER_CLASS,
             seed: int = 0) -> Path:
        return write_class_images(tmp_path / name, colours, n, seed=seed)
    return make


@pytest.fixture
def cli():
    """Run `rtk ARGS...` in-process; returns click's Result (stdout and stderr kept apart)."""
    from toolkit.cli import main

    def run(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return run


def rtk_command() -> list[str]:
    """The command line that starts rtk in a fresh interpreter."""
    return [sys.executable, "-m", "toolkit"]


def popen_rtk(args, **kwargs) -> subprocess.Popen:
    """Start `rtk ARGS` in its own process group, with a normal Ctrl-C handler.

    SIGINT is reset to its default so that Python installs KeyboardInterrupt even when
    the test runner itself was started in the background (where SIGINT is ignored).
    """
    def child_setup():
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([*rtk_command(), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True, preexec_fn=child_setup, **kwargs)


@pytest.fixture
def rtk_process():
    """Factory: start `rtk ARGS` with popen_rtk; whatever is still running is killed at teardown."""
    procs: list[subprocess.Popen] = []

    def start(args, **kwargs) -> subprocess.Popen:
        procs.append(popen_rtk(args, **kwargs))
        return procs[-1]
    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def interrupt_training(monkeypatch, epoch: int = 2, step: int = 2):
    """Ctrl-C after batch `step` of epoch `epoch` of the next fit; returns the real epoch loop."""
    from toolkit.train import session

    real, calls = session.train_one_epoch, []

    def interrupted(*args, on_batch, **kwargs):
        calls.append(1)

        def hook(done, *rest):
            on_batch(done, *rest)
            if len(calls) == epoch and done == step:
                raise KeyboardInterrupt
        return real(*args, on_batch=hook, **kwargs)

    monkeypatch.setattr(session, "train_one_epoch", interrupted)
    return real


def assert_user_error(result, *fragments: str) -> None:
    """A clean user error: non-zero exit, Error: and Hint: lines, the fragments, no traceback."""
    text = result.output if hasattr(result, "output") else result
    code = result.exit_code if hasattr(result, "exit_code") else None
    assert code not in (0, None), text
    assert "Error:" in text and "Hint:" in text, text
    assert "Traceback" not in text, text
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in:\n{text}"


def bomb_png(width: int, height: int) -> bytes:
    """A real decompression bomb: a valid grayscale PNG of width x height zero pixels whose
    compressed data takes a few hundred KB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    row = b"\0" * (width + 1)  # filter byte + pixels
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row * height, 9))
            + chunk(b"IEND", b""))
