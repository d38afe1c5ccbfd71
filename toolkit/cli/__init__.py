"""The `rtk` command line: parses options, calls one library function, prints a summary."""

from __future__ import annotations

import json

import click

from .. import __version__
from .bench import bench
from .common import handled
from .deploy import deploy
from .export import export
from .report import report
from .train import finetune
from .triton import ready, serve, triton, triton_env
from .tune import tune
from .use import eval_cmd, predict


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="rtk")
@click.option("--debug", is_flag=True, help="Show Python tracebacks on errors.")
def main(debug: bool) -> None:
    """rtk: fine-tune an image classifier, export it, verify it, serve it, benchmark it."""


@main.command()
@click.argument("data_dir", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handled
def inspect(data_dir: str, as_json: bool) -> None:
    """Scan DATA_DIR (one subfolder per class) and recommend a training configuration."""
    from ..train.inspect import inspect_data, render

    report = inspect_data(data_dir, progress=not as_json)
    click.echo(json.dumps(report, indent=2) if as_json else render(report))


@main.command(name="sample-data")
@click.argument("out_dir", type=click.Path())
@click.option("--size", default=32, show_default=True, help="Image side in pixels.")
@handled
def sample_data(out_dir: str, size: int) -> None:
    """Write the embedded sample data set (scikit-learn's handwritten digits) to OUT_DIR."""
    from ..data.sample import write_digits

    click.echo(f"Wrote digits to {write_digits(out_dir, size)}")


for _command in (finetune, export, bench, eval_cmd, predict, triton, serve, ready, triton_env, tune,
                 deploy, report):
    main.add_command(_command)
