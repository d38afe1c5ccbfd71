"""Checkpoints load with weights_only=True; pickled code is refused, never run."""

from __future__ import annotations

import csv
import json
import os
import signal
import time

import pytest
import torch
from conftest import TINY_TRAIN, assert_user_error, fit_tiny, interrupt_training

from toolkit.train import checkpoint
from toolkit.core.errors import RtkError


class Payload:
    """A pickle that runs a shell command when unpickled (the classic checkpoint attack)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def write_malicious(path, marker):
    """A file shaped like an rtk checkpoint, with code hidden inside."""
    torch.save({"state_dict": {"fc.weight": torch.zeros(1)}, "epoch": 1, "evil": Payload(marker)},
               path)
    return path


def _plain(obj) -> bool:
    if isinstance(obj, dict):
        return all(isinstance(k, (str, int)) and _plain(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return all(_plain(v) for v in obj)
    return obj is None or isinstance(obj, (torch.Tensor, str, int, float, bool))


def test_model_pt_loads_with_weights_only(tiny_bundle):
    state = torch.load(tiny_bundle / "model.pt", map_location="cpu", weights_only=True)
    assert set(state) >= {"state_dict", "arch", "classes", "epoch", "val_accuracy"}
    assert _plain(state)
    assert all(isinstance(v, torch.Tensor) for v in state["state_dict"].values())


def test_last_pt_loads_with_weights_only(tiny_bundle):
    state = checkpoint.load(tiny_bundle / "last.pt")
    assert state["epoch"] == 1 and state["config"]["arch"] == "resnet18"
    assert _plain(state["config"]) and _plain(state["history"])


def test_payload_really_runs_when_trusted(tmp_path):
    """The control: unpickling without weights_only does run the payload."""
    marker = tmp_path / "pwned"
    path = write_malicious(tmp_path / "evil.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_library_refuses_malicious_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    path = write_malicious(tmp_path / "last.pt", marker)
    with pytest.raises(RtkError, match="was refused") as info:
        checkpoint.load(path)
    assert "weights_only=True" in info.value.hint
    assert not marker.exists()


def test_resume_refuses_malicious_last_pt(cli, tiny_data, bundle_copy, tmp_path):
    marker = tmp_path / "pwned"
    write_malicious(bundle_copy / "last.pt", marker)
    result = cli("finetune", tiny_data, "--out", bundle_copy, *TINY_TRAIN, "--resume")
    assert_user_error(result, "last.pt was refused")
    assert result.exit_code == 2
    assert not marker.exists()


def test_weights_path_refuses_malicious_pickle(cli, tiny_data, tmp_path):
    marker = tmp_path / "pwned"
    weights = write_malicious(tmp_path / "weights.pt", marker)
    out = tmp_path / "run"
    result = cli("finetune", tiny_data, "--out", out, *TINY_TRAIN, "--weights", weights)
    assert_user_error(result, "weights.pt was refused")
    assert not marker.exists()
    assert not (out / "model.pt").exists()


def test_truncated_checkpoint_is_a_clean_error(tiny_bundle, tmp_path):
    data = (tiny_bundle / "last.pt").read_bytes()
    broken = tmp_path / "last.pt"
    broken.write_bytes(data[: len(data) // 3])
    with pytest.raises(RtkError, match="not a readable checkpoint"):
        checkpoint.load(broken)


def test_weights_path_accepts_an_rtk_model_pt(tiny_bundle):
    """Start from an earlier run: every layer but the (new) head comes from its model.pt."""
    from toolkit.train.model import build_model

    saved = torch.load(tiny_bundle / "model.pt", weights_only=True)["state_dict"]
    model = build_model("resnet18", 5, str(tiny_bundle / "model.pt"))
    state = model.state_dict()
    assert torch.equal(state["conv1.weight"], saved["conv1.weight"])
    assert torch.equal(state["layer4.1.bn2.running_var"], saved["layer4.1.bn2.running_var"])
    assert state["fc.weight"].shape == (5, 512)


def test_weights_of_another_arch_are_refused(tiny_bundle):
    from toolkit.train.model import build_model

    with pytest.raises(RtkError, match="does not match resnet34"):
        build_model("resnet34", 3, str(tiny_bundle / "model.pt"))


# -- resume after an interruption ------------------------------------------------------------

RESUME_EPOCHS = 3


def _train_args(data, out, epochs=RESUME_EPOCHS):
    return ["finetune", data, "--out", out, "--arch", "resnet18", "--weights", "none",
            "--image-size", "32", "--epochs", str(epochs), "--batch-size", "4", "--device", "cpu",
            "--no-progress"]


def _wait_for_epoch(proc, last_pt, epoch: int, timeout: float = 180.0) -> None:
    """Poll until `last_pt` records at least `epoch` finished epochs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"training ended early:\n{proc.communicate()[1]}"
        if last_pt.is_file():
            try:
                if torch.load(last_pt, weights_only=True)["epoch"] >= epoch:
                    return
            except (RuntimeError, EOFError):  # replaced while we read it: look again
                pass
        time.sleep(0.05)
    pytest.fail(f"no last.pt with epoch {epoch} after {timeout} s")


def _history(run) -> list[dict]:
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def _history_epochs(run):
    with open(run / "history.csv") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, module_tmp):
    """The reference: the same 3-epoch run, never interrupted."""
    out = module_tmp("uninterrupted") / "run"
    fit_tiny(tiny_data, out, epochs=RESUME_EPOCHS)
    return out


@pytest.mark.slow
def test_resume_after_kill_9_finishes_the_run_exactly(cli, rtk_process, tiny_data, tmp_path,
                                                      uninterrupted):
    run = tmp_path / "run"
    proc = rtk_process(_train_args(tiny_data, run))
    _wait_for_epoch(proc, run / "last.pt", 1)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the DataLoader workers too
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    done = torch.load(run / "last.pt", weights_only=True)["epoch"]
    assert 1 <= done < RESUME_EPOCHS
    assert json.loads((run / "manifest.json").read_text())["status"] == "training"

    result = cli("finetune", tiny_data, "--out", run, "--resume", "--no-progress")
    assert result.exit_code == 0, result.output
    assert f"Resuming at epoch {done + 1}" in result.stderr
    assert _history_epochs(run) == list(range(1, RESUME_EPOCHS + 1))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["epoch"] == RESUME_EPOCHS and last["step"] == 0
    # an epoch-boundary resume replays data order and augmentation: bit-identical weights
    ref = torch.load(uninterrupted / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(ref[k], v) for k, v in last["state_dict"].items())


@pytest.mark.slow
def test_ctrl_c_saves_progress_and_exits_130(cli, rtk_process, tiny_data, tmp_path):
    run = tmp_path / "run"
    epochs = 4
    proc = rtk_process(_train_args(tiny_data, run, epochs))
    _wait_for_epoch(proc, run / "last.pt", 1)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Error: Interrupted during epoch" in stderr
    assert f"--out {run} --resume" in stderr  # the hint says how to continue
    assert "Traceback" not in stderr
    saved = torch.load(run / "last.pt", weights_only=True)
    assert 1 <= saved["epoch"] < epochs

    result = cli("finetune", tiny_data, "--out", run, "--resume", "--no-progress")
    assert result.exit_code == 0, result.output
    assert _history_epochs(run) == list(range(1, epochs + 1))
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == epochs
    assert json.loads((run / "manifest.json").read_text())["status"] == "complete"


def _interrupted(fit_call):
    with pytest.raises(RtkError, match="Interrupted during epoch") as info:
        fit_call()
    assert info.value.exit_code == 130 and "--resume" in info.value.hint


@pytest.mark.slow
def test_mid_epoch_interrupt_resumes_exactly(tiny_data, tmp_path, uninterrupted, monkeypatch):
    """Ctrl-C after batch 2 of epoch 2: the resumed run skips exactly the batches done."""
    from toolkit.train import session

    real = interrupt_training(monkeypatch, epoch=2, step=2)
    _interrupted(lambda: fit_tiny(tiny_data, tmp_path / "run", epochs=RESUME_EPOCHS))
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert (saved["epoch"], saved["step"]) == (1, 2)

    monkeypatch.setattr(session, "train_one_epoch", real)
    fit_tiny(tiny_data, tmp_path / "run", epochs=RESUME_EPOCHS, resume=True)
    ref = torch.load(uninterrupted / "last.pt", weights_only=True)["state_dict"]
    got = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(ref[k], v) for k, v in got.items())
    assert _history_epochs(tmp_path / "run") == [1, 2, 3]
    # the interrupted epoch's statistics cover all its batches, not only those after the resume
    for want, have in zip(_history(uninterrupted), _history(tmp_path / "run"), strict=True):
        for key in ("train_loss", "train_accuracy", "val_accuracy"):
            assert float(have[key]) == pytest.approx(float(want[key]), abs=1e-6), key


@pytest.mark.slow
def test_interrupt_during_evaluation_does_not_duplicate_history(tiny_data, tmp_path, monkeypatch):
    from toolkit.train import validation as session  # where evaluations write report/

    real = session.write_bundle_files

    def interrupt_second_evaluation(bundle, history, evaluation):
        if len(history) == 2:
            raise KeyboardInterrupt
        real(bundle, history, evaluation)

    monkeypatch.setattr(session, "write_bundle_files", interrupt_second_evaluation)
    _interrupted(lambda: fit_tiny(tiny_data, tmp_path / "run", epochs=2))
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["step"] > 0  # epoch 2 trained, not yet evaluated
    monkeypatch.setattr(session, "write_bundle_files", real)
    bundle = fit_tiny(tiny_data, tmp_path / "run", epochs=2, resume=True)  # as it was started
    assert _history_epochs(tmp_path / "run") == [1, 2]
    assert bundle.manifest.status == "complete"
    second = _history(tmp_path / "run")[1]  # trained before the interrupt, evaluated after
    assert float(second["train_loss"]) > 0 and float(second["train_accuracy"]) > 0
