"""`rtk bench`: options and the printed summary."""

from __future__ import annotations

import json

import click

from .common import BACKENDS, INT_LIST, handled


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--backends", default="all", show_default=True,
              help="Comma-separated backend names, or all (every local backend).")
@click.option("--batch-sizes", default="1,8,32", show_default=True, type=INT_LIST)
@click.option("--device", type=click.Choice(["cpu", "cuda", "all"]), default="cpu", show_default=True)
@click.option("--duration", default=10.0, show_default=True,
              type=click.FloatRange(min=0.1), help="Seconds per measurement (max).")
@click.option("--triton-url", help="HOST:PORT of a running Triton server (HTTP; gRPC is port+1).")
@click.option("--triton-grpc-url", help="HOST:PORT for gRPC (default: the HTTP port + 1).")
@click.option("--concurrency", "triton_concurrency", default="1,2,4,8", show_default=True,
              type=INT_LIST, help="Triton sweep.")
@click.option("--protocols", "triton_protocols", default="http,grpc", show_default=True,
              type=click.Choice(["http", "grpc", "http,grpc", "grpc,http"]),
              help="Triton protocols to sweep.")
@click.option("--soak", "soak_seconds", default=0.0, show_default=True,
              type=click.FloatRange(min=0), help="Triton soak seconds at max concurrency.")
@click.option("--images", type=click.Path(exists=True, file_okay=False),
              help="A folder of your own images (any size, any layout): every backend and the "
                   "served ensemble are measured on them end to end, decoding included.")
@click.option("--stable-windows", default=3, show_default=True, type=click.IntRange(min=2),
              help="Consecutive windows that must agree for a point to be stable (perf_analyzer: 3).")
@click.option("--stability-percent", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
              help="How closely: throughput and mean latency within this percentage of their mean "
                   "(perf_analyzer: 10).")
@click.option("--max-windows", default=5, show_default=True, type=click.IntRange(min=2),
              help="Windows per point at most (each is --duration / this long); a point that "
                   "never stabilises is reported as unstable.")
@click.option("--out", default="benchmarks/latest", show_default=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True)
@handled
def bench(run_dir, backends, device, duration, out, as_json, stable_windows, stability_percent,
          max_windows, **options):
    """Parity-checked throughput and latency of every backend; Markdown, JSON and plots."""
    from ..bench import BenchOptions, Timing, run_bench
    from ..bench.stability import Stability
    from ..bench.report import markdown, write
    from ..core.bundle import Bundle
    from ..core.errors import RtkError
    from .report import refreshed

    names = None if backends == "all" else [b.strip() for b in backends.split(",")]
    unknown = [n for n in names or [] if n not in BACKENDS]
    if unknown:
        raise RtkError(f"Unknown backend(s): {', '.join(unknown)}.", f"Choose from {', '.join(BACKENDS)}.")
    if names and "triton" in names and not options["triton_url"]:
        raise RtkError("The triton backend needs --triton-url.", "Start one with: rtk serve")
    options["triton_protocols"] = options["triton_protocols"].split(",")
    opts = BenchOptions(backends=names, devices=["cpu", "cuda"] if device == "all" else [device],
                        timing=Timing(duration=duration, warmup=min(2.0, duration / 5),
                                      stability=Stability(stable_windows, stability_percent,
                                                          max(stable_windows, max_windows))),
                        **options)

    def echo(message: str) -> None:
        click.echo(message, err=True)

    result = run_bench(Bundle.load(run_dir), opts, echo=echo)
    paths = write(result, out)
    refreshed(run_dir, bench=out)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(markdown(result))
    click.echo("Wrote " + ", ".join(str(p) for p in paths))
