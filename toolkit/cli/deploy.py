"""`rtk deploy`: Kubernetes manifests (Kustomize) for a run or a Triton model repository."""

from __future__ import annotations

import json

import click

from .common import handled, target_cpu_option


@click.command()
@click.argument("source", metavar="RUN_OR_REPO", type=click.Path())
@click.option("--target", type=click.Choice(["kubernetes"]), default="kubernetes", show_default=True)
@click.option("--out", "-o", default="deploy", show_default=True, type=click.Path(),
              help="Folder to write (replaced whole if rtk deploy wrote it before).")
@click.option("--name", help="Ensemble name, as given to `rtk triton --name` (default: as it derives).")
@click.option("--replicas", default=2, show_default=True, help="Minimum Triton replicas (HPA).")
@click.option("--max-replicas", type=int, help="Maximum Triton replicas (default: 4 x --replicas).")
@click.option("--gpu/--cpu", "gpu", default=True, show_default=True,
              help="Resources for KServe and training (both serving overlays are written).")
@click.option("--image", help="Serving image: NGC Triton + Pillow, built from OUT/image "
              "(default: rtk-triton:<NGC release>).")
@click.option("--repo-uri", help="s3://BUCKET/PATH or pvc:CLAIM[/PATH] (default: pvc:<name>-models).")
@click.option("--nodes", default=2, show_default=True, help="Training pods (torchrun --nnodes).")
@click.option("--nproc-per-node", default=1, show_default=True, help="Training processes (GPUs) per pod.")
@click.option("--train-image", help="Training image from the repository's Dockerfile "
              "(default: rtk:<NGC release>).")
@click.option("--shared-pvc", help="ReadWriteMany claim for training data and runs "
              "(default: <name>-shared).")
@click.option("--allow-from", multiple=True, metavar="NAMESPACE|KEY=VALUE",
              help="Who may reach the inference ports (repeatable): a namespace, or pods with a "
                   "label in this namespace. Default: the pods of the deployment's namespace.")
@click.option("--monitoring-namespace", default="monitoring", show_default=True,
              help="The one namespace allowed to scrape Triton's metrics port.")
@click.option("--control-key-secret",
              help="Secret (key `key`) holding Triton's control API key; rtk never writes it "
                   "(default: <name>-triton-control).")
@target_cpu_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@handled
def deploy(out, gpu, image, train_image, as_json, **options):
    """Write Kubernetes manifests for RUN_OR_REPO: Triton serving, KServe, multi-node training."""
    from ..deploy import DeployOptions, write_deployment
    from ..deploy.options import DEFAULT_IMAGE, DEFAULT_TRAIN_IMAGE

    opts = DeployOptions(out=out, kind="gpu" if gpu else "cpu", image=image or DEFAULT_IMAGE,
                         train_image=train_image or DEFAULT_TRAIN_IMAGE, **options)
    summary = write_deployment(opts, echo=lambda m: click.echo(m, err=True))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"Ensemble {summary['models']['ensemble']!r} from {summary['repo_uri']}, "
               f"{summary['replicas']}-{summary['max_replicas']} Triton replicas; "
               f"training on {summary['nodes']} x {summary['nproc_per_node']} {summary['kind']}.")
    click.echo(f"Serve:  kubectl apply -k {out}/overlays/{summary['kind']}")
    click.echo(f"Train:  kubectl apply -k {out}/training/pytorchjob   (or training/indexed-job)")
    click.echo(f"Guide:  {out}/README.md")
    for warning in summary["warnings"]:
        click.echo(f"Note: {warning}", err=True)
