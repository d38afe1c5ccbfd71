"""Quantization-aware training: INT8 where post-training quantization cannot pass its gate.

The fine-tuned model's BatchNorms are folded into its convolutions (so ONNX Runtime can fuse
each quantized Conv into QLinearConv, and TensorRT sees Conv+bias), NNCF inserts fake
quantization calibrated on the training images, and a short fine-tune at a low learning rate
on the training split lets the weights and the quantizers' ranges adapt to each other. The
result is exported as Q/DQ ONNX behind the uint8 input contract and gated like any INT8 graph.

NNCF was chosen by measurement (the demo's ResNet-50 at 64 px, this CPU, 2026-12-03): its
graph ran fully in ONNX Runtime's int8 kernels (53 QLinearConv, 3.5x FP32); NVIDIA Model
Optimizer's INT8 config quantizes Conv inputs only, with symmetric int8 activations, so ONNX
Runtime kept every Conv in float (0.53x FP32); torchao 0.18's PT2E QAT could not prepare
torchvision's ResNet-50 ("Input partition has more than one output node").
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from ..core.bundle import Bundle
from ..core.errors import require

QAT_WEIGHTS = "model.qat.pt"


def fold_batchnorm(module) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d (in the module's own order) into
    it, in place; returns how many were folded."""
    import torch

    folded = 0
    names = list(module._modules)
    for conv_name, bn_name in zip(names, names[1:]):
        conv, bn = module._modules[conv_name], module._modules[bn_name]
        if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
            module._modules[conv_name] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
            module._modules[bn_name] = torch.nn.Identity()
            folded += 1
    return folded + sum(fold_batchnorm(child) for child in module.children())


def _loader(samples, transform, min_short: int, *, batch: int, shuffle: bool, seed: int = 0):
    from ..data.loaders import ImageDataset, make_loader

    return make_loader(ImageDataset(samples, transform, min_short), batch,
                       shuffle=shuffle, device="cpu", seed=seed, drop_last=shuffle)


def quantized_model(bundle: Bundle, opts, calibration: list):
    """The fine-tuned model, BatchNorm folded, with NNCF's fake quantizers calibrated on
    `calibration` ((path, label) training samples)."""
    nncf = require("nncf", "qat")
    from ..data.transforms import eval_transform
    from ..train.model import load_bundle_model

    net = load_bundle_model(bundle).eval()
    fold_batchnorm(net)
    pre = bundle.preprocessing
    loader = _loader(calibration, eval_transform(pre), pre.resize, batch=32, shuffle=False)
    extra = {}
    if opts.int8_scheme == "tensorrt":  # TensorRT's explicit quantization: signed int8 only
        from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters,
                                                           QuantizationParameters)

        extra["advanced_parameters"] = AdvancedQuantizationParameters(
            activations_quantization_params=QuantizationParameters(signedness_to_force=True))
    from ..train.archs import is_transformer

    if is_transformer(bundle.manifest.arch):  # NNCF's transformer scheme: LayerNorm, Softmax
        extra["model_type"] = nncf.ModelType.TRANSFORMER  # and GELU stay float
    return nncf.quantize(net, nncf.Dataset(loader, lambda b: b[0]), subset_size=len(calibration),
                         **extra)


def fine_tune(model, bundle: Bundle, opts, *, progress: bool, echo: Callable) -> dict:
    """`opts.qat_epochs` epochs on the training split, with the run's augmentation and weight
    decay, at `opts.qat_lr` (AdamW, cosine to zero), distilled from the float model.

    The loss is the KL divergence from model.pt's own predictions, not the labels: the gate
    certifies that the INT8 graph answers as model.pt does, and training on the labels went on
    fitting them instead (the digits run: +1.65 pts on an unseen test split, but 93.4%
    agreement with model.pt on the held-out one, under the gate's 95%).
    """
    import torch

    from ..data.loaders import train_min_short
    from ..data.transforms import train_transform
    from ..train.model import load_bundle_model
    from ..ui.console import epoch_bar

    cfg = bundle.manifest.config or {}
    root = Path(bundle.manifest.data.train_dir)
    samples = [(root / rel, k) for rel, k in bundle.split()["train"]]
    pre, augment = bundle.preprocessing, cfg.get("augment", "light")
    loader = _loader(samples, train_transform(pre, augment), train_min_short(pre, augment),
                     batch=max(2, min(int(cfg.get("batch_size") or 32), len(samples))),
                     shuffle=True, seed=int(cfg.get("seed") or 0))
    teacher = load_bundle_model(bundle).eval()
    steps = max(1, opts.qat_epochs * len(loader))
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.qat_lr,
                                  weight_decay=float(cfg.get("weight_decay", 0.0)))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    divergence = torch.nn.KLDivLoss(reduction="batchmean", log_target=True)
    start, seen, loss = time.perf_counter(), 0, float("nan")
    model.train()
    for epoch in range(1, opts.qat_epochs + 1):
        with epoch_bar(len(loader), f"QAT epoch {epoch}/{opts.qat_epochs}", progress) as update:
            for i, (x, _) in enumerate(loader, start=1):
                with torch.no_grad():
                    target = torch.log_softmax(teacher(x), dim=1)
                optimizer.zero_grad(set_to_none=True)
                step_loss = divergence(torch.log_softmax(model(x), dim=1), target)
                step_loss.backward()
                optimizer.step()
                schedule.step()
                seen, loss = seen + len(x), step_loss.item()
                update(i, seen / (time.perf_counter() - start), loss, schedule.get_last_lr()[0])
        echo(f"  QAT epoch {epoch}/{opts.qat_epochs}: KL from model.pt {loss:.4f}")
    model.eval()
    return {"epochs": opts.qat_epochs, "lr": opts.qat_lr, "images": len(samples),
            "steps": steps, "loss": "KL divergence from model.pt's predictions",
            "seconds": round(time.perf_counter() - start, 1), "final_loss": round(loss, 6)}


def export_qat(model, bundle: Bundle, dst: Path, example):
    """The fake-quantized model as Q/DQ ONNX behind the uint8 contract, dynamic batch; returns
    the stripped float model (native fake-quantize modules) whose weights are model.qat.pt."""
    import warnings

    import torch

    nncf = require("nncf", "qat")
    onnx = require("onnx", "onnx")
    from ..core.contract import with_preprocessing
    from ..core.files import atomic_path

    stripped = nncf.strip(model, do_copy=True, strip_format=nncf.StripFormat.NATIVE,
                          example_input=example).eval()
    wrapped = with_preprocessing(stripped, bundle.preprocessing).eval()
    crop = bundle.preprocessing.crop
    images = torch.zeros((2, crop, crop, 3), dtype=torch.uint8)
    names = bundle.manifest.input.name, bundle.manifest.output.name
    with atomic_path(dst) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript exporter: the dynamo one cannot trace
        torch.onnx.export(wrapped, (images,), str(tmp), input_names=[names[0]],  # fake quant
                          output_names=[names[1]], opset_version=18, dynamo=False,
                          dynamic_axes={names[0]: {0: "batch"}, names[1]: {0: "batch"}})
        onnx.checker.check_model(str(tmp))
    return stripped


def qat_int8(bundle: Bundle, opts, gate, *, progress: bool, echo: Callable) -> str | None:
    """Quantization-aware INT8: calibrate, fine-tune, export, gate (one held-out look).
    Returns None if the graph passed, else why not."""
    import torch

    from ..core.files import atomic_path
    from ..core.host import package_version
    from .int8 import calibration_images, int8_speed, stratified_order
    from .looks import left
    from .onnx_export import io_spec

    if left(bundle, gate.key) == 0:
        return ("QAT: no held-out look is left for its graph; bring a fresh labelled held-out "
                "folder (--data DIR)")
    before = bundle.manifest.artifact("model.int8.onnx")  # the post-training graph it replaces
    ptq = None if before is None else {
        "chosen": (before.search or {}).get("chosen"), "speed": before.speed,
        "held_out": {k: (before.parity or {}).get(k) for k in (
            "n", "top1_delta_points", "agreement", "flips_confident", "passed")}}
    order = stratified_order(bundle)
    echo(f"Quantization-aware training (NNCF {package_version('nncf')}): {opts.qat_epochs} "
         f"epoch(s) at lr {opts.qat_lr:g} on the training split...")
    model = quantized_model(bundle, opts, order[:min(opts.calib_size, len(order))])
    info = fine_tune(model, bundle, opts, progress=progress, echo=echo)
    example = torch.from_numpy(calibration_images(bundle, 2)).permute(0, 3, 1, 2).float()
    stripped = export_qat(model, bundle, bundle.path("model.int8.onnx"), example)
    with atomic_path(bundle.path(QAT_WEIGHTS)) as tmp:
        torch.save({"state_dict": stripped.state_dict(), "qat": info}, tmp)
    bundle.record_artifact(QAT_WEIGHTS, parent="model.pt", precision="fp32", gate="not gated",
                           qat=info, tool=f"nncf {package_version('nncf')}")
    bundle.record_artifact("model.int8.onnx", parent=QAT_WEIGHTS, trusted=False, gate="pending",
                           precision="int8", io=io_spec(bundle.path("model.int8.onnx")),
                           format="QDQ", scheme=opts.int8_scheme, calibration="qat",
                           kept_float=[], kept_float_nodes=0, session_config={}, qat=info,
                           max_batch=bundle.entry("model.onnx").max_batch,
                           search=before and before.search,
                           ptq=ptq, tool=f"nncf {package_version('nncf')}")
    row = gate.check("model.int8.onnx", "onnxruntime-int8", "int8")
    path = bundle.path("model.int8.onnx")
    from .cpu_gate import record_speed

    record_speed(bundle, int8_speed(bundle, path, path, echo=echo))
    bundle.save()
    echo(f"QAT INT8: top-1 delta {row['top1_delta_points']:+.2f} pts, agreement "
         f"{row['agreement']:.2%} ({row['flips_confident']} confident flips) -> "
         f"{'PASS' if row['passed'] else 'fail'}; {info['seconds']:.0f} s of training")
    if row["passed"]:
        return None
    return (f"QAT: its graph failed the held-out gate too (top-1 delta "
            f"{row['top1_delta_points']:+.2f} pts, agreement {row['agreement']:.2%}); try more "
            f"epochs (--qat-epochs {2 * opts.qat_epochs}) with a fresh held-out set (--data DIR)")
