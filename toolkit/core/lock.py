"""The run directory's writer lock: one writing command at a time, readers never wait.

`export`, `finetune` (into an existing run) and `triton --repo` inside a run take it. It is
an advisory `flock` on the run directory itself: nothing is written into the bundle, and
the kernel releases it when the process ends, however it ends, so a crash never leaves a
stale lock. Readers (`eval`, `predict`, `bench`, `inspect`, `serve`) take no lock: every
write is atomic (toolkit.core.files), so they see the old files or the new, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Iterator

from .errors import RtkError


@contextlib.contextmanager
def bundle_lock(root: str | os.PathLike, command: str = "rtk") -> Iterator[None]:
    """Hold the writer lock of run directory `root`; refuse at once if another process has it.

    A folder that does not exist yet has nothing to protect, and under torchrun only rank 0
    writes the bundle: in both cases the block runs unlocked.
    """
    root = Path(root)
    if not root.is_dir() or os.environ.get("RANK", "0") != "0":
        yield
        return
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise RtkError(f"{root} is being changed by another rtk command (export, finetune or "
                           f"triton), so {command} cannot write to it now.",
                           "Wait until that command finishes, then run this again. Reading "
                           "commands (eval, predict, bench, serve) are not blocked.") from None
        fd = None  # a file system without directory locks (some NFS): the lock is advisory
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock

