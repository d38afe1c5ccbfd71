"""The fine-tuning recipe, measured (CPU is enough for both stages):

- imbalance: scikit-learn's real digits; a balanced test split of --test-per-class images per
  class is held out, and classes 5-9 of the rest are cut to a tenth. `rtk finetune` runs with
  --balance none and --balance auto for each seed (the same seed, split and settings), and
  each run's model.pt is evaluated on the balanced test split: accuracy and balanced accuracy.
- overhead: one epoch of rtk's training step (toolkit.train.loop.train_one_epoch, as `rtk finetune`
  runs it) with the recipe's new defaults (EMA on) against the step without EMA, on the same
  pre-decoded batches, interleaved A,B,A,B... in one process; images/s and their ratio.

    python benchmarks/finetune_recipe.py imbalance --seeds 0 1 2 --out /tmp/imb
    python benchmarks/finetune_recipe.py overhead --archs resnet18 resnet50 --image-size 64
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from toolkit.core.bundle import Bundle
from toolkit.evaluate import evaluate
from toolkit.train.loop import Runtime, StepOptions, make_optimizer, train_one_epoch
from toolkit.core.host import pick_amp_dtype
from toolkit.train.loop import warmup_cosine
from toolkit.train.recipe import ModelEma
from toolkit.data.sample import write_digits
from toolkit.train.config import TrainConfig
from toolkit.train.session import fit


def make_imbalanced(root: Path, test_per_class: int, cut: tuple[int, ...], keep: float,
                    per_class: int = 0) -> tuple:
    """(train dir, balanced test dir) from the digits."""
    digits = root / "digits"
    if not digits.is_dir():
        write_digits(digits, size=32)
    train, test = root / "train", root / "test"
    for d in (train, test):
        shutil.rmtree(d, ignore_errors=True)
    for folder in sorted(digits.iterdir()):
        files = sorted(folder.iterdir())
        held, rest = files[:test_per_class], files[test_per_class:]
        rest = rest[:per_class] if per_class else rest
        if int(folder.name) in cut:
            rest = rest[:max(2, round(len(rest) * keep))]
        for dest, chosen in ((test, held), (train, rest)):
            (dest / folder.name).mkdir(parents=True)
            for f in chosen:
                shutil.copy(f, dest / folder.name / f.name)
    return train, test


def imbalance(args) -> dict:
    root = Path(args.out)
    train, test = make_imbalanced(root, args.test_per_class, tuple(args.cut), args.keep,
                                  args.per_class)
    counts = {d.name: len(list(d.iterdir())) for d in sorted(train.iterdir())}
    rows = []
    for seed in args.seeds:
        for balance in ("none", "auto"):
            out = root / f"run_{balance}_{seed}"
            shutil.rmtree(out, ignore_errors=True)
            cfg = TrainConfig(data_dir=str(train), out=str(out), arch=args.arch, weights="none",
                              image_size=32, epochs=args.epochs, batch_size=args.batch_size,
                              lr=args.lr, augment=args.augment, device="cpu", seed=seed,
                              balance=balance, amp=not args.no_amp)
            start = time.perf_counter()
            bundle = fit(cfg, progress=False, echo=lambda *_: None)
            r = evaluate(Bundle.load(out), test)
            rows.append({"seed": seed, "balance": balance,
                         "resolved": bundle.manifest.config["balance"],
                         "test_accuracy": r["accuracy"],
                         "test_balanced_accuracy": r["balanced_accuracy"],
                         "test_recall_cut_classes": statistics.mean(
                             r["per_class"][str(c)] for c in args.cut),
                         "seconds": round(time.perf_counter() - start, 1)})
            print(json.dumps(rows[-1]), flush=True)
    gain = [b["test_balanced_accuracy"] - a["test_balanced_accuracy"]
            for a, b in zip(rows[::2], rows[1::2])]
    return {"train_counts": counts, "test_per_class": args.test_per_class, "runs": rows,
            "balanced_accuracy_gain_auto_over_none": gain,
            "settings": {k: v for k, v in vars(args).items() if k != "func"}}


def overhead(args) -> dict:
    torch.set_num_threads(args.threads)
    rt = Runtime("cpu", pick_amp_dtype("cpu", True))
    result = {}
    for arch in args.archs:
        from toolkit.train.model import build_model

        g = torch.Generator().manual_seed(0)
        batches = [(torch.randn(args.batch_size, 3, args.image_size, args.image_size,
                                generator=g).contiguous(memory_format=torch.channels_last),
                    torch.randint(0, 10, (args.batch_size,), generator=g))
                   for _ in range(args.steps)]
        rates = {"ema_off": [], "ema_on": []}
        before = _loop_before(args.baseline_loop)
        if before is not None:
            rates["before"] = []
        model = build_model(arch, 10, "none").to(memory_format=torch.channels_last)
        ema = ModelEma(model)
        opt = make_optimizer(model.parameters(), 5e-5, 0.05, device="cpu")
        sched = warmup_cosine(opt, 10**6, 1)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        train_one_epoch(model, batches[:2], opt, scheduler=sched, scaler=scaler, rt=rt)  # warm-up, not timed
        names = list(rates)
        for r in range(args.repeats):
            # interleaved, the order rotated each repeat so no arm always follows another
            for name in names[r % len(names):] + names[:r % len(names)]:
                options = StepOptions(ema=ema if name == "ema_on" else None)
                t = time.perf_counter()
                if name == "before":
                    before.train_one_epoch(model, batches, opt, scheduler=sched, scaler=scaler, rt=rt)
                else:
                    train_one_epoch(model, batches, opt, scheduler=sched, scaler=scaler, rt=rt,
                                    options=options)
                rates[name].append(len(batches) * args.batch_size / (time.perf_counter() - t))
        t = time.perf_counter()
        for _ in range(20):
            ema.update()
        update_ms = (time.perf_counter() - t) / 20 * 1e3
        med = {k: statistics.median(v) for k, v in rates.items()}
        result[arch] = {"images_per_second": rates, "median": med,
                        "ratio_ema_on_over_off": med["ema_on"] / med["ema_off"],
                        **({"ratio_ema_on_over_before": med["ema_on"] / med["before"]}
                           if before is not None else {}),
                        "ema_update_ms": update_ms,
                        # robust to a busy machine: the update against the least disturbed
                        # arm's step time, same run
                        "ema_update_share_of_step": update_ms / 1e3 * max(med.values())
                        / args.batch_size}
        print(json.dumps({arch: result[arch]}), flush=True)
    return {"overhead": result, "settings": {k: v for k, v in vars(args).items()
                                             if k != "func"}}


def _loop_before(path: str | None):
    """toolkit/train/loop.py as it was before the recipe (e.g. `git show 4fd1d27:toolkit/train/loop.py`),
    imported as a module of the toolkit package, or None."""
    if not path:
        return None
    import importlib.util

    import sys

    spec = importlib.util.spec_from_file_location("toolkit._loop_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(required=True)
    a = sub.add_parser("imbalance")
    a.add_argument("--out", default="/tmp/rtk_imbalance")
    a.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a.add_argument("--cut", type=int, nargs="+", default=[5, 6, 7, 8, 9])
    a.add_argument("--keep", type=float, default=0.1)
    a.add_argument("--test-per-class", type=int, default=40)
    a.add_argument("--per-class", type=int, default=0,
                   help="cap each class's training images first (0: all)")
    a.add_argument("--no-amp", action="store_true", help="FP32 (faster for tiny CPU models)")
    a.add_argument("--arch", default="resnet18")
    a.add_argument("--epochs", type=int, default=6)
    a.add_argument("--batch-size", type=int, default=16)
    a.add_argument("--lr", type=float, default=5e-4)
    a.add_argument("--augment", default="light")
    a.add_argument("--json", help="also write the report here")
    a.set_defaults(func=imbalance)
    b = sub.add_parser("overhead")
    b.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    b.add_argument("--image-size", type=int, default=64)
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--steps", type=int, default=8)
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--baseline-loop", help="the loop.py of the code before the recipe")
    b.add_argument("--json", help="also write the report here")
    b.set_defaults(func=overhead)
    args = p.parse_args()
    report = args.func(args)
    print(json.dumps(report, indent=2))
    if getattr(args, "json", None):
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
