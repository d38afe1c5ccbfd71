"""`rtk export`: options and the parity table."""

from __future__ import annotations

import json

import click


def parity_table(rows: list[dict]) -> None:
    from . import ui

    ui.table("Accuracy gate (artifact vs PyTorch eager FP32)",
             ["artifact", "backend", "n", "top-1", "ref top-1", "delta pts", "agreement",
              "max |diff|", "rule", "result"],
             [[r["artifact"], r["backend"], r["n"], r["top1"], r["reference_top1"],
               f"{r['top1_delta_points']:+.2f}", f"{r['agreement']:.2%}", f"{r['max_abs_diff']:.2e}",
               r["rule"], "PASS" if r["passed"] else "FAIL"] for r in rows])


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--fp16", is_flag=True, help="Also an FP16 graph (and a TensorRT engine on a GPU host).")
@click.option("--int8", is_flag=True, help="Also a calibrated static INT8 (Q/DQ) graph.")
@click.option("--format", "fmt", type=click.Choice(["onnx", "tensorrt", "all"]), default="all",
              show_default=True, help="tensorrt fails on hosts without TensorRT and a GPU.")
@click.option("--opset", default=18, show_default=True)
@click.option("--max-batch", default=64, show_default=True,
              type=click.IntRange(min=1), help="Largest batch (engine profile max).")
@click.option("--calib-size", default=256, show_default=True,
              type=click.IntRange(min=1), help="INT8 calibration images.")
@click.option("--int8-scheme", type=click.Choice(["cpu", "tensorrt"]), default="cpu", show_default=True,
              help="cpu: uint8 activations, fast in ONNX Runtime; tensorrt: symmetric int8 "
                   "activations for TensorRT explicit quantization.")
@click.option("--data", "data_dir", type=click.Path(), help="Gate on this folder, not the val split.")
@click.option("--fp32-agreement", default=0.999, show_default=True)
@click.option("--fp16-delta", default=0.3, show_default=True, help="Max top-1 loss in points.")
@click.option("--int8-delta", default=1.0, show_default=True, help="Max top-1 loss in points.")
@click.option("--fp16-agreement", default=0.99, show_default=True)
@click.option("--int8-agreement", default=0.95, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the parity table as JSON.")
def export(run_dir, fp16, int8, fmt, opset, max_batch, calib_size, int8_scheme, data_dir, fp32_agreement,
           fp16_delta, int8_delta, fp16_agreement, int8_agreement, as_json):
    """Export RUN_DIR's model to ONNX (FP32/FP16/INT8) and TensorRT, each checked against PyTorch."""
    from .cli import handled

    handled(_export)(run_dir, fp16, int8, fmt, opset, max_batch, calib_size, int8_scheme, data_dir,
                     fp32_agreement, fp16_delta, int8_delta, fp16_agreement, int8_agreement, as_json)


def _export(run_dir, fp16, int8, fmt, opset, max_batch, calib_size, int8_scheme, data_dir, fp32_agreement,
            fp16_delta, int8_delta, fp16_agreement, int8_agreement, as_json):
    from .bundle import Bundle
    from .errors import GateFailed
    from .export import ExportOptions, Tolerances, export as run_export

    bundle = Bundle.load(run_dir)
    opts = ExportOptions(fp16=fp16, int8=int8, format=fmt, opset=opset, max_batch=max_batch,
                         calib_size=calib_size, int8_scheme=int8_scheme, data_dir=data_dir,
                         tolerances=Tolerances(fp32_agreement, fp16_delta, int8_delta, fp16_agreement,
                                                    int8_agreement))

    def echo(message: str) -> None:
        click.echo(message, err=True)

    try:
        rows = run_export(bundle, opts, echo=echo, progress=not as_json)
    except GateFailed:
        rows = bundle.manifest.get("export", {}).get("parity", [])
        if as_json:
            click.echo(json.dumps(rows, indent=2))
        parity_table(rows)
        raise
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        parity_table(rows)
        for r in rows:
            click.echo(f"{bundle.root / r['artifact']}  trusted")
