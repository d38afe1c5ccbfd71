"""PTQ against QAT on real images: the demo's ResNet-50 at 64 px on scikit-learn's digits.

A fifth of each class is set aside first as a test split that neither training nor the
export ever sees; the rest is the demo's data (its own 80/20 train/held-out split). The model
is trained as the demo trains it (from scratch, 64 px, 4 epochs). Then, on two copies of the run:

  1. `rtk export --int8` (post-training quantization, with its search when the single shot
     fails),
  2. quantization-aware training, as `rtk export --int8 --qat` runs it after a failed search,
     called here directly on a fresh copy (so it runs whether or not PTQ passed), gated on the
     same held-out split,

and for each: the held-out gate's delta and agreement, agreement with PyTorch on the
untouched test split, INT8's speed against FP32 (measured interleaved at export), and the
wall time of the QAT epochs.

  python benchmarks/qat_digits.py --out benchmarks/cpu/qat_digits.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from int8_digits import export, on_test_split, split_test  # noqa: E402


def summary(run: dict, test: dict) -> dict:
    entry = run["int8"]
    gate = entry["parity"]
    return {"exit_code": run["exit_code"], "export_seconds": run["seconds"],
            "trusted": entry.get("trusted"), "calibration": entry.get("calibration"),
            "kept_float_nodes": entry.get("kept_float_nodes"),
            "held_out": {k: gate[k] for k in ("n", "top1_delta_points", "agreement",
                                              "confident_agreement", "flips_confident", "passed")},
            "test_split": test, "vs_fp32": (entry.get("speed") or {}).get("vs_fp32"),
            "qat": entry.get("qat"), "gates": entry.get("gates")}


def qat(run: Path) -> dict:
    """model.onnx as `rtk export` makes it, then the QAT graph, gated on the held-out split."""
    import dataclasses

    from toolkit import export as exporting
    from toolkit.core.bundle import Bundle
    from toolkit.export import cpu_gate
    from toolkit.export.int8 import calibration_images
    from toolkit.export.qat import qat_int8

    start, said = time.perf_counter(), []
    bundle = Bundle.load(run)
    opts = exporting.ExportOptions(int8=True, qat=True, max_batch=32, format="onnx")
    exporting.export(bundle, dataclasses.replace(opts, int8=False), echo=said.append)
    held = exporting._held_out(bundle, opts, run)
    gate = exporting.Gate(bundle, opts, said.append, progress=False, held_out=held)
    note = qat_int8(bundle, opts, gate, progress=False, echo=said.append)
    cpu_gate.write(bundle, calibration_images(bundle, cpu_gate.PROBES))
    bundle.save()
    entry = json.loads((run / "manifest.json").read_text())["artifacts"]["model.int8.onnx"]
    return {"exit_code": 0 if note is None else 3, "seconds": round(time.perf_counter() - start, 1),
            "output": said, "int8": entry}


def main() -> None:
    from toolkit.core.host import int8_host
    from toolkit.data.sample import write_digits
    from toolkit.train.config import TrainConfig
    from toolkit.train.session import fit

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        split_test(write_digits(work / "all"), work / "train", work / "test")
        start = time.perf_counter()
        fit(TrainConfig(data_dir=str(work / "train"), out=str(work / "run"), arch="resnet50",
                        weights="none", image_size=64, epochs=args.epochs, batch_size=32,
                        lr=5e-4, augment="none", device="cpu", seed=0),
            progress=False, echo=lambda *_: None)
        trained_s = time.perf_counter() - start
        results = {}
        for name, run_it in (("ptq", lambda r: export(r)), ("qat", qat)):
            run = work / name
            shutil.copytree(work / "run", run)
            done = run_it(run)
            results[name] = summary(done, on_test_split(run, work / "test"))
            results[name]["output"] = done["output"]
            print(f"{name}: exit {done['exit_code']}, held-out {results[name]['held_out']}, "
                  f"test {results[name]['test_split']}, {results[name]['vs_fp32']}x FP32",
                  flush=True)
        result = {"data": "scikit-learn digits, 1797 images; every 5th image per class is the "
                          "test split, the rest the run's data (80/20 train/held-out)",
                  "model": f"resnet50 from scratch, 64 px, {args.epochs} epochs (as the demo)",
                  "host": int8_host(), "train_seconds": round(trained_s, 1),
                  "test_images": sum(1 for _ in (work / "test").rglob("*.png")), **results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2).replace(str(work), "TMPDIR") + "\n")
    args.out.with_suffix(".md").write_text(render(result))
    print(render(result))


def render(r: dict) -> str:
    h = r["host"]
    lines = [f"# PTQ against QAT: {r['model']}", "",
             f"{r['data']}. CPU: {h['cpu_model']}, int8 class **{h['int8_class']}**, "
             f"{h['threads']} threads, ONNX Runtime {h['onnxruntime']}.", "",
             "Agreement with PyTorch (model.pt), in brackets on confident answers only (what the "
             "gate judges, at >= 95%).", "",
             "| | exit | held-out delta (pts) | held-out agreement | test-split delta (pts) "
             "| test-split agreement | INT8 vs FP32 | QAT epochs' wall time |",
             "|---|---|---|---|---|---|---|---|"]
    for name in ("ptq", "qat"):
        x = r[name]
        qat = f"{x['qat']['seconds']:.0f} s ({x['qat']['epochs']} epochs)" if x.get("qat") else "-"
        speed = f"{x['vs_fp32']:.2f}x" if x["vs_fp32"] else "-"
        lines.append(f"| {name.upper()} | {x['exit_code']} | {x['held_out']['top1_delta_points']:+.2f} "
                     f"| {x['held_out']['agreement']:.2%} ({_confident(x):.2%}) "
                     f"| {x['test_split']['top1_delta_points']:+.2f} "
                     f"| {x['test_split']['agreement']:.2%} "
                     f"({x['test_split']['confident_agreement']:.2%}) | {speed} | {qat} |")
    return "\n".join(lines) + "\n"


def _confident(x: dict) -> float:
    held = x["held_out"]
    if "confident_agreement" in held:
        return held["confident_agreement"]
    return next(iter(x["gates"].values()))["confident_agreement"]  # the gate row has it


if __name__ == "__main__":
    main()
