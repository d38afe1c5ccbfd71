"""The data report: a scan summarised, with the card's recommendation for its size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import presets
from ..core import host
from ..data.scan import Scan, scan_folder


def summarize(scan: Scan) -> dict[str, Any]:
    """A JSON-ready summary of a scan, with the card's advice."""
    counts = scan.counts()
    nonzero = [n for n in counts.values() if n]
    n = len(scan.samples)
    preset = presets.preset_for(n)
    gpu = host.gpu()
    rel = lambda p: str(Path(p).relative_to(scan.root))  # noqa: E731
    ratio = round(max(nonzero) / min(nonzero), 2) if nonzero else None
    return {
        "root": str(scan.root),
        "classes": len(scan.classes),
        "images": n,
        "per_class": counts,
        "imbalance_ratio": ratio,
        "empty_classes": scan.empty_classes,
        "unreadable": [{"file": rel(p), "reason": why} for p, why in scan.unreadable],
        "ignored_files": [rel(p) for p in scan.ignored],
        "tiny_images": [{"file": rel(p), "size": list(s)} for p, s in scan.tiny],
        "duplicates": [[rel(p) for p in group] for group in scan.duplicates],
        "sizes": {f"{w}x{h}": c for (w, h), c in scan.sizes.most_common(10)},
        "modes": dict(scan.modes),
        "formats": dict(scan.formats),
        "host": {"cores": host.usable_cores(), "int8_class": host.int8_class(),
                 "cpu_model": host.cpu_model(), "gpu": gpu and gpu["gpu"]},
        "recommendation": {
            "arch": preset.arch, "lr": preset.lr, "epochs": preset.epochs_range,
            "batch_size": preset.batch_size, "augment": preset.augment,
            "notes": list(preset.notes),
            "recipe": recipe_advice(preset, ratio),
            "hardware": presets.batch_for_gpu_memory(gpu and gpu["memory_gib"]),
        },
    }


def recipe_advice(preset: presets.Preset, ratio: float | None) -> list[str]:
    """The fine-tuning recipe `rtk finetune` applies to a data set like this one."""
    from .recipe import IMBALANCE_RATIO

    mix = " with mixup 0.2 / cutmix 1.0" if preset.augment == "heavy" else ""
    advice = [f"--augment {preset.augment}{mix}"
              + (" (TrivialAugmentWide" + (", random erasing)" if preset.augment == "heavy"
                                           else ")") if preset.augment != "light" else ""),
              "--ema (on by default): model.pt holds the averaged weights, which alone pick "
              "the best epoch",
              "pretrained weights: a head-only first epoch (--freeze-epochs 1), then the "
              "backbone at 0.1 x --lr (--backbone-lr-mult)"]
    if preset.patience:
        advice.append(f"--patience {preset.patience}: stop when validation stops improving")
    if ratio is not None and ratio > IMBALANCE_RATIO:
        advice.append(f"classes are imbalanced ({ratio:g}x): --balance auto draws every class "
                      "equally often (a balanced sampler); judge by balanced accuracy")
    advice.append("a batch too large for the GPU: --batch-size auto, or --accumulate K")
    return advice


def inspect_data(root: str | Path, progress: bool = False) -> dict[str, Any]:
    """Scan `root` and summarise it."""
    return summarize(scan_folder(root, progress=progress))


def render(report: dict[str, Any]) -> str:
    """Plain-text rendering of a summary (the CLI prints it)."""
    lines = [f"{report['root']}: {report['images']} usable images in {report['classes']} classes"]
    width = max(len(c) for c in report["per_class"]) if report["per_class"] else 5
    lines += [f"  {name:<{width}}  {n:>7}" for name, n in report["per_class"].items()]
    lines.append(f"imbalance ratio (largest/smallest class): {report['imbalance_ratio']}")
    lines.append("sizes: " + ", ".join(f"{s} ({c})" for s, c in report["sizes"].items()))
    lines.append("modes: " + ", ".join(f"{m} ({c})" for m, c in report["modes"].items()))
    for name in report["empty_classes"]:
        lines.append(f"WARNING empty class folder: {name}")
    for item in report["unreadable"]:
        lines.append(f"UNREADABLE {item['file']}: {item['reason']}")
    for item in report["tiny_images"]:
        lines.append(f"TINY {item['file']}: {item['size'][0]}x{item['size'][1]}")
    for group in report["duplicates"]:
        lines.append("DUPLICATES " + " = ".join(group))
    if report["ignored_files"]:
        lines.append(f"ignored {len(report['ignored_files'])} non-image file(s)")
    rec = report["recommendation"]
    lines.append(f"recommended: --arch {rec['arch']} --lr {rec['lr']:g} --epochs {rec['epochs']} "
                 f"--batch-size {rec['batch_size']} --augment {rec['augment']} (or --preset auto)")
    lines += [f"note: {n}" for n in rec["notes"]] + [f"hardware: {rec['hardware']}"]
    lines += [f"recipe: {r}" for r in rec.get("recipe", [])]
    h = report.get("host")
    if h:  # the CPU's int8 class decides where an INT8 graph's gate verdict holds
        lines.append(f"this host: {h['cpu_model']}, {h['cores']} core(s), CPU int8 class "
                     f"{h['int8_class']}" + (f", GPU {h['gpu']}" if h["gpu"] else ", no GPU"))
    return "\n".join(lines)
