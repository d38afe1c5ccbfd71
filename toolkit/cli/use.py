"""`rtk eval` and `rtk predict`: run any backend on images."""

from __future__ import annotations

import json

import click

from .common import BACKENDS, handled


def backend_options(fn):
    """The options shared by commands that open a backend."""
    fn = click.option("--backend", type=click.Choice(BACKENDS), default="torch",
                      show_default=True)(fn)
    fn = click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu",
                      show_default=True)(fn)
    fn = click.option("--url", help="Triton server HOST:PORT (backend triton).")(fn)
    fn = click.option("--protocol", type=click.Choice(["http", "grpc"]), default="http",
                      show_default=True, help="Triton protocol.")(fn)
    fn = click.option("--tensors", is_flag=True,
                      help="Triton: send preprocessed tensors to the classifier, not image bytes.")(fn)
    return fn


def _triton_opts(backend, *, url, protocol, tensors) -> dict:
    if backend != "triton":
        return {}
    return {"url": url, "protocol": protocol, "send_bytes": not tensors}


@click.command(name="eval")
@click.argument("run_dir", type=click.Path())
@click.argument("data_dir", type=click.Path(), required=False)
@backend_options
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--tta", type=click.Choice(["none", "flip"]), default="none", show_default=True,
              help="Test-time augmentation: flip averages the logits of each image and its "
                   "horizontal flip (two passes). An evaluation option only: no exported graph "
                   "or served model includes it.")
@click.option("--json", "as_json", is_flag=True)
@handled
def eval_cmd(run_dir, data_dir, backend, device, url, protocol, tensors, batch_size, tta,
             as_json):
    """Accuracy of RUN_DIR's model on DATA_DIR (default: the run's validation split)."""
    from ..core.bundle import Bundle
    from ..core.metrics import weakest
    from ..evaluate import evaluate

    bundle = Bundle.load(run_dir)
    result = evaluate(bundle, data_dir, backend, device=device, batch_size=batch_size,
                      progress=not as_json, tta=tta,
                      **_triton_opts(backend, url=url, protocol=protocol, tensors=tensors))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    tta_note = " (TTA: flip)" if tta == "flip" else ""
    click.echo(f"{backend}{tta_note} on {result['data']}: accuracy {result['accuracy']:.4f}  "
               f"balanced {result['balanced_accuracy']:.4f}  top-5 {result['top5']:.4f}  "
               f"n={result['n']}  ({result['images_per_second']:.1f} images/s, decoding included)")
    for name, acc in result["per_class"].items():
        click.echo(f"  {name:<20} {'-' if acc is None else f'{acc:.4f}'}")
    click.echo("weakest: " + ", ".join(f"{c} ({a:.2%})" for c, a in weakest(result["per_class"])))


@click.command()
@click.argument("run_dir", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@backend_options
@click.option("--topk", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True)
@handled
def predict(run_dir, images, backend, device, url, protocol, tensors, topk, as_json):
    """Top-k labels with probabilities for each image."""
    from ..core.bundle import Bundle
    from ..evaluate import predict as run_predict

    results = run_predict(Bundle.load(run_dir), images, backend, device=device, topk=topk,
                          **_triton_opts(backend, url=url, protocol=protocol, tensors=tensors))
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    for r in results:
        click.echo(r["image"] + ": " + ", ".join(f"{t['label']} {t['probability']:.3f}"
                                                 for t in r["top"]))
