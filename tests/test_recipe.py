"""The fine-tuning recipe: each option shown to have done something, on tiny CPU runs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, assert_user_error, fit_tiny, write_class_images

from toolkit.train import autobatch, recipe
from toolkit.train.loop import Runtime, StepOptions, optimizer_steps, train_one_epoch, warmup_cosine

CPU = Runtime("cpu", None)


def _linear():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))


def _batches(n: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 4, 4, generator=g), torch.randint(0, 3, (size,), generator=g))
            for _ in range(n)]


def _sgd_epoch(model, batches, options=None):
    """One epoch with plain SGD (lr 1, constant), so a weight change is minus the gradient."""
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    train_one_epoch(model, batches, opt, scheduler=sched, scaler=scaler, rt=CPU, options=options)
    return sched


def test_accumulated_gradients_equal_the_large_batch():
    small, large = _linear(), _linear()
    batches = _batches(4, 2)
    sched = _sgd_epoch(small, batches, StepOptions(accumulate=4))
    _sgd_epoch(large, [(torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))])
    for a, b in zip(small.parameters(), large.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert not torch.equal(small[1].weight, _linear()[1].weight)  # it did train
    assert sched.last_epoch == 1  # the schedule counted one optimizer step, not four
    assert optimizer_steps(10, 4) == 3 and optimizer_steps(8, 1) == 8


def test_mixup_and_cutmix_mix_the_loss_targets(monkeypatch):
    seen = []
    real = torch.nn.CrossEntropyLoss

    class Spy(real):
        def forward(self, logits, target):
            seen.append(target.detach().clone())
            return super().forward(logits, target)

    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", Spy)
    for mix in (recipe.BatchMix(3, 0.2, 0.0), recipe.BatchMix(3, 0.0, 1.0)):
        seen.clear()
        _sgd_epoch(_linear(), _batches(3, 8), StepOptions(mix=mix, label_smoothing=0.1))
        for target in seen:
            assert target.shape == (8, 3) and target.dtype.is_floating_point
            assert torch.allclose(target.sum(1), torch.ones(8))
        assert any(((t > 0) & (t < 1)).any() for t in seen)  # soft: two classes mixed
    x, y = _batches(1, 8)[0]
    mix = recipe.BatchMix(3, 0.2, 1.0)
    a, b = mix(x, y, 5), mix(x, y, 5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # seeded per batch


def test_ema_differs_from_raw_and_follows_the_decay_warmup():
    model = _linear()
    ema = recipe.ModelEma(model, decay=0.9998)
    start = ema.module[1].weight.clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for x, y in _batches(20, 4):
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        ema.update()
    w, e = model[1].weight, ema.module[1].weight
    assert not torch.equal(w, e) and not torch.equal(e, start)  # between start and raw
    assert (e - w).abs().max() < (start - w).abs().max()
    assert ema.updates == 20 and 0.8 < ema.current_decay() < 0.9998  # 1 - 21**-0.75
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_frozen_backbone_weights_are_unchanged():
    from toolkit.train.model import build_model

    model = build_model("resnet18", 3, "none")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipe.set_backbone_frozen(model, True)
    opt = torch.optim.AdamW([p for p in model.parameters()], lr=1e-2)
    sched = warmup_cosine(opt, 2, 1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    batches = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])) for _ in range(2)]
    train_one_epoch(model, batches, opt, scheduler=sched, scaler=scaler, rt=CPU,
                    options=StepOptions(after_train_mode=recipe.frozen_eval))
    after = model.state_dict()
    head = {"fc.weight", "fc.bias"}
    assert all(not torch.equal(before[k], after[k]) for k in head)  # the head trained
    assert all(torch.equal(before[k], after[k]) for k in before if k not in head)  # BN too
    recipe.set_backbone_frozen(model, False)
    assert all(p.requires_grad for p in model.parameters())


def test_recipe_defaults_follow_the_weights_and_the_augmentation():
    from toolkit.train.config import TrainConfig, resolve

    base = dict(data_dir="d", out="o", epochs=3)
    pre = resolve(TrainConfig(**base, weights="imagenet"), 100, "cpu")
    assert (pre.freeze_epochs, pre.backbone_lr_mult, pre.ema) == (1, 0.1, True)
    scratch = resolve(TrainConfig(**base, weights="none"), 100, "cpu")
    assert (scratch.freeze_epochs, scratch.backbone_lr_mult) == (0, 1.0)
    one = resolve(TrainConfig(data_dir="d", out="o", weights="imagenet"), 100, "cpu")
    assert one.freeze_epochs == 0  # a one-epoch run would never train the backbone
    heavy = resolve(TrainConfig(**base, augment="heavy"), 100, "cpu")
    assert (heavy.mixup, heavy.cutmix) == (0.2, 1.0)
    standard = resolve(TrainConfig(**base), 5000, "cpu")  # the size picks --augment standard
    assert (standard.augment, standard.mixup, standard.cutmix) == ("standard", 0.0, 0.0)
    small = resolve(TrainConfig(data_dir="d", out="o", preset="auto"), 300, "cpu")
    assert small.ema and small.patience == 5 and small.augment == "heavy"


def test_balance_picks_by_the_imbalance_ratio():
    assert recipe.pick_balance("auto", [30, 10, 12], 1)[0] == "none"  # 3.0x: not over 3x
    method, why = recipe.pick_balance("auto", [40, 10, 3], 1)
    assert method == "sampler" and "13.3x" in why
    assert recipe.pick_balance("auto", [40, 10, 3], 2)[0] == "weights"
    assert recipe.class_weights([30, 10]) == [40 / 60, 40 / 20]
    labels = [0] * 90 + [1] * 10
    sampler = recipe.BalancedSampler(labels, seed=0)
    drawn = np.bincount([labels[i] for i in sampler], minlength=2)
    assert 35 <= drawn[1] <= 65  # about half, not a tenth
    assert list(sampler) == list(sampler)  # seeded by (seed, epoch)


def test_gpu_path_policy_and_erasing_change_the_batch():
    from toolkit.data.gpu_augment import random_erasing, trivial_augment

    x = torch.randint(0, 256, (64, 3, 16, 16)).float()  # uint8 values, as after the crop
    out = trivial_augment(x.clone(), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 255
    changed = (out - x).abs().flatten(1).amax(1) > 0
    assert 0.6 < changed.float().mean() < 1.0  # one op each; identity (and no-ops) leave some
    erased = random_erasing(x.clone(), 1.0, torch.Generator().manual_seed(0))
    assert ((erased == 0).flatten(1).any(1)).float().mean() > 0.9


def test_cpu_batch_size_is_picked_by_memory():
    from toolkit.train.model import build_model

    batch, why = autobatch.cpu_batch_size(build_model("resnet18", 3, "none"), 32)
    assert batch in autobatch.BATCH_CANDIDATES and "picked by memory" in why
    assert autobatch.saved_bytes_per_image(build_model("resnet18", 3, "none"), 64) > \
        autobatch.saved_bytes_per_image(build_model("resnet18", 3, "none"), 32)


# -- whole runs ---------------------------------------------------------------------------

def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _scripted_accuracy(monkeypatch, raw, ema=None):
    """Validation accuracies by epoch for the raw (and EMA) weights, in place of measured ones."""
    from toolkit.train import session, validation

    calls = []

    def scripted(self):
        v = validation.validate(self.model, self.ema, self.val_loader, self.rt, self.classes)
        i = len(calls)
        calls.append(i)
        table = ema if v.weights == "ema" else raw
        v.evaluation["accuracy"] = v.evaluation["balanced_accuracy"] = table[i]
        if v.raw is not None:
            v.raw["raw_val_accuracy"] = v.raw["raw_val_balanced_accuracy"] = raw[i]
        return v

    monkeypatch.setattr(session.TrainingSession, "_validate", scripted)


@pytest.mark.slow
def test_with_the_ema_on_its_weights_are_the_model_even_when_raw_scores_higher(
        tiny_data, tmp_path, monkeypatch):
    """No best-of-two: the EMA alone picks model.pt and drives --patience; raw is history."""
    _scripted_accuracy(monkeypatch, raw=[0.4, 0.9], ema=[0.6, 0.5])
    fit_tiny(tiny_data, tmp_path / "run", epochs=2, balance="none")
    best, last = _load(tmp_path / "run" / "model.pt"), _load(tmp_path / "run" / "last.pt")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert best["weights"] == "ema" and best["epoch"] == 1  # not epoch 2's raw 0.9
    assert manifest["metrics"]["weights"] == "ema" and manifest["metrics"]["best_epoch"] == 1
    assert manifest["metrics"]["val_accuracy"] == 0.6
    raw, ema = last["state_dict"], last["ema"]["state_dict"]
    assert any(not torch.equal(raw[k], ema[k]) for k in raw if raw[k].is_floating_point())
    rows = list(csv.DictReader(open(tmp_path / "run" / "history.csv")))
    assert [r["weights"] for r in rows] == ["ema", "ema"]
    assert [float(r["raw_val_accuracy"]) for r in rows] == [0.4, 0.9]  # kept for comparison
    assert [float(r["val_accuracy"]) for r in rows] == [0.6, 0.5]


@pytest.mark.slow
def test_early_stopping_keeps_the_best_epoch_and_resume_respects_it(cli, tiny_data, tmp_path,
                                                                     monkeypatch):
    _scripted_accuracy(monkeypatch, raw=[0.5, 0.9, 0.4, 0.3, 0.2])
    run = tmp_path / "run"
    fit_tiny(tiny_data, run, epochs=5, patience=1, ema=False, balance="none")
    manifest = json.loads((run / "manifest.json").read_text())
    best, last = _load(run / "model.pt"), _load(run / "last.pt")
    assert best["epoch"] == 2 and manifest["metrics"]["best_epoch"] == 2
    assert manifest["metrics"]["stopped_epoch"] == 3 and last["epoch"] == 3
    assert any("stopped after epoch 3" in d for d in manifest["diagnosis"])
    assert any(not torch.equal(best["state_dict"][k], v) for k, v in last["state_dict"].items()
               if v.is_floating_point())  # epoch 3 trained on; model.pt stayed at epoch 2
    result = cli("finetune", tiny_data, "--out", run, *TINY_TRAIN, "--resume")
    assert result.exit_code == 0, result.output
    assert "nothing left to train" in result.stderr
    assert _load(run / "last.pt")["epoch"] == 3


def test_imbalanced_run_balances_and_reports_balanced_accuracy(cli, tmp_path):
    data = write_class_images(tmp_path / "data", n=12)
    for path in sorted((data / "stripe").iterdir())[3:]:  # 12 : 12 : 3
        path.unlink()
    run = tmp_path / "run"
    result = cli("finetune", data, "--out", run, *TINY_TRAIN, "--label-smoothing", "0.1",
                 "--accumulate", "2")
    assert result.exit_code == 0, result.output
    assert "--balance auto: sampler" in result.stderr and "effective batch 8" in result.stderr
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["balance"] == "sampler"
    assert manifest["metrics"]["monitor"] == "balanced_accuracy"
    assert 0 <= manifest["metrics"]["val_balanced_accuracy"] <= 1
    row = next(csv.DictReader(open(run / "history.csv")))
    assert 0 <= float(row["val_balanced_accuracy"]) <= 1
    assert 0 <= float(row["train_balanced_accuracy"]) <= 1


def test_config_file_sets_options_and_flags_win(cli, tiny_data, tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("seed: 5\nlabel-smoothing: 0.1\nno-progress: true\n"
                      "batch_size: auto\nema: false\n")
    run = tmp_path / "run"
    result = cli("finetune", tiny_data, "--config", config, "--out", run, "--arch", "resnet18",
                 "--weights", "none", "--image-size", "32", "--device", "cpu", "--seed", "3")
    assert result.exit_code == 0, result.output
    cfg = json.loads((run / "manifest.json").read_text())["config"]
    assert cfg["seed"] == 3 and cfg["label_smoothing"] == 0.1 and cfg["ema"] is False
    assert isinstance(cfg["batch_size"], int) and cfg["config_file"] == str(config)
    assert "--batch-size auto" in result.stderr and "picked by memory" in result.stderr
    config.write_text("learning-rate: 1\n")
    bad = cli("finetune", tiny_data, "--config", config, "--out", tmp_path / "bad")
    assert bad.exit_code != 0 and "unknown option(s) learning_rate" in bad.output


def test_recipe_values_out_of_range_are_refused(cli, tiny_data, tmp_path):
    result = cli("finetune", tiny_data, "--out", tmp_path / "r", *TINY_TRAIN,
                 "--label-smoothing", "1.5")
    assert_user_error(result, "--label-smoothing 1.5")


@pytest.mark.parametrize("flag", ["--ema", "--label-smoothing", "--mixup", "--cutmix",
                                  "--patience", "--freeze-epochs", "--backbone-lr-mult",
                                  "--accumulate", "--balance", "--config", "auto"])
def test_help_shows_every_recipe_option(cli, flag):
    assert flag in cli("finetune", "--help").stdout


def test_the_batch_size_probe_leaves_batchnorm_statistics_alone():
    """--batch-size auto runs the model in train mode; the pretrained running stats survive."""
    import torch
    from torchvision import models

    model = models.resnet18(weights=None, num_classes=3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.fill_(5.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    autobatch.cpu_batch_size(model, 32)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
