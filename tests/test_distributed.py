"""`torchrun -m toolkit finetune`: two CPU processes (gloo) make one valid run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist


@pytest.mark.slow
@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                    reason="torch.distributed with gloo is not available")
def test_torchrun_two_cpu_processes(cli, tiny_data, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "toolkit", "finetune", str(tiny_data), "--out", str(run), "--arch", "resnet18",
           "--weights", "none", "--image-size", "32", "--epochs", "2", "--batch-size", "4",
           "--device", "cpu", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 process(es)" in proc.stderr
    assert proc.stdout.count("val_accuracy=") == 1  # only rank 0 reports
    assert "Traceback" not in proc.stderr

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["data"]["train_images"] + manifest["data"]["val_images"] == 24
    with open(run / "history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]
    best = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in best["state_dict"])  # DDP wrapper unwrapped
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2
    assert not list(run.rglob("*.tmp"))

    result = cli("eval", run, "--json")  # the bundle serves like any single-process run
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n"] == manifest["data"]["val_images"]
