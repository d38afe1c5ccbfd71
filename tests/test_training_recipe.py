"""The recipe checked against timm, torchvision and Ultralytics (issue 28): the learning rate
follows the batch, EMA averages BatchNorm's statistics, one checkpoint rule, --batch-size auto
under torchrun and out of memory, --resume with flags, the smaller items, TTA, and a report
that describes model.pt."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, assert_user_error

from toolkit.train import autobatch, optim, recipe
from toolkit.train.loop import Runtime, StepOptions, train_one_epoch, warmup_cosine

ROOT = Path(__file__).resolve().parents[1]
NO_EPOCHS = [a for i, a in enumerate(TINY_TRAIN)  # TINY_TRAIN without its --epochs 1
             if a != "--epochs" and (i == 0 or TINY_TRAIN[i - 1] != "--epochs")]


def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# -- 1. the learning rate follows the effective batch -----------------------------------------

def test_the_learning_rate_after_accumulate_4_follows_the_effective_batch(cli, tiny_data, tmp_path):
    run = tmp_path / "run"
    result = cli("finetune", tiny_data, "--out", run, *TINY_TRAIN, "--accumulate", "4")
    assert result.exit_code == 0, result.output
    manifest = _manifest(run)
    # the card's 5e-5 at batch 4, effective batch 4 x 4 = 16: 5e-5 x sqrt(16 / 4) = 1e-4
    assert manifest["config"]["lr"] == pytest.approx(1e-4)
    assert manifest["config"]["base_lr"] == pytest.approx(5e-5)
    assert "sqrt(16/4)" in manifest["recipe"]["lr"] and "Recipe: lr 0.0001" in result.stderr
    groups = _load(run / "last.pt")["optimizer"]["param_groups"]
    assert {g["part"]: g["initial_lr"] for g in groups} == {
        "backbone": pytest.approx(1e-4), "head": pytest.approx(1e-4)}  # from scratch: mult 1

    given = tmp_path / "given"
    result = cli("finetune", tiny_data, "--out", given, *TINY_TRAIN, "--accumulate", "4",
                 "--lr", "3e-5")
    assert result.exit_code == 0, result.output
    assert _manifest(given)["config"]["lr"] == 3e-5 and _manifest(given)["config"]["base_lr"] is None
    assert "--lr 3e-05 as given" in result.stderr


def test_the_scaled_rate_stays_in_the_cards_range():
    assert optim.scaled_lr(5e-5, 4, 4, low=1e-5, high=5e-4)[0] == 5e-5
    assert optim.scaled_lr(5e-5, 64, 4, low=1e-5, high=5e-4)[0] == pytest.approx(2e-4)
    lr, why = optim.scaled_lr(2e-4, 256, 4, low=1e-5, high=5e-4)
    assert lr == 5e-4 and "the card's maximum" in why


# -- 2. EMA averages the BatchNorm buffers ----------------------------------------------------

def test_ema_averages_the_batchnorm_buffers_and_copies_the_counter():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.Flatten(), torch.nn.LazyLinear(2))
    model(torch.randn(2, 3, 8, 8))  # materialise the lazy layer
    ema = recipe.ModelEma(model, decay=0.9998)
    for _ in range(5):  # past timm's warm-up, whose first update copies (decay 0)
        ema.update()
    bn, ema_bn = model[1], ema.module[1]
    start_mean = ema_bn.running_mean.clone()
    model.train()
    model(torch.randn(8, 3, 8, 8) * 3 + 2)  # a forward pass in train mode moves the statistics
    weight = 1 - ema.current_decay()
    ema.update()
    assert not torch.equal(ema_bn.running_mean, bn.running_mean)  # not copied
    assert torch.allclose(ema_bn.running_mean, start_mean + weight * (bn.running_mean - start_mean))
    assert torch.equal(ema_bn.num_batches_tracked, bn.num_batches_tracked)  # integers copied


# -- 3. which weights model.pt holds: tests/test_finetune.py and tests/test_recipe.py ------------

def test_without_ema_model_pt_holds_the_raw_weights(cli, tiny_data, tmp_path):
    run = tmp_path / "run"
    assert cli("finetune", tiny_data, "--out", run, *TINY_TRAIN, "--no-ema").exit_code == 0
    best, last = _load(run / "model.pt"), _load(run / "last.pt")
    assert best["weights"] == "raw" and "ema" not in last
    assert all(torch.equal(best["state_dict"][k], v) for k, v in last["state_dict"].items())
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert "raw_val_accuracy" not in rows[0]  # nothing to compare with


# -- 4. --batch-size auto: one decision under torchrun, halving on out of memory ---------------

LAUNCH = '''
import os, sys
from toolkit.data import loaders
from toolkit.train import autobatch
rank = int(os.environ["RANK"])
# each rank's own probe would disagree: rank 0 says 8, rank 1 says 2
autobatch.cpu_batch_size = lambda model, size, ema=False: (8 if rank == 0 else 2, "scripted")
real = loaders.training_loaders
def spy(*args, **kwargs):
    print(f"rank {rank} trains at batch {kwargs['batch_size']}", file=sys.stderr, flush=True)
    return real(*args, **kwargs)
loaders.training_loaders = spy
from toolkit.cli import main
main(sys.argv[1:])
'''


@pytest.mark.slow
@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="torch.distributed with gloo is not available")
def test_an_auto_batch_under_two_gloo_processes_is_rank_0s(tiny_data, tmp_path):
    launch = tmp_path / "launch.py"
    launch.write_text(LAUNCH)
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(launch), "finetune", str(tiny_data), "--out", str(run), *NO_EPOCHS,
           "--epochs", "1", "--batch-size", "auto"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rank 0 trains at batch 8" in proc.stderr
    assert "rank 1 trains at batch 8" in proc.stderr, proc.stderr  # broadcast, not its own 2
    assert _manifest(run)["config"]["batch_size"] == 8
    assert "broadcast it to all 2 processes" in _manifest(run)["recipe"]["batch_size"]


class FakeOom(RuntimeError):
    """Stands in for torch.OutOfMemoryError, which a CPU run cannot provoke safely."""


def test_halving_retries_halves_at_most_three_times():
    seen, said = [], []

    def run_at(limit):
        def run():
            if seen[-1] > limit:
                raise FakeOom
            return "ok"
        return run

    def rebuild(batch):
        seen.append(batch)

    seen.append(64)
    kwargs = dict(rebuild=rebuild, echo=said.append, is_oom=lambda e: isinstance(e, FakeOom))
    assert autobatch.halving_retries(run_at(16), 64, **kwargs) == ("ok", 16)
    assert seen == [64, 32, 16] and len(said) == 2 and "retry 2 of 3" in said[-1]
    seen[:] = [64]
    with pytest.raises(FakeOom):  # 64 -> 32 -> 16 -> 8, still too large: the error stands
        autobatch.halving_retries(run_at(4), 64, **kwargs)
    assert seen == [64, 32, 16, 8]
    seen[:] = [2]
    with pytest.raises(FakeOom):  # never below the card's minimum
        autobatch.halving_retries(run_at(1), 2, **kwargs)
    with pytest.raises(ValueError):  # anything else is not retried
        autobatch.halving_retries(lambda: int("x"), 64, **kwargs)


def test_an_out_of_memory_first_epoch_retries_at_half_the_batch(cli, tiny_data, tmp_path,
                                                                monkeypatch):
    from toolkit.train import session

    monkeypatch.setattr(autobatch, "cpu_batch_size", lambda *a, **k: (32, "scripted"))
    monkeypatch.setattr(autobatch, "is_out_of_memory", lambda e: isinstance(e, FakeOom))
    real, batches = session.train_one_epoch, []

    def tight(model, loader, *args, **kwargs):
        batches.append(loader.batch_size)
        if loader.batch_size > 8:
            raise FakeOom
        return real(model, loader, *args, **kwargs)

    monkeypatch.setattr(session, "train_one_epoch", tight)
    run = tmp_path / "run"
    result = cli("finetune", tiny_data, "--out", run, *NO_EPOCHS, "--epochs", "2",
                 "--batch-size", "auto")
    assert result.exit_code == 0, result.output
    assert batches == [32, 16, 8, 8]  # two halvings, then both epochs at 8
    assert "Out of memory in the first epoch at batch 32: retrying it at batch 16" in result.stderr
    manifest = _manifest(run)
    assert manifest["config"]["batch_size"] == 8
    assert manifest["config"]["lr"] == pytest.approx(5e-5 * math.sqrt(8 / 4))  # rescaled
    assert "halved to 8" in manifest["recipe"]["batch_size"]


# -- 5. --resume with changed flags -----------------------------------------------------------

def test_resume_applies_epochs_and_refuses_other_changed_flags(cli, tiny_data, tmp_path):
    run = tmp_path / "run"
    assert cli("finetune", tiny_data, "--out", run, *TINY_TRAIN).exit_code == 0
    refused = cli("finetune", tiny_data, "--out", run, *TINY_TRAIN, "--resume", "--lr", "1e-4",
                  "--seed", "3")
    assert_user_error(refused, "--lr 0.0001", "--seed 3", "--epochs")
    assert _load(run / "last.pt")["epoch"] == 1  # nothing ran
    same = cli("finetune", tiny_data, "--out", run, *TINY_TRAIN, "--resume")  # as started: fine
    assert same.exit_code == 0, same.output
    longer = cli("finetune", tiny_data, "--out", run, *NO_EPOCHS, "--resume", "--epochs", "2",
                 "--patience", "3")
    assert longer.exit_code == 0, longer.output
    assert "Resuming with --epochs 2 (was 1)" in longer.stderr
    assert _load(run / "last.pt")["epoch"] == 2
    assert [int(r["epoch"]) for r in csv.DictReader(open(run / "history.csv"))] == [1, 2]
    assert _manifest(run)["config"]["epochs"] == 2 and _manifest(run)["config"]["patience"] == 3


# -- 6. the smaller items ---------------------------------------------------------------------

def test_norm_weights_and_biases_get_no_weight_decay():
    from toolkit.train.model import build_model

    model = build_model("resnet18", 3, "none")
    groups = optim.param_groups(model, 1e-4, 0.1, 0.05)
    decay = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decay) == (p.ndim > 1), name  # bn*.weight, *.bias, fc.bias: none
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert {(g["part"], g["lr"]) for g in groups} == {("backbone", 1e-5), ("head", 1e-4)}


def test_the_backbone_warms_up_again_after_the_unfreeze():
    params = [torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2, 2))]
    opt = torch.optim.AdamW([{"params": [params[0]], "part": "backbone"},
                             {"params": [params[1]], "part": "head"}], lr=1.0)
    sched = warmup_cosine(opt, 100, 5, rewarm_at=20, rewarm_steps=5)
    lrs = []
    for _ in range(30):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    backbone, head = zip(*lrs)
    assert backbone[:20] == head[:20]
    assert [b / h for b, h in zip(backbone[20:25], head[20:25])] == pytest.approx(
        [0.2, 0.4, 0.6, 0.8, 1.0])
    assert backbone[25:] == head[25:]


def test_each_rank_draws_its_own_mix():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)
    rank0, rank1 = recipe.BatchMix(3, 0.2, 1.0, rank=0), recipe.BatchMix(3, 0.2, 1.0, rank=1)
    assert torch.equal(rank0(x, y, 3)[1], rank0(x, y, 3)[1])
    assert not torch.equal(rank0(x, y, 3)[1], rank1(x, y, 3)[1])


def test_mixup_off_epoch_trains_the_last_epochs_on_clean_targets(cli, tiny_data, tmp_path,
                                                                monkeypatch):
    from toolkit.train import session

    real, mixes = session.train_one_epoch, []

    def spy(*args, options, **kwargs):
        mixes.append(options.mix)
        return real(*args, options=options, **kwargs)

    monkeypatch.setattr(session, "train_one_epoch", spy)
    result = cli("finetune", tiny_data, "--out", tmp_path / "run", *NO_EPOCHS, "--epochs", "3",
                 "--mixup", "0.2", "--mixup-off-epoch", "2")
    assert result.exit_code == 0, result.output
    assert [m is not None for m in mixes] == [True, True, False]
    assert "Mixup/cutmix off from epoch 3" in result.stderr


def test_the_policies_interpolate_bilinearly_and_randaugment_is_a_choice(cli):
    from PIL import Image
    from torchvision.transforms import v2 as T

    from toolkit.data import gpu_augment
    from toolkit.data.transforms import policy, recipe as pre_recipe, train_transform

    assert policy("trivialaugmentwide").interpolation == T.InterpolationMode.BILINEAR
    ra = policy("randaugment")
    assert isinstance(ra, T.RandAugment) and ra.interpolation == T.InterpolationMode.BILINEAR
    out = train_transform(pre_recipe(image_size=32), "randaugment")(Image.new("RGB", (40, 40)))
    assert out.shape == (3, 32, 32)
    assert "randaugment" in cli("finetune", "--help").stdout
    # the batched affine op samples bilinearly: a rotated checkerboard has in-between values
    board = ((torch.arange(16)[:, None] + torch.arange(16)) % 2 * 255.0).expand(1, 3, 16, 16)
    zero = torch.zeros(1)
    rotated = gpu_augment._affine(board.clone(), {"rotate": torch.tensor([30.0]), "shear_x": zero,
                                                  "shear_y": zero, "translate_x": zero,
                                                  "translate_y": zero})
    inner = rotated[..., 4:12, 4:12]
    assert ((inner > 1) & (inner < 254)).float().mean() > 0.5
    x = torch.randint(0, 256, (32, 3, 16, 16)).float()
    a = gpu_augment.rand_augment(x.clone(), torch.Generator().manual_seed(0))
    assert torch.equal(a, gpu_augment.rand_augment(x.clone(), torch.Generator().manual_seed(0)))
    assert ((a - x).abs().flatten(1).amax(1) > 0).float().mean() > 0.6


def test_train_accuracy_under_mixup_counts_the_mixed_targets_largest_class():
    class Mix:  # every target's largest class is 2, whatever the label
        def __call__(self, x, y, step):
            return x, torch.tensor([[0.1, 0.2, 0.7]]).expand(len(y), 3).clone()

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([0.0, 0.0, 50.0]))  # always predicts class 2
    batches = [(torch.randn(4, 3, 4, 4), torch.zeros(4, dtype=torch.long)) for _ in range(2)]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    stats = train_one_epoch(model, batches, opt, scheduler=sched,
                            scaler=torch.amp.GradScaler("cpu", enabled=False),
                            rt=Runtime("cpu", None), options=StepOptions(mix=Mix()))
    assert stats["train_accuracy"] == 1.0  # against the pre-mix label 0 it would be 0


# -- 7. test-time augmentation ----------------------------------------------------------------

def test_flip_tta_averages_the_image_and_its_mirror(cli, tiny_bundle):
    from toolkit.evaluate import FlipTTA

    class LeftHalf:  # a "model" that looks at the left half only: a flip changes its answer
        name, accepts_bytes = "fake", False

        def __call__(self, x):
            return x[:, :, : x.shape[2] // 2].reshape(len(x), -1, 3).mean(1).astype(np.float32)

    x = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
    tta = FlipTTA(LeftHalf())
    want = (LeftHalf()(x) + LeftHalf()(x[:, :, ::-1])) / 2
    assert np.allclose(tta(x), want) and not np.allclose(tta(x), LeftHalf()(x))
    result = cli("eval", tiny_bundle, "--tta", "flip", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["tta"] == "flip" and report["n"] == _manifest(tiny_bundle)["data"]["val_images"]


# -- 8. the report and report/ describe model.pt ----------------------------------------------

def _shown(html: str, pattern: str) -> float:
    match = re.search(pattern + r'<span class="v" data-v="([^"]+)"', html)
    assert match, pattern
    return float(match.group(1))


@pytest.mark.slow
def test_the_report_describes_model_pt_when_the_last_epoch_is_worse(cli, tiny_data, tmp_path,
                                                                    monkeypatch):
    """Eight epochs at the card's highest lr learn the tiny colours (tests/test_finetune.py);
    a ninth whose head is then set to answer "circle" for everything validates at 1/3, so the
    best epoch is an earlier one, and every number the page and report/ show must be model.pt's."""
    from toolkit.train import session

    real = session.TrainingSession._train_epoch

    def spoiled_last(self, epoch):
        stats = real(self, epoch)
        if epoch + 1 == self.cfg.epochs:
            with torch.no_grad():
                self.model.fc.weight.zero_()
                self.model.fc.bias.copy_(torch.tensor([10.0, 0.0, 0.0]))
        return stats

    monkeypatch.setattr(session.TrainingSession, "_train_epoch", spoiled_last)
    run = tmp_path / "run"
    result = cli("finetune", tiny_data, "--out", run, *NO_EPOCHS, "--epochs", "9", "--lr", "5e-4",
                 "--no-ema")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(run / "history.csv")))
    best = _manifest(run)["metrics"]
    assert float(rows[-1]["val_accuracy"]) == pytest.approx(1 / 3)
    assert best["best_epoch"] < 9 and best["val_accuracy"] > 1 / 3  # the last is not the best
    assert _load(run / "model.pt")["epoch"] == best["best_epoch"]

    evaluated = cli("eval", run, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    ev = json.loads(evaluated.stdout)
    validation = json.loads((run / "report" / "validation.json").read_text())
    for key in ("n", "accuracy", "balanced_accuracy", "top5", "per_class", "confusion"):
        assert validation[key] == ev[key], key
    assert validation["epoch"] == best["best_epoch"] and validation["checkpoint"] == "model.pt"
    assert ev["confusion"] != [[2, 0, 0], [2, 0, 0], [2, 0, 0]]  # not the last epoch's
    assert (best["val_accuracy"], best["val_balanced_accuracy"], best["val_top5"]) == (
        ev["accuracy"], ev["balanced_accuracy"], ev["top5"])
    assert best["per_class"] == ev["per_class"]

    html = (run / "report.html").read_text()
    card = r'<div class="label">{}</div><div class="big">'
    assert _shown(html, card.format("Validation top-1")) == ev["accuracy"]
    assert _shown(html, card.format("Balanced accuracy")) == ev["balanced_accuracy"]
    assert _shown(html, card.format("Validation top-5")) == ev["top5"]
    for label, key in (("validation top-1", "accuracy"), ("balanced accuracy", "balanced_accuracy"),
                       ("validation top-5", "top5"), ("validation images", "n")):
        assert _shown(html, f"<tr><th>{label}</th><td>") == ev[key], label
    table = html.split("Per-class accuracy of model.pt")[1]  # the Data section counts images
    for name, accuracy in ev["per_class"].items():
        assert _shown(table, f'<tr><td>{name}</td><td class="r">') == accuracy, name
    assert "last epoch (9), not saved" in html  # the one last-epoch figure, labelled


def test_a_last_pt_from_before_the_weight_decay_groups_is_refused_clearly(cli, tiny_data,
                                                                          tmp_path):
    run = tmp_path / "run"
    assert cli("finetune", tiny_data, "--out", run, *NO_EPOCHS, "--epochs", "2").exit_code == 0
    state = torch.load(run / "last.pt", weights_only=True)
    state["epoch"] = 1  # an unfinished run, written when the optimizer had 2 groups
    opt = state["optimizer"]
    opt["param_groups"] = [g for g in opt["param_groups"] if g["weight_decay"] > 0]
    torch.save(state, run / "last.pt")
    result = cli("finetune", tiny_data, "--out", run, *NO_EPOCHS, "--epochs", "2", "--resume")
    assert_user_error(result, "older rtk", "2 parameter groups", "--weights")
