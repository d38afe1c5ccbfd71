"""INT8 against FP32 for each of ONNX Runtime's remedies for saturating int8 products, and
for bias correction, on a trained run, measured in one process.

Each configuration is what `rtk export --int8`'s search would try (toolkit.export.int8's
Quantizer: the same split, prepared graph and calibration images): the single shot, the same
graph under session.x64quantprecision, U8U8 products, 7-bit weights (reduce_range), the first
convolution in float, and fast bias correction. Accuracy is judged on the search's probe
images (training images never calibrated on), never on the held-out set, so the benchmark
spends none of its looks. Speed is toolkit.export.int8_search.images_per_second at batch 8:
round-robin over every graph (with its session options), median round.

The CPU's int8 class decides what the remedies can show: on a VNNI or AMX CPU the int8
products do not saturate, so they can only cost (or, for bias correction, help) accuracy and
speed; their gain is on x86-avx2 CPUs.

  python benchmarks/int8_remedies.py demo/digits --out benchmarks/cpu/int8_remedies
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    from toolkit.core.bundle import Bundle
    from toolkit.core.host import int8_host
    from toolkit.core.metrics import parity
    from toolkit.export import ExportOptions
    from toolkit.export.int8 import Quantizer, _probe
    from toolkit.export.int8_search import images_per_second, run_graph
    from toolkit.export.precision import first_convolution

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/cpu/int8_remedies"))
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()

    bundle = Bundle.load(args.run)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        q = Quantizer(bundle, ExportOptions(int8=True), work)
        probe = _probe(bundle, q.order, q.split)
        first = q.first
        configs = {"single shot": first,
                   "session.x64quantprecision": replace(first, x64_precision=True),
                   "U8U8": replace(first, weights="u8"),
                   "7-bit weights (reduce_range)": replace(first, reduce_range=True),
                   "first convolution in float": replace(first, exclude=first_convolution(q.prepared)),
                   "bias correction": replace(first, bias_correction=True)}
        paths, rows = {"FP32": bundle.path("model.onnx")}, {}
        for i, (name, cfg) in enumerate(configs.items()):
            graph = replace(cfg, x64_precision=False)
            path = paths.get(next((n for n, c in configs.items()
                                   if c == graph and n in paths), ""), None)
            if path is None:
                path = work / f"g{i}.onnx"
                q(graph, path, work / f"calib-{cfg.method}-{cfg.calib_size}.json")
            paths[name] = path
            logits = run_graph(path, bundle.manifest.input.name, probe.images,
                               session_config=cfg.session_config)
            p = parity(probe.reference, logits, probe.labels)
            rows[name] = {"config": cfg.label(), "agreement": round(p["agreement"], 4),
                          "top1_delta_points": round(p["top1_delta_points"], 2),
                          "flips_confident": p["flips_confident"]}
            print(f"{name}: agreement {p['agreement']:.2%}, delta {p['top1_delta_points']:+.2f}",
                  flush=True)
        crop = bundle.preprocessing.crop
        batch = np.random.default_rng(0).integers(0, 256, (8, crop, crop, 3), dtype=np.uint8)
        rates = images_per_second(paths, bundle.manifest.input.name, batch, rounds=args.rounds,
                                  configs={n: c.session_config for n, c in configs.items()})
    for name, row in rows.items():
        row["images_per_s"] = round(rates[name], 1)
        row["vs_fp32"] = round(rates[name] / rates["FP32"], 3)
    result = {"run": bundle.root.name, "arch": bundle.manifest.arch, "crop": crop,
              "host": int8_host(), "probe_images": int(len(probe.labels)),
              "calibration_images": first.calib_size, "batch": 8,
              "fp32_images_per_s": round(rates["FP32"], 1), "configs": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "remedies.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "remedies.md").write_text(render(result))
    print(render(result))


def render(r: dict) -> str:
    h = r["host"]
    lines = [f"# INT8 remedies: {r['arch']} at {r['crop']} px ({r['run']})", "",
             f"CPU: {h['cpu_model']}, int8 class **{h['int8_class']}**, {h['threads']} threads, "
             f"ONNX Runtime {h['onnxruntime']}. Judged on {r['probe_images']} probe images "
             f"(training images never calibrated on; the held-out set is not touched); "
             f"calibration {r['calibration_images']} images. Speed: batch {r['batch']}, "
             f"interleaved in one run; FP32 {r['fp32_images_per_s']} images/s.", "",
             "| configuration | agreement with FP32 | top-1 delta (pts) | confident flips "
             "| images/s | vs FP32 |", "|---|---|---|---|---|---|"]
    for name, c in r["configs"].items():
        lines.append(f"| {name} | {c['agreement']:.2%} | {c['top1_delta_points']:+.2f} | "
                     f"{c['flips_confident']} | {c['images_per_s']} | {c['vs_fp32']:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
