"""`rtk report`: the run's self-contained HTML page; and the refresh other commands call."""

from __future__ import annotations

import click

from .common import handled


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), help="HTML file (default: RUN_DIR/report.html).")
@click.option("--bench", "benches", multiple=True, type=click.Path(file_okay=False),
              help="Also show this `rtk bench --out` folder (those of later benches are recorded).")
@click.option("--tune", "tunes", multiple=True, type=click.Path(file_okay=False),
              help="Also show this `rtk tune --out` folder.")
@handled
def report(run_dir, out, benches, tunes):
    """Write one self-contained HTML page about RUN_DIR: data, training, trust, speed, deployment."""
    from pathlib import Path

    from ..html_report import write_report

    extra = {"bench": [str(Path(b).resolve()) for b in benches],
             "tune": [str(Path(t).resolve()) for t in tunes]}
    click.echo(write_report(run_dir, out, extra))


def refreshed(run_dir, **outputs) -> None:
    """Rewrite RUN_DIR's report (recording bench=/tune= output folders) and print its path."""
    from ..html_report import refresh

    try:
        click.echo(f"Report: {refresh(run_dir, **outputs)}", err=True)
    except Exception as exc:  # noqa: BLE001 - the command's own work is done and must not fail now
        click.secho(f"Warning: the report was not refreshed ({type(exc).__name__}: {exc}); "
                    f"run `rtk --debug report {run_dir}` to see why.", fg="yellow", err=True)
