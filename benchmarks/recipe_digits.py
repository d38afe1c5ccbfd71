"""The recipe's learning-rate scaling and EMA buffer averaging, each on its own, on real images:
scikit-learn's digits, ResNet-18 from scratch at 32 px on the CPU, fixed seed.

A fifth of each class is set aside first as a test split that training never sees (the rest is
the run's data, with its own 80/20 train/validation split). Four runs differ in one thing each
from the recipe as it now is:

  now          no --lr: the card's 5e-5 at batch 4 scaled to the effective batch 32 by the
               square-root rule (1.41e-4); EMA averages BatchNorm's buffers
  lr-unscaled  --lr 5e-5 (the rate before the scaling: the same at every batch)
  ema-copies   the EMA copies BatchNorm's buffers from the raw model (the former update)
  before       both former behaviours

Each run's model.pt (the EMA weights, the checkpoint rule) is scored on the test split, plain
and with `rtk eval --tta flip` (the logits of the image and its mirror averaged).

  python benchmarks/recipe_digits.py --out benchmarks/cpu/recipe_digits.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from int8_digits import split_test  # noqa: E402

VARIANTS = {"now": (None, False), "lr-unscaled": (5e-5, False), "ema-copies": (None, True),
            "before": (5e-5, True)}  # name: (--lr, EMA copies the buffers)


@contextmanager
def ema_copies_buffers():
    """ModelEma's former update: parameters averaged, every buffer copied from the raw model."""
    import torch

    from toolkit.train.recipe import ModelEma

    def update(self):
        with torch.no_grad():
            weight = 1.0 - self.current_decay()
            self.updates += 1
            params = {id(p) for p in self.module.parameters()}
            for e, s in zip(self._ema, self._src):
                e.lerp_(s, weight) if id(e) in params else e.copy_(s)
            for e, s in self._copied:
                e.copy_(s)

    real, ModelEma.update = ModelEma.update, update
    try:
        yield
    finally:
        ModelEma.update = real


def one_run(work: Path, name: str, lr: float | None, copies: bool, epochs: int) -> dict:
    from toolkit.core.bundle import Bundle
    from toolkit.evaluate import evaluate
    from toolkit.train.config import TrainConfig
    from toolkit.train.session import fit

    start = time.perf_counter()
    with ema_copies_buffers() if copies else nullcontext():
        fit(TrainConfig(data_dir=str(work / "train"), out=str(work / name), arch="resnet18",
                        weights="none", image_size=32, epochs=epochs, batch_size=32, lr=lr,
                        augment="none", device="cpu", seed=0),
            progress=False, echo=lambda *_: None)
    seconds = time.perf_counter() - start
    bundle = Bundle.load(work / name)
    m, cfg = bundle.manifest.metrics, bundle.manifest.config
    test = {tta: evaluate(bundle, work / "test", tta=tta) for tta in ("none", "flip")}
    return {"lr": cfg["lr"], "base_lr": cfg["base_lr"], "ema_buffers": "copied" if copies
            else "averaged", "best_epoch": m.best_epoch, "weights": m.weights,
            "val_balanced_accuracy": m.val_balanced_accuracy,
            "test_balanced_accuracy": test["none"]["balanced_accuracy"],
            "test_accuracy": test["none"]["accuracy"],
            "test_balanced_accuracy_tta_flip": test["flip"]["balanced_accuracy"],
            "test_accuracy_tta_flip": test["flip"]["accuracy"], "train_seconds": round(seconds, 1)}


def main() -> None:
    import torch

    from toolkit.data.sample import write_digits

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        split_test(write_digits(work / "all"), work / "train", work / "test")
        for name, (lr, copies) in VARIANTS.items():
            results[name] = one_run(work, name, lr, copies, args.epochs)
            print(name, json.dumps(results[name]), flush=True)
        test_images = sum(1 for _ in (work / "test").rglob("*.png"))
    result = {"data": "scikit-learn digits, 1797 images; every 5th image per class is the test "
                      "split, the rest the run's data (80/20 train/validation)",
              "model": f"resnet18 from scratch, 32 px, batch 32, {args.epochs} epochs, "
                       "--augment none, seed 0, CPU",
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "test_images": test_images, "variants": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render(result))
    print(render(result))


def render(r: dict) -> str:
    lines = [f"# The recipe's learning-rate scaling and EMA buffers: {r['model']}", "",
             f"{r['data']}; {r['test_images']} test images, {r['threads']} threads, torch "
             f"{r['torch']}. model.pt holds the EMA weights (the checkpoint rule).", "",
             "| variant | lr | EMA's BatchNorm buffers | best epoch | val balanced | "
             "test balanced | test balanced, TTA flip | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, x in r["variants"].items():
        lines.append(f"| {name} | {x['lr']:.3g} | {x['ema_buffers']} | {x['best_epoch']} "
                     f"| {x['val_balanced_accuracy']:.2%} | {x['test_balanced_accuracy']:.2%} "
                     f"| {x['test_balanced_accuracy_tta_flip']:.2%} | {x['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
