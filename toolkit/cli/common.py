"""What every command module shares: error handling, the backend names, shared option types."""

from __future__ import annotations

import functools
import sys

import click

from ..backends import REGISTRY
from ..core.errors import RtkError


BACKENDS = list(REGISTRY)  # the registry module is light: no backend library is imported


class IntList(click.ParamType):
    """A comma-separated list of positive integers ("1,8,32")."""

    name = "text"  # the help shows TEXT, as before this type existed

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            values = [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers", param, ctx)
        if not values or min(values) < 1:
            self.fail("values must be positive integers", param, ctx)
        return values


INT_LIST = IntList()


def target_cpu_option(fn):
    """--target-cpu: the serving CPUs' int8 class, which decides whether INT8 may be served."""
    from ..core.host import INT8_CLASSES

    return click.option(
        "--target-cpu", type=click.Choice(INT8_CLASSES),
        help="CPU int8 class of the serving nodes (default: this host's; `rtk inspect` prints "
             "it). INT8 is served only to a class its gate passed on, where it measured at "
             "least 1.3x FP32; otherwise FP32, with the reason.")(fn)


def _fail(message: str, hint: str | None, code: int) -> None:
    click.secho(f"Error: {message}", fg="red", err=True)
    if hint:
        click.echo(f"Hint: {hint}", err=True)
    sys.exit(code)


def handled(fn):
    """Decorates a command: RtkError (and unexpected crashes) become Error:/Hint: lines."""
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
