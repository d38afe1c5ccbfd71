"""Checkpoints: plain tensors and containers only, so they load with weights_only=True."""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

from ..core.errors import RtkError
from ..core.files import atomic_path


def unwrap(model):
    """The plain nn.Module under DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def cpu_state(model) -> dict:
    return {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}


def save(path: str | Path, payload: dict[str, Any]) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load(path: str | Path, missing_hint: str = "Start a new run without --resume.") -> Any:
    """Load an untrusted checkpoint; anything beyond tensors and plain containers is refused."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise RtkError(f"No checkpoint at {path}.", missing_hint)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise RtkError(f"{path} was refused: it holds objects other than tensors "
                       f"({str(exc).splitlines()[0]}).",
                       "Checkpoints are loaded with weights_only=True; only load files you made "
                       "with rtk or torch.save(state_dict).") from exc
    except (RuntimeError, OSError, EOFError) as exc:
        raise RtkError(f"{path} is not a readable checkpoint: {str(exc).splitlines()[0]}",
                       "The file may be truncated or not written by torch.save.") from exc


def rng_state() -> dict[str, Any]:
    import torch

    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
