"""Candidate Triton deployments of one bundle, and the coordinate-ascent order that walks them.

The anchor is Triton Model Analyzer's quick search: start from the default deployment, move
one dimension at a time to a neighbouring value, keep moving while it pays, and stop a
dimension at the first step that does not. Accuracy is settled before speed: only artifacts
that passed their export gate are candidates at all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

MAX_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128)
QUEUE_DELAYS_US = (0, 100, 500, 2000, 5000)
INSTANCES = (1, 2, 3, 4, 6, 8)
DIMENSIONS = ("artifact", "instances", "preprocess_instances", "max_batch_size", "queue_delay_us")


@dataclass(frozen=True)
class Candidate:
    """One deployment: what `rtk triton` would write with these options."""

    artifact: str  # onnx | fp16 | int8 (ONNX) or fp16 (the TensorRT plan)
    max_batch_size: int  # Triton's name, as in tune.json (`rtk triton --max-batch`)
    instances: int
    queue_delay_us: int
    preprocess_instances: int = 1  # the image-decoding model's (`rtk triton --preprocess-instances`)

    def describe(self) -> dict[str, Any]:
        return asdict(self)

    def label(self) -> str:
        return (f"{self.artifact}, max batch {self.max_batch_size}, {self.instances} instance(s), "
                f"delay {self.queue_delay_us} us, {self.preprocess_instances} decoding instance(s)")


@dataclass(frozen=True)
class Space:
    """The values each dimension may take for this bundle and machine."""

    artifacts: tuple[str, ...]
    max_batches: tuple[int, ...]
    instances: tuple[int, ...]
    queue_delays_us: tuple[int, ...] = QUEUE_DELAYS_US
    preprocess_instances: tuple[int, ...] = ()  # empty: the start's count only

    def values(self, dimension: str) -> tuple:
        return {"artifact": self.artifacts, "max_batch_size": self.max_batches,
                "instances": self.instances, "preprocess_instances": self.preprocess_instances,
                "queue_delay_us": self.queue_delays_us}[dimension]


def space_for(trusted: list[str], batch_limit: int, cores: int) -> Space:
    """Trusted artifacts, batch sizes up to the artifact limit, instances of the classifier
    and of the decoder up to the cores."""
    batches = tuple(b for b in MAX_BATCHES if b <= batch_limit) or (batch_limit,)
    instances = tuple(i for i in INSTANCES if i <= max(1, cores)) or (1,)
    return Space(tuple(trusted), batches, instances, preprocess_instances=instances)


def step(space: Space, current: Candidate, dimension: str, *, direction: int) -> Candidate | None:
    """The next value up (+1) or down (-1) a numeric dimension, or None at its end."""
    ordered = sorted(set(space.values(dimension)) | {getattr(current, dimension)})
    i = ordered.index(getattr(current, dimension)) + direction
    return replace(current, **{dimension: ordered[i]}) if 0 <= i < len(ordered) else None


def coordinate_ascent(space: Space, start: Candidate, score: Callable[[Candidate], float],
                      *, out_of_time: Callable[[], bool]) -> Candidate:
    """Best candidate found by moving along one dimension at a time while it improves `score`.

    `score` measures (and caches) a candidate; higher is better. Artifacts are tried all;
    a numeric dimension is walked upwards while that pays, else downwards, and left at the
    first step that does not pay.
    """
    best, best_score = start, score(start)
    for dimension in DIMENSIONS:
        if dimension == "artifact":
            for artifact in space.artifacts:
                if out_of_time():
                    return best
                candidate = replace(best, artifact=artifact)
                s = score(candidate)
                if s > best_score:
                    best, best_score = candidate, s
            continue
        for direction in (+1, -1):
            moved = False
            while not out_of_time():
                candidate = step(space, best, dimension, direction=direction)
                if candidate is None:
                    break
                s = score(candidate)
                if s <= best_score:
                    break
                best, best_score, moved = candidate, s, True
            if moved or out_of_time():
                break
    return best
