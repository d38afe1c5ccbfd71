"""A native crash in ONNX Runtime becomes a lower optimization level or an Error, never exit 139."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import assert_user_error

pytest.importorskip("onnxruntime")

# what the segfault of issue 27 does to a process, on demand: a read of address 0
SEGFAULT = "import ctypes; ctypes.string_at(0)"
SEGFAULT_AT_ALL = ("import sys, ctypes\nif sys.argv[2] == 'all': ctypes.string_at(0)\n")


def test_a_child_killed_by_a_signal_is_reported_as_a_crash(exported, monkeypatch):
    from toolkit.core import native

    graph = exported / "model.onnx"
    assert native.crashes(graph, level="all", config={}, shape=(1, 32, 32, 3)) is None
    monkeypatch.setattr(native, "PROBE", SEGFAULT)
    assert native.crashes(graph, level="all", config={}, shape=(1, 32, 32, 3)) == "SIGSEGV"


def test_a_graph_that_crashes_at_every_level_is_an_error_and_leaves_no_staging(
        exported, tmp_path, cli, monkeypatch):
    from toolkit.core import native

    root = Path(shutil.copytree(exported, tmp_path / "run"))
    before = json.loads((root / "manifest.json").read_text())
    monkeypatch.setattr(native, "PROBE", SEGFAULT)
    result = cli("export", root, "--fp16", "--max-batch", "16", "--format", "onnx")
    assert_user_error(result, "ONNX Runtime", "crashed (SIGSEGV)", "model.fp16.onnx",
                      "every optimization level")
    assert result.exit_code == 2
    assert not list(root.glob(".export-*"))  # the staged export was thrown away
    assert json.loads((root / "manifest.json").read_text()) == before


def test_a_graph_that_crashes_only_fully_optimized_runs_one_level_lower(
        exported, tmp_path, cli, monkeypatch):
    from toolkit.backends import open_backend
    from toolkit.core import native
    from toolkit.core.bundle import Bundle

    root = Path(shutil.copytree(exported, tmp_path / "run"))
    monkeypatch.setattr(native, "PROBE", SEGFAULT_AT_ALL + native.PROBE)
    result = cli("export", root, "--fp16", "--max-batch", "16", "--format", "onnx")
    assert result.exit_code == 0, result.output
    assert "crashed (SIGSEGV)" in result.output and "it runs at 'extended'" in result.output
    bundle = Bundle.load(root)
    assert bundle.entry("model.fp16.onnx").session_config == {native.LEVEL_KEY: "extended"}
    assert not bundle.entry("model.onnx").session_config  # only the FP16 graph is probed
    with open_backend("onnxruntime-fp16", bundle) as backend:  # applied where it is opened
        import onnxruntime as ort

        level = backend.session.get_session_options().graph_optimization_level
        assert level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED


def test_a_staging_folder_left_by_a_killed_export_is_removed_by_the_next(bundle_copy, cli):
    left = bundle_copy / ".export-killed"
    (left / "inner").mkdir(parents=True)
    (left / "model.onnx").write_bytes(b"half a graph")
    result = cli("export", bundle_copy, "--max-batch", "8", "--format", "onnx")
    assert result.exit_code == 0, result.output
    assert not list(bundle_copy.glob(".export-*"))
