"""Shared fixtures: a tiny image folder and a tiny trained bundle (one CPU epoch at 32 px).

Everything here is session-scoped and read-only for the tests that use it; a test that
changes a bundle takes `bundle_copy` instead of `tiny_bundle`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
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


def pytest_collection_modifyitems(config, items):
    """Skip `gpu` and `tensorrt` tests on machines without the capability (see pyproject)."""
    import importlib.util

    marked = [i for i in items if i.get_closest_marker("gpu") or i.get_closest_marker("tensorrt")]
    if not marked:
        return
    import torch

    reasons = {"gpu": None if torch.cuda.is_available() else "needs a CUDA GPU",
               "tensorrt": ("needs the tensorrt package (pip install 'rtk[gpu]')"
                            if importlib.util.find_spec("tensorrt") is None
                            else None if torch.cuda.is_available() else "needs a CUDA GPU")}
    for item in marked:
        for name, reason in reasons.items():
            if reason and item.get_closest_marker(name):
                item.add_marker(pytest.mark.skip(reason=reason))
                break


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


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """3 classes x 8 images of 40x40 px: circle, square, stripe (distinct colours)."""
    return write_class_images(tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture(scope="session")
def tiny_bundle(tiny_data, tmp_path_factory) -> Path:
    """A finished run directory: resnet18, weights none, 32 px, 1 epoch, batch 4, CPU, seed 0."""
    from toolkit.train.config import TrainConfig
    from toolkit.train.session import fit

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    cfg = TrainConfig(data_dir=str(tiny_data), out=str(out), arch="resnet18", weights="none",
                      image_size=32, epochs=1, batch_size=4, device="cpu", seed=0)
    fit(cfg, progress=False, echo=lambda *_: None)
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
