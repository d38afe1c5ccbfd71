"""`--resume` with flags: the ones safe to change mid-run are applied, the others refused."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Iterable

from ..core.errors import RtkError
from .config import TrainConfig

# changed on a resume, these only move the run's end or how often it is validated: the
# cosine schedule is recomputed for the new --epochs from the step it had reached
SAFE = ("epochs", "patience", "eval_steps")
# where and how this call runs, not what it trains: always this call's choice
THIS_CALL = ("out", "resume", "device", "decode", "config_file")


def given_options(cfg: TrainConfig) -> set[str]:
    """The options a library caller set: the fields that differ from TrainConfig's defaults
    (the CLI passes the ones given on the command line or in --config instead)."""
    defaults = TrainConfig(data_dir=cfg.data_dir, out=cfg.out)
    return {"data_dir"} | {f.name for f in fields(cfg)
                           if getattr(cfg, f.name) != getattr(defaults, f.name)}


def _flag(name: str) -> str:
    return "DATA_DIR" if name == "data_dir" else "--" + name.replace("_", "-")


def _same(name: str, a: Any, b: Any) -> bool:
    if name == "data_dir":
        return Path(a).resolve() == Path(b).resolve()
    return a == b


def resumed_config(state: dict[str, Any], cfg: TrainConfig,
                   explicit: Iterable[str] | None) -> tuple[TrainConfig, list[str]]:
    """(the config to continue with, what changed): the run's saved config, with this call's
    --epochs, --patience and --eval-steps and where it runs. Any other option given with a
    value the run was not started with (nor resolved to) is refused, naming them."""
    saved = state["config"]
    requested = state.get("requested") or saved  # a last.pt from before rtk recorded them
    given = set(given_options(cfg) if explicit is None else explicit) - set(THIS_CALL)
    changes, refused = {}, []
    for name in sorted(given & set(saved)):
        value = getattr(cfg, name)
        if any(_same(name, value, ref[name]) for ref in (saved, requested) if name in ref):
            continue
        if name in SAFE:
            changes[name] = value
        else:
            refused.append(f"{_flag(name)} {value} (the run has {saved[name]})")
    if refused:
        raise RtkError("--resume continues a run as it was started; these option(s) differ "
                       "from it: " + "; ".join(refused) + ".",
                       f"Drop them, or start a new run with another --out. Safe to change "
                       f"on a resume: {', '.join(_flag(n) for n in SAFE)}.")
    notes = [f"{_flag(n)} {v} (was {saved[n]})" for n, v in changes.items()]
    done = int(state.get("epoch", 0))
    if changes.get("epochs", done) < done:  # trained epochs cannot be undone: it ends now
        notes[list(changes).index("epochs")] += (f"; {done} epoch(s) are trained already, so "
                                                 f"the run ends at epoch {done}")
        changes["epochs"] = done
    merged = TrainConfig(**{**saved, **changes, "resume": True, "device": cfg.device,
                            "decode": cfg.decode})
    return merged, notes


def requested_of(cfg: TrainConfig) -> dict[str, Any]:
    """The options as given, before the card resolved them (kept in last.pt for a resume)."""
    return asdict(cfg)


def requested_after(state: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    """The run's options as first given, with the safe ones this resume changed."""
    return {**(state.get("requested") or state["config"]), **{n: getattr(cfg, n) for n in SAFE}}
