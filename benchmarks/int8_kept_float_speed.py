"""What keeping nodes in float costs INT8 on a CPU: FP32 vs single-shot INT8 vs INT8 with the
search's most sensitive nodes kept in float, ResNet-50, interleaved in one process.

The graphs are made as `rtk export --int8` makes them (the uint8 input contract, the same
prepare/quantize code, the same sensitivity ranking the layer-wise fallback uses); the
weights are random (no downloads here), which does not change the speed. Timing is
toolkit.export.int8_search.images_per_second: round-robin over the graphs, median round.

  python benchmarks/int8_kept_float_speed.py --out benchmarks/cpu/int8_kept_float_speed.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np

def export_fp32(dst: Path, size: int) -> Path:
    """Random-init ResNet-50 behind the uint8 contract, as model.onnx (dynamic batch)."""
    import torch
    import torchvision

    from toolkit.core.contract import with_preprocessing
    from toolkit.core.manifest import Preprocess

    torch.manual_seed(0)
    pre = Preprocess(resize=size, crop=size)  # ImageNet mean and std
    model = with_preprocessing(torchvision.models.resnet50(num_classes=10).eval(), pre)
    example = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), input_names=["input"],
                                    output_names=["logits"], opset_version=18, dynamo=True,
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    program.save(str(dst))
    return dst


def main() -> None:
    from toolkit.export.int8_search import images_per_second, nodes_of, sensitive_groups
    from toolkit.export.precision import prepare_for_int8, to_int8
    from toolkit.core.host import usable_cores
    from toolkit.bench.system import environment

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--calib", type=int, default=32)
    parser.add_argument("--kept", default="1,4", help="groups of sensitive nodes kept in float")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    calib = rng.integers(0, 256, (args.calib, args.size, args.size, 3), dtype=np.uint8)
    batch = rng.integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32 = export_fp32(work / "model.onnx", args.size)
        prepared = prepare_for_int8(fp32, work / "prepared.onnx")
        paths, kept = {"fp32": fp32}, {"fp32": None, "single_shot_int8": 0}
        single = work / "single.onnx"
        to_int8(prepared, single, (calib[i:i + 16] for i in range(0, len(calib), 16)), input_name="input")
        paths["single_shot_int8"] = single
        groups = sensitive_groups(single, prepared, "input", images=calib[:4])
        for k in (int(v) for v in args.kept.split(",")):
            nodes = nodes_of(groups[:k])
            path = work / f"kept{k}.onnx"
            to_int8(prepared, path, (calib[i:i + 16] for i in range(0, len(calib), 16)), input_name="input",
                    exclude=nodes)
            label = f"int8_{k}_groups_in_float"
            paths[label], kept[label] = path, len(nodes)
        print("timing", ", ".join(paths), flush=True)
        rates = images_per_second(paths, "input", batch, rounds=args.rounds, seconds=args.seconds)
        top = [g["tensor"] for g in groups[:max(int(v) for v in args.kept.split(","))]]
    result = {"model": "resnet50 (random init)", "size": args.size, "batch": args.batch,
              "runtime": "onnxruntime CPUExecutionProvider", "threads": usable_cores(),
              "rounds": args.rounds, "seconds_per_round": args.seconds,
              "calibration_images": args.calib, "most_sensitive_activations": top,
              "environment": environment(), "graphs": {
                  k: {"images_per_s": round(v, 2), "nodes_in_float": kept[k],
                      "vs_fp32": round(v / rates["fp32"], 3),
                      "vs_single_shot_int8": round(v / rates["single_shot_int8"], 3)}
                  for k, v in rates.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["graphs"], indent=2))


if __name__ == "__main__":
    main()
