"""`rtk export`: options and the parity table."""

from __future__ import annotations

import json

import click

from .common import handled


def parity_table(rows: list[dict]) -> None:
    from ..ui import console as ui

    ui.table("Accuracy gate (artifact vs PyTorch eager FP32)",
             ["artifact", "backend", "n", "top-1", "ref top-1", "delta pts (95% CI)", "agreement",
              "flips: confident / near-tie", "max |diff|", "rule", "result"],
             [[r["artifact"], r["backend"], r["n"], r["top1"], r["reference_top1"],
               "{:+.2f} ({:+.2f}..{:+.2f})".format(r["top1_delta_points"], *r["top1_delta_ci95"]),
               f"{r['agreement']:.2%}", f"{r['flips_confident']} / {r['flips_near_tie']}",
               f"{r['max_abs_diff']:.2e}", r["rule"], "PASS" if r["passed"] else "FAIL"]
              for r in rows])
    for r in rows:
        for warning in r.get("warnings", []):
            click.secho(f"Warning: {r['artifact']}: {warning}", fg="yellow", err=True)


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--fp16", is_flag=True, help="Also an FP16 graph (and a TensorRT engine on a GPU host).")
@click.option("--int8", is_flag=True, help="Also a calibrated static INT8 (Q/DQ) graph.")
@click.option("--format", "format", type=click.Choice(["onnx", "tensorrt", "all"]), default="all",
              show_default=True, help="tensorrt fails on hosts without TensorRT and a GPU.")
@click.option("--opset", default=18, show_default=True)
@click.option("--max-batch", default=64, show_default=True,
              type=click.IntRange(min=1), help="Largest batch (engine profile max).")
@click.option("--calib-size", default=256, show_default=True,
              type=click.IntRange(min=1), help="INT8 calibration images.")
@click.option("--int8-scheme", type=click.Choice(["cpu", "tensorrt"]), default="cpu", show_default=True,
              help="cpu: uint8 activations, fast in ONNX Runtime; tensorrt: symmetric int8 "
                   "activations for TensorRT explicit quantization.")
@click.option("--int8-search", type=click.Choice(["auto", "off"]), default="auto", show_default=True,
              help="auto: when the first INT8 calibration fails its gate, search (on CPUs "
                   "without VNNI, ONNX Runtime's remedies first) calibration methods, set size, "
                   "per-channel weights, bias correction and layers kept in float, judged on "
                   "training images kept out of calibration; at most 3 held-out looks per "
                   "held-out set, counted across runs.")
@click.option("--int8-budget", default=12, show_default=True, type=click.IntRange(min=1),
              help="Most INT8 quantizations the search may try.")
@click.option("--int8-requantize", is_flag=True,
              help="Quantize INT8 anew even where model.int8.onnx passed its gate on another CPU "
                   "kind (by default that graph is gated here too, keeping its other verdicts).")
@click.option("--qat", is_flag=True,
              help="When post-training INT8 fails its gate (after the search), fine-tune with "
                   "quantization-aware training (NNCF) and gate that graph; the search keeps a "
                   "held-out look for it. Needs pip install 'rtk[qat]'.")
@click.option("--qat-epochs", default=2, show_default=True, type=click.IntRange(1, 30),
              help="Quantization-aware fine-tuning epochs on the training split.")
@click.option("--qat-lr", default=1e-5, show_default=True, type=click.FloatRange(1e-7, 1e-2),
              help="Its learning rate (AdamW, cosine to zero).")
@click.option("--opt-batch", type=click.IntRange(min=1),
              help="TensorRT profile's optimal batch (default: half of --max-batch).")
@click.option("--data", "data_dir", type=click.Path(), help="Gate on this folder, not the val split.")
@click.option("--fp32-agreement", default=0.999, show_default=True)
@click.option("--fp16-delta", default=0.3, show_default=True, help="Max top-1 loss in points.")
@click.option("--int8-delta", default=1.0, show_default=True, help="Max top-1 loss in points.")
@click.option("--fp16-agreement", default=0.99, show_default=True)
@click.option("--int8-agreement", default=0.95, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the parity table as JSON.")
@handled
def export(run_dir, as_json, **options):
    """Export RUN_DIR's model to ONNX (FP32/FP16/INT8) and TensorRT, each checked against PyTorch."""
    from dataclasses import fields

    from ..core.lock import bundle_lock  # one writer per run directory; readers are not blocked
    from ..export import ExportOptions, Tolerances

    tolerances = Tolerances(**{f.name: options.pop(f.name) for f in fields(Tolerances)})
    with bundle_lock(run_dir, "rtk export"):  # taken before the manifest is read
        _export(run_dir, as_json, ExportOptions(tolerances=tolerances, **options))


def _export(run_dir, as_json: bool, opts) -> None:
    """Export and gate; the parity table is printed also when a gate failed."""
    from ..core.bundle import Bundle
    from ..core.errors import GateFailed
    from ..export import export as run_export
    from .report import refreshed

    bundle = Bundle.load(run_dir)

    def echo(message: str) -> None:
        click.echo(message, err=True)

    try:
        rows = run_export(bundle, opts, echo=echo, progress=not as_json)
    except GateFailed:
        rows = list(bundle.manifest.export.parity) if bundle.manifest.export else []
        if as_json:
            click.echo(json.dumps(rows, indent=2))
        parity_table(rows)
        refreshed(bundle.root)  # the page marks the untrusted artifact
        raise
    refreshed(bundle.root)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        parity_table(rows)
        for r in rows:
            click.echo(f"{bundle.root / r['artifact']}  trusted")
