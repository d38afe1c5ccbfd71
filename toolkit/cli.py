"""The `rtk` command line: parses options, calls one library function, prints a summary."""

from __future__ import annotations

import functools
import json
import sys

import click

from . import __version__
from .backends import REGISTRY
from .errors import RtkError

BACKENDS = list(REGISTRY)  # the registry module is light: no backend library is imported


def _fail(message: str, hint: str | None, code: int) -> None:
    click.secho(f"Error: {message}", fg="red", err=True)
    if hint:
        click.echo(f"Hint: {hint}", err=True)
    sys.exit(code)


def handled(fn):
    """Turn RtkError (and unexpected crashes) into Error:/Hint: lines, not tracebacks."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug")
        try:
            return fn(*args, **kwargs)
        except RtkError as exc:
            if debug:
                raise
            _fail(exc.message, exc.hint, exc.exit_code)
        except KeyboardInterrupt:
            _fail("Interrupted.", None, 130)
        except (click.ClickException, click.exceptions.Exit):
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if debug:
                raise
            import errno

            # A full disk, a quota or a file-size limit: the user's to fix, not a bug to report.
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                _fail(f"Disk full while writing {exc.filename or 'a file'}: {exc.strerror}",
                      "Free space (or raise the file-size limit) and re-run; rtk writes "
                      "atomically: the previous files are unchanged.", 1)
            _fail(f"{type(exc).__name__}: {exc}", "Re-run with `rtk --debug ...` for the traceback "
                  "and report it if it looks like a bug.", 1)
    return wrapper


def _emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2))


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
    from .datareport import inspect_data, render

    report = inspect_data(data_dir, progress=not as_json)
    click.echo(json.dumps(report, indent=2) if as_json else render(report))


@main.command(name="sample-data")
@click.argument("out_dir", type=click.Path())
@click.option("--size", default=32, show_default=True, help="Image side in pixels.")
@handled
def sample_data(out_dir: str, size: int) -> None:
    """Write the embedded sample data set (scikit-learn's handwritten digits) to OUT_DIR."""
    from .sample import write_digits

    click.echo(f"Wrote digits to {write_digits(out_dir, size)}")


from .cli_train import finetune  # noqa: E402  (registers with `main`)
from .cli_use import eval_cmd, predict  # noqa: E402

from .cli_bench import bench  # noqa: E402
from .cli_export import export  # noqa: E402
from .cli_triton import serve, triton, triton_env  # noqa: E402
from .cli_tune import tune  # noqa: E402

main.add_command(finetune)
main.add_command(export)
main.add_command(bench)
main.add_command(eval_cmd)
main.add_command(predict)
main.add_command(triton)
main.add_command(serve)
main.add_command(triton_env)
main.add_command(tune)

from .cli_deploy import deploy  # noqa: E402

main.add_command(deploy)

from .cli_report import report  # noqa: E402

main.add_command(report)
