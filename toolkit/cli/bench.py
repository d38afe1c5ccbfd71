"""`rtk bench`: options and the printed summary."""

from __future__ import annotations

import json

import click


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise click.BadParameter("values must be positive integers")
    return values


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--backends", default="all", show_default=True,
              help="Comma-separated backend names, or all (every local backend).")
@click.option("--batch-sizes", default="1,8,32", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda", "all"]), default="cpu", show_default=True)
@click.option("--duration", default=10.0, show_default=True,
              type=click.FloatRange(min=0.1), help="Seconds per measurement (max).")
@click.option("--triton-url", help="HOST:PORT of a running Triton server (HTTP; gRPC is port+1).")
@click.option("--triton-grpc-url", help="HOST:PORT for gRPC (default: the HTTP port + 1).")
@click.option("--concurrency", default="1,2,4,8", show_default=True, help="Triton sweep.")
@click.option("--soak", default=0.0, show_default=True,
              type=click.FloatRange(min=0), help="Triton soak seconds at max concurrency.")
@click.option("--out", default="benchmarks/latest", show_default=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True)
def bench(run_dir, backends, batch_sizes, device, duration, triton_url, triton_grpc_url, concurrency, soak,
          out, as_json):
    """Parity-checked throughput and latency of every backend; Markdown, JSON and plots."""
    from .common import handled

    handled(_bench)(run_dir, backends, batch_sizes, device, duration, triton_url, triton_grpc_url,
                    concurrency,
                    soak, out, as_json)


def _bench(run_dir, backends, batch_sizes, device, duration, triton_url, triton_grpc_url, concurrency,
           soak, out, as_json):
    from ..bench import BenchOptions, Timing, run_bench
    from ..bench.report import write
    from ..core.bundle import Bundle
    from .common import BACKENDS
    from ..core.errors import RtkError

    names = None if backends == "all" else [b.strip() for b in backends.split(",")]
    unknown = [n for n in names or [] if n not in BACKENDS]
    if unknown:
        raise RtkError(f"Unknown backend(s): {', '.join(unknown)}.", f"Choose from {', '.join(BACKENDS)}.")
    if names and "triton" in names and not triton_url:
        raise RtkError("The triton backend needs --triton-url.", "Start one with: rtk serve")
    opts = BenchOptions(backends=names, batch_sizes=int_list(batch_sizes),
                        devices=["cpu", "cuda"] if device == "all" else [device],
                        timing=Timing(duration=duration, warmup=min(2.0, duration / 5)),
                        triton_url=triton_url, triton_grpc_url=triton_grpc_url,
                        triton_concurrency=int_list(concurrency),
                        soak_seconds=soak)

    def echo(message: str) -> None:
        click.echo(message, err=True)

    result = run_bench(Bundle.load(run_dir), opts, echo=echo)
    paths = write(result, out)
    from .report import refreshed

    refreshed(run_dir, bench=out)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    from ..bench.report import markdown

    click.echo(markdown(result))
    click.echo("Wrote " + ", ".join(str(p) for p in paths))
