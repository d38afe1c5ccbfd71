"""Facts about this machine that several stages size themselves by."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """CPU cores this process may run on (affinity-aware where the OS tells)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
