"""Terminal output: progress bars and tables (rich), kept out of the library logic."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator


def console():
    from rich.console import Console

    # Wide enough for the parity and benchmark tables when the output is a log, not a terminal.
    return Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)


@contextlib.contextmanager
def epoch_bar(total: int, description: str, enabled: bool = True) -> Iterator:
    """A progress bar for one epoch; yields update(step, images_per_s, loss, lr)."""
    if not enabled:
        yield lambda *a, **k: None
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[ips]:.1f} img/s  loss {task.fields[loss]:.4f}  "
                          "lr {task.fields[lr]:.2e}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console(), disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task(description, total=total, ips=0.0, loss=float("nan"), lr=0.0)

        def update(step: int, ips: float, loss: float, lr: float) -> None:
            bar.update(task, completed=step, ips=ips, loss=loss, lr=lr)

        yield update


def table(title: str, columns: list[str], rows: list[list]) -> None:
    """Print a small table to stderr."""
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, justify="right" if c != columns[0] else "left")
    for r in rows:
        t.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in r])
    console().print(t)
