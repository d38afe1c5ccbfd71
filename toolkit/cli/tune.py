"""`rtk tune`: options and the printed summary."""

from __future__ import annotations

import json

import click

from .common import INT_LIST, handled, target_cpu_option
from .triton import BACKEND_ENV_HELP


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--p99-ms", required=True, type=float, help="Latency budget: p99 per request, ms.")
@click.option("--kind", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True)
@click.option("--platform", type=click.Choice(["onnxruntime", "python"]),
              help="Classifier platform (default: python on cpu, the local server's backend; "
                   "onnxruntime on gpu).")
@click.option("--budget-minutes", default=5.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Search time; the search stops before a candidate that would overrun it.")
@click.option("--concurrency", default="1,4,8", show_default=True, type=INT_LIST,
              help="Client concurrencies measured for every candidate.")
@click.option("--seconds", default=5.0, show_default=True, type=click.FloatRange(min=0.5),
              help="Seconds of load per candidate and concurrency.")
@click.option("--images", type=click.Path(exists=True, file_okay=False),
              help="Send these files (e.g. your camera photos) instead of the run's held-out images.")
@click.option("--stable-windows", default=3, show_default=True, type=click.IntRange(min=2),
              help="Consecutive windows that must agree for a point to be stable (perf_analyzer: 3).")
@click.option("--stability-percent", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
              help="How closely: throughput and mean latency within this percentage of their mean.")
@click.option("--out", default="tune", show_default=True, type=click.Path(),
              help="Folder for tune.md, tune.json and tune.png.")
@click.option("--repo", default="model_repository", show_default=True, type=click.Path(),
              help="Where the chosen deployment's model repository is written.")
@click.option("--name", help="Ensemble name (default: the run folder's name).")
@click.option("--backend-env", type=click.Path(), help=BACKEND_ENV_HELP)
@target_cpu_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handled
def tune(run_dir, as_json, stable_windows, stability_percent, **options):
    """Find the fastest trusted Triton deployment of RUN_DIR whose p99 meets --p99-ms."""
    from ..core.bundle import Bundle
    from ..tune import TuneOptions, tune as run_tune
    from ..tune.report import write
    from .report import refreshed

    from ..bench.stability import Stability

    opts = TuneOptions(**options, stability=Stability(stable_windows, stability_percent))
    echo = lambda m: click.echo(m, err=True)  # noqa: E731 - stdout holds the result
    echo(f"Tuning the Triton deployment of {run_dir} for p99 <= {opts.p99_ms:g} ms "
         f"({opts.budget_minutes:g} min budget)...")
    result = run_tune(Bundle.load(run_dir), opts, echo=echo)
    paths = write(result, opts.out)
    refreshed(run_dir, tune=opts.out)
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    click.echo(f"{result['verdict']}.")
    if result.get("speedup_vs_default"):
        click.echo(f"{result['speedup_vs_default']:.2f}x the default rtk triton deployment "
                   f"({result['default']['throughput']:.1f} images/s).")
    if result.get("serve"):
        c = result["chosen"]
        click.echo(f"Chosen: {c['artifact']}, max batch {c['max_batch_size']}, {c['instances']} "
                   f"instance(s), {c.get('preprocess_instances')} decoding instance(s), delay "
                   f"{c['queue_delay_us']} us. Serve it with: {result['serve']}")
    click.echo(f"Report: {paths[0]}")
