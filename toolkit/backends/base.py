"""The backend contract: a classifier runtime taking a uint8 NHWC image batch, returning logits."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import numpy as np


class Backend(abc.ABC):
    """A classifier runtime: uint8 NHWC images in (toolkit/core/contract.py), float32 logits out."""

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
        """Logits, shape (N, classes), for a uint8 batch of shape (N, H, W, 3)."""

    def images(self, x) -> np.ndarray:
        """`x` as a contiguous uint8 NHWC batch, or an RtkError naming the expected shape."""
        import numpy as np

        from ..core.contract import check_batch

        check_batch(x, self.bundle.preprocessing.crop)
        return np.ascontiguousarray(x)

    def close(self) -> None:
        """Release sessions, engines and connections."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
