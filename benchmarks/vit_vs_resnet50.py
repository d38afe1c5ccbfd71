"""ViT-B/16 against ResNet-50 on this CPU, in one run: training images/s, ONNX Runtime
inference images/s in FP32, FP16 and INT8, and INT8's agreement with PyTorch.

Both are trained the same way on scikit-learn's digits: from scratch (no ImageNet weights can
be downloaded here), seed 0; a fifth of each class is a test split that training and export
never see. Two settings, each one run:

  * speed, at 224 px (ViT-B/16's native size): one epoch on 20 images per class. The models
    learn nothing in that time, which does not change their speed;
  * INT8 agreement, at 64 px with the demo's recipe (4 epochs, batch 32, lr 5e-4, every
    image): models that have learnt the digits, so agreement means something.
 Each run is then exported as a user would
(`rtk export RUN --fp16 --int8`, with its search), and its three graphs are timed at batch 8,
interleaved round by round so that a drift of the machine falls on every graph alike.
INT8's agreement with PyTorch is measured on the test split, trusted or not.

  python benchmarks/vit_vs_resnet50.py --out benchmarks/cpu/vit_vs_resnet50/224px
  python benchmarks/vit_vs_resnet50.py --out benchmarks/cpu/vit_vs_resnet50/64px \
      --size 64 --per-class 0 --epochs 4 --batch-size 32 --lr 5e-4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from int8_digits import on_test_split, split_test  # noqa: E402

ARCHS = ("resnet50", "vit_b_16")
GRAPHS = {"fp32": ("onnxruntime", "model.onnx"), "fp16": ("onnxruntime-fp16", "model.fp16.onnx"),
          "int8": ("onnxruntime-int8", "model.int8.onnx")}


def train(arch: str, data: Path, out: Path, args) -> dict:
    from toolkit.core.bundle import Bundle
    from toolkit.train.config import TrainConfig
    from toolkit.train.session import fit

    start = time.perf_counter()
    fit(TrainConfig(data_dir=str(data), out=str(out), arch=arch, weights="none",
                    image_size=args.size, epochs=args.epochs, batch_size=args.batch_size,
                    lr=args.lr, augment="none", device="cpu", seed=0),
        progress=False, echo=lambda *_: None)
    metrics = Bundle.load(out).manifest.metrics
    return {"train_images_per_second": round(metrics.train_images_per_second, 2),
            "val_accuracy": metrics.val_accuracy, "seconds": round(time.perf_counter() - start, 1)}


def export(run: Path) -> dict:
    import subprocess

    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "toolkit", "export", str(run), "--fp16",
                           "--int8", "--format", "onnx", "--max-batch", "16"],
                          capture_output=True, text=True)
    artifacts = json.loads((run / "manifest.json").read_text())["artifacts"]
    return {"exit_code": proc.returncode, "seconds": round(time.perf_counter() - start, 1),
            "gates": {k: (artifacts.get(f) or {}).get("gate") for k, (_, f) in GRAPHS.items()},
            "int8_search": (artifacts.get("model.int8.onnx") or {}).get("search", {}).get("chosen"),
            "fp16_note": [line for line in (proc.stdout + proc.stderr).splitlines()
                          if "crashed" in line]}


def inference(runs: dict[str, Path], images: list[Path], *, rounds: int, seconds: float) -> dict:
    """images/s of every (arch, precision) at batch 8, interleaved over `rounds` rounds."""
    import numpy as np

    from toolkit.backends import open_backend
    from toolkit.backends.run import batches
    from toolkit.core.bundle import Bundle

    opened, stack = {}, []
    for arch, run in runs.items():
        bundle = Bundle.load(run)
        x = np.concatenate(list(batches(images[:8], bundle.preprocessing, 8)))
        for precision, (backend, _) in GRAPHS.items():
            b = open_backend(backend, bundle, "cpu", trusted_only=False)
            stack.append(b)
            b(x)  # warm-up
            opened[(arch, precision)] = (b, x)
    rates: dict = {k: [] for k in opened}
    for _ in range(rounds):
        for key, (b, x) in opened.items():
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                b(x)
                n += len(x)
            rates[key].append(n / (time.perf_counter() - start))
    for b in stack:
        b.close()
    return {f"{a}/{p}": {"images_per_second": round(statistics.median(v), 2),
                         "rounds": [round(r, 2) for r in v]} for (a, p), v in rates.items()}


def markdown(result: dict) -> str:
    rows = ["| | " + " | ".join(ARCHS) + " |", "|---|" + "---|" * len(ARCHS)]

    def line(label, get):
        rows.append(f"| {label} | " + " | ".join(get(a) for a in ARCHS) + " |")

    line("training images/s",
         lambda a: f"{result['train'][a]['train_images_per_second']:.2f}")
    for p in GRAPHS:
        line(f"inference images/s, {p.upper()} (ONNX Runtime, batch 8)",
             lambda a, p=p: f"{result['inference'][f'{a}/{p}']['images_per_second']:.2f}")
    speed = lambda a, p: result["inference"][f"{a}/{p}"]["images_per_second"]  # noqa: E731
    line("INT8 / FP32", lambda a: f"{speed(a, 'int8') / speed(a, 'fp32'):.2f}x")
    line("PyTorch top-1 (test split)",
         lambda a: f"{result['int8_test_split'][a]['reference_top1']:.2%}")
    line("INT8 agreement with PyTorch (test split)",
         lambda a: f"{result['int8_test_split'][a]['agreement']:.2%} (n={result['int8_test_split'][a]['n']})")
    line("export gates fp32/fp16/int8", lambda a: "/".join(
        str(v) for v in result["export"][a]["gates"].values()))
    line("export exit code", lambda a: str(result["export"][a]["exit_code"]))
    return (f"# ViT-B/16 against ResNet-50 on this CPU\n\n{result['setup']}\n\n"
            f"Machine: {result['cpu']}\n\n" + "\n".join(rows) + "\n")


def main() -> None:
    from toolkit.core.host import cpu_model, int8_class
    from toolkit.data.sample import write_digits

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-class", type=int, default=20, help="0: every image")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=None, help="default: the card's, scaled")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    per_class = f"{args.per_class} images per class" if args.per_class else "every image"
    result = {"setup": f"scikit-learn digits, {per_class}, {args.size} px, from scratch, "
                       f"{args.epochs} epoch(s), batch {args.batch_size}, lr "
                       f"{args.lr or 'the card default, scaled'}, seed 0; ONNX Runtime CPU, batch 8, "
                       f"{os.cpu_count()} threads, {args.rounds} interleaved rounds of "
                       f"{args.seconds:g} s (median)",
              "cpu": f"{cpu_model()}, {os.cpu_count()} cores, int8 class {int8_class()}",
              "date": time.strftime("%Y-%m-%d"), "train": {}, "export": {}, "int8_test_split": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        split_test(write_digits(work / "all", per_class=args.per_class or None), work / "train",
                   work / "test")
        runs = {arch: work / arch for arch in ARCHS}
        for arch, run in runs.items():
            result["train"][arch] = train(arch, work / "train", run, args)
            print(f"{arch}: trained {result['train'][arch]}", flush=True)
            result["export"][arch] = export(run)
            print(f"{arch}: exported {result['export'][arch]}", flush=True)
            result["int8_test_split"][arch] = on_test_split(run, work / "test")
        images = sorted((work / "test").rglob("*.png"))
        result["inference"] = inference(runs, images, rounds=args.rounds, seconds=args.seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "report.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
