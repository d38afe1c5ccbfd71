"""User-facing errors: a message plus a hint, printed by the CLI without a traceback."""

from __future__ import annotations

import importlib
from types import ModuleType


class RtkError(Exception):
    """An error caused by input or environment that the user can fix."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = 2):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code


class MissingDependency(RtkError):
    """An optional dependency is not installed."""


class GateFailed(RtkError):
    """An artifact disagreed with the PyTorch reference beyond its tolerance."""


def require(module: str, extra: str) -> ModuleType:
    """Import an optional dependency or raise an error naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # also covers broken native libraries
        raise MissingDependency(
            f"{module} is not available here ({exc}).",
            f"Install it with: pip install 'rtk[{extra}]'",
        ) from exc
