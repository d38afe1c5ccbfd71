"""The backend contract: a classifier runtime taking an NCHW float32 batch, returning logits."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import numpy as np


class Backend(abc.ABC):
    """A classifier runtime. Inputs and outputs are NumPy float32 arrays."""

    name: ClassVar[str]
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    accepts_bytes: ClassVar[bool] = False  # True: __call__ takes encoded images, not tensors

    def __init__(self, bundle, device: str = "cpu", **options) -> None:
        self.bundle, self.device = bundle, device

    @classmethod
    def availability(cls, bundle, device: str) -> str | None:
        """None when the backend can run; else "reason: what to do about it"."""
        if device not in cls.devices:
            return f"{cls.name} does not run on {device}: use --device {cls.devices[0]}"
        return None

    @abc.abstractmethod
    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits, shape (N, classes), for a float32 batch of shape (N, 3, H, W)."""

    def close(self) -> None:
        """Release sessions, engines and connections."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
