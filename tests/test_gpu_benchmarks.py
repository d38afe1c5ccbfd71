"""The prepared GPU benchmark (benchmarks/gpu_run.sh, train_throughput.py), checked on CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tt():
    """benchmarks/train_throughput.py as a module."""
    spec = importlib.util.spec_from_file_location("train_throughput",
                                                  ROOT / "benchmarks" / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pipeline_timing_skips_every_prefetched_batch(tt):
    import torch

    data = torch.utils.data.TensorDataset(torch.zeros(8, 1))
    assert tt.warmup_batches(torch.utils.data.DataLoader(data, num_workers=0)) == 1
    loader = torch.utils.data.DataLoader(data, num_workers=2, prefetch_factor=4)
    assert tt.warmup_batches(loader) == 8  # 2 workers x 4 batches queued before the clock


def test_pipeline_timing_refuses_a_loader_too_short_for_the_timed_batches(tt):
    import torch

    batches = [(torch.zeros(2, 1), torch.zeros(2))] * 10
    assert tt._rate(batches, 6, "cpu", 4)["timed_batches"] == 6
    with pytest.raises(SystemExit, match="only 5 of 7 batches after skipping 5"):
        tt._rate(batches, 7, "cpu", 5)


def test_plain_fp32_baseline_turns_tf32_off_and_restores_it(tt):
    import torch

    torch.backends.cudnn.allow_tf32 = True  # cuDNN's default
    with tt.strict_fp32():
        assert not torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.allow_tf32


@pytest.mark.parametrize("status, trained", [("complete", True), ("training", False),
                                             (None, False)])
def test_parity_calls_the_model_trained_only_when_fine_tuning_completed(tt, tmp_path, status,
                                                                         trained):
    if status is not None:
        (tmp_path / "manifest.json").write_text(json.dumps({"status": status}))
    (tmp_path / "model.pt").write_bytes(b"")
    assert (tt.trained_checkpoint(str(tmp_path)) is not None) is trained
    assert tt.trained_checkpoint(None) is None


def _tree_without_git(tmp_path: Path) -> Path:
    """A copy of the script in a tree with no .git, as the GPU machine receives it."""
    tree = tmp_path / "tree"
    (tree / "benchmarks").mkdir(parents=True)
    shutil.copy(ROOT / "benchmarks" / "gpu_run.sh", tree / "benchmarks")
    return tree


def _run(tree: Path, cwd: Path, **env) -> subprocess.CompletedProcess:
    """gpu_run.sh with no budget: every stage is skipped, only the merge runs."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(["bash", str(tree / "benchmarks" / "gpu_run.sh"), "out"], cwd=cwd,
                          env={**os.environ, "PATH": path, "BUDGET_S": "0", "DEVICE": "cpu",
                               "GIT_CEILING_DIRECTORIES": str(tree.parent.parent), **env},
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_gpu_run_writes_a_relative_out_where_it_was_called_with_the_stamped_commit(tmp_path):
    tree = _tree_without_git(tmp_path)
    (tree / "benchmarks" / "GIT_COMMIT").write_text("abc123\n")
    here = tmp_path / "caller"
    here.mkdir()
    done = _run(tree, here, RTK_GIT_COMMIT="")
    assert done.returncode == 0, done.stderr
    results = json.loads((here / "out" / "results.json").read_text())
    assert results["git_commit"] == "abc123"
    assert not (tree / "out").exists()  # not resolved against the tree after its cd
    done = _run(tree, here, RTK_GIT_COMMIT="def456")
    assert json.loads((here / "out" / "results.json").read_text())["git_commit"] == "def456"
