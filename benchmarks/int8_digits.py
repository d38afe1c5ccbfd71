"""INT8 on real images: scikit-learn's handwritten digits, a model whose single-shot INT8 fails.

A ResNet-18 is trained from scratch on the digits (32 px); then, as in
tests/test_int8_search.py, its last block is made to emit a quarter of its channels near 1000,
which the classifier ignores (the float model is unchanged in accuracy, but one per-tensor
INT8 scale stretched to 1000 flattens the informative channels). A fifth of each class is set
aside first as a test split that neither training nor the export ever sees. Then:

  1. `rtk export --int8 --int8-search off` (the single shot), for outlier levels 1000, 4000,
     16000... until the single shot fails its gate (exit 3): the smallest such level is used,
  2. `rtk export --int8` (the search), on a fresh copy with that level,
  3. PyTorch vs the exported INT8 graph on the test split.

  python benchmarks/int8_digits.py --out benchmarks/cpu/int8_digits.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def split_test(all_dir: Path, train_dir: Path, test_dir: Path, share: float = 0.2) -> None:
    """Every fifth image of each class (sorted) to the test split, the rest to training."""
    for folder in sorted(p for p in all_dir.iterdir() if p.is_dir()):
        for i, image in enumerate(sorted(folder.iterdir())):
            dst = (test_dir if i % round(1 / share) == 0 else train_dir) / folder.name
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy(image, dst / image.name)


def make_hostile(run: Path, level: float) -> None:
    """The test model's construction: a quarter of layer4's output channels near `level`
    (1000 in the test), which the classifier ignores."""
    import torch

    from toolkit.core.bundle import Bundle

    ckpt = torch.load(run / "model.pt", weights_only=True)
    sd = ckpt["state_dict"]
    big = torch.arange(0, sd["fc.weight"].shape[1], 4)
    sd["layer4.1.bn2.weight"][big] = 0.0
    sd["layer4.1.bn2.bias"][big] = level
    sd["fc.weight"][:, big] = 0.0
    torch.save(ckpt, run / "model.pt")
    Bundle.load(run).record_artifact("model.pt")


def export(run: Path, *extra: str) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "toolkit", "export", str(run), "--int8",
                           "--format", "onnx", "--max-batch", "32", *extra],
                          capture_output=True, text=True)
    manifest = json.loads((run / "manifest.json").read_text())
    return {"args": ["--int8", "--format", "onnx", "--max-batch", "32", *extra],
            "exit_code": proc.returncode, "seconds": round(time.perf_counter() - start, 1),
            "output": (proc.stdout + proc.stderr).splitlines(),
            "int8": manifest["artifacts"].get("model.int8.onnx")}


def on_test_split(run: Path, test_dir: Path) -> dict:
    """PyTorch and the INT8 graph (trusted or not) on images the export never saw."""
    from toolkit.backends import open_backend
    from toolkit.core.bundle import Bundle
    from toolkit.backends.run import folder_samples, run_backend
    from toolkit.core.metrics import parity

    bundle = Bundle.load(run)
    samples = folder_samples(bundle, test_dir)
    paths, labels = [p for p, _ in samples], np.array([y for _, y in samples])
    logits = {}
    for name in ("torch", "onnxruntime-int8"):
        with open_backend(name, bundle, "cpu", trusted_only=False) as backend:
            logits[name] = run_backend(backend, paths, bundle.preprocessing)
    row = parity(logits["torch"], logits["onnxruntime-int8"], labels)
    return {k: row[k] for k in ("n", "reference_top1", "top1", "top1_delta_points",
                                "agreement", "confident_agreement", "flips_confident")}


def main() -> None:
    from toolkit.data.sample import write_digits
    from toolkit.train.config import TrainConfig
    from toolkit.train.session import fit

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--levels", default="1000,4000,16000,64000")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        split_test(write_digits(work / "all"), work / "train", work / "test")
        start = time.perf_counter()
        fit(TrainConfig(data_dir=str(work / "train"), out=str(work / "run"), arch="resnet18",
                        weights="none", image_size=32, epochs=args.epochs, batch_size=32,
                        lr=5e-4, augment="none", device="cpu", seed=0),
            progress=False, echo=lambda *_: None)
        trained_s = time.perf_counter() - start
        tried = {}
        for level in (float(v) for v in args.levels.split(",")):
            shutil.rmtree(work / "off", ignore_errors=True)
            shutil.copytree(work / "run", work / "off")
            make_hostile(work / "off", level)
            single = export(work / "off", "--int8-search", "off")
            tried[level] = {k: single[k] for k in ("exit_code", "seconds")} | {
                "gate": single["int8"]["parity"]}
            print(f"outlier level {level:g}: single shot exit {single['exit_code']}", flush=True)
            if single["exit_code"] == 3:
                break
        make_hostile(work / "run", level)
        searched = export(work / "run")
        result = {"data": "scikit-learn digits, 1797 images, 32 px; every 5th image per class "
                          "is the test split", "model": "resnet18 from scratch, "
                          f"{args.epochs} epochs, then the outlier-channel construction",
                  "train_seconds": round(trained_s, 1), "outlier_levels_tried": tried,
                  "outlier_level": level,
                  "test_images": sum(1 for _ in (work / "test").rglob("*.png")),
                  "single_shot": {**single, "test_split": on_test_split(work / "off", work / "test")},
                  "search": {**searched, "test_split": on_test_split(work / "run", work / "test")}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # the scratch folder's name says nothing and differs per run: keep it out of the results
    args.out.write_text(json.dumps(result, indent=2).replace(str(work), "TMPDIR") + "\n")
    for key in ("single_shot", "search"):
        r = result[key]
        print(f"{key}: exit {r['exit_code']}, gate {r['int8']['parity']}\n  test split: "
              f"{r['test_split']}")
    print("\n".join(result["search"]["output"]))


if __name__ == "__main__":
    main()
