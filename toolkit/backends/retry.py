"""What a failed Triton request means, and retrying the transient ones within a deadline."""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")

# Kinds of failure. Only the first three are retried: they end by themselves.
OVERLOADED = "overloaded"          # the model's queue is full, or the request waited too long
MODEL_DOWN = "model_down"          # the model's backend died or is being reloaded
UNREACHABLE = "unreachable"        # no connection to the server (restarting, network)
BAD_INPUT = "bad_input"            # the request itself is wrong: retrying cannot help
SERVER_ERROR = "server_error"      # anything else the server reports: not retried
TRANSIENT = (OVERLOADED, MODEL_DOWN, UNREACHABLE)

# Triton's own words (2.51, HTTP and gRPC), matched case-insensitively.
PATTERNS = [
    (OVERLOADED, r"exceeds maximum queue size|request timeout expired"),
    (MODEL_DOWN, r"stub process .* is not healthy|request for unknown model|has no available "
                 r"versions|is not ready|model is unavailable|unavailable.*unloading"),
    (BAD_INPUT, r"\bpreprocess: |unexpected shape|"
                r"data-?type|unexpected datatype|byte size|batch-size must be|invalid argument|"
                r"unexpected inference input|expected \d+ inputs|invalid_argument|\[400\]"),
    (UNREACHABLE, r"failed to connect|connection (refused|reset|aborted)|broken pipe|"
                  r"statuscode\.unavailable|socket closed|timed out|deadline exceeded"),
]


@dataclass
class Failure:
    """A classified failure: its kind and the server's (or transport's) message."""

    kind: str
    message: str

    @property
    def transient(self) -> bool:
        return self.kind in TRANSIENT


def message_of(exc: BaseException) -> str:
    """Triton's message (InferenceServerException.message()) or the exception's text."""
    msg = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
    status = exc.status() if callable(getattr(exc, "status", None)) else None
    if status and str(status) not in (msg or ""):
        msg = f"[{status}] {msg}"
    return (msg or type(exc).__name__).strip()


def classify(exc: BaseException) -> Failure:
    """Sort a failed request into one of the kinds above, by Triton's message and status."""
    msg = message_of(exc)
    for kind, pattern in PATTERNS:
        if re.search(pattern, msg, re.IGNORECASE | re.DOTALL):
            return Failure(kind, msg)
    if isinstance(exc, (OSError, EOFError)):
        return Failure(UNREACHABLE, msg)  # transport errors from geventhttpclient and sockets
    return Failure(SERVER_ERROR, msg)


def backoff(attempt: int, base: float = 0.05, cap: float = 2.0,
            *, rand: Callable[[], float] = random.random) -> float:
    """'Full jitter' exponential backoff: uniform in [0, min(cap, base * 2**attempt)]."""
    return rand() * min(cap, base * (2 ** attempt))


def call_with_retry(fn: Callable[[], T], deadline: float,
                    on_retry: Callable[[Failure, float], None] | None = None,
                    *, clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep,
                    rand: Callable[[], float] = random.random) -> T:
    """Call fn; retry transient failures with jittered backoff until `deadline` seconds passed.

    Raises RetryGaveUp (holding the last Failure, the attempts and the exception) otherwise.
    """
    start, attempt = clock(), 0
    while True:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below; unknown kinds are not retried
            failure = classify(exc)
            left = deadline - (clock() - start)
            if not failure.transient or left <= 0:
                raise RetryGaveUp(failure, attempt + 1, clock() - start) from exc
            pause = min(left, backoff(attempt, rand=rand))
            if on_retry:
                on_retry(failure, pause)
            sleep(pause)
            attempt += 1


class RetryGaveUp(Exception):
    """A request failed for good: a permanent failure, or a transient one past the deadline."""

    def __init__(self, failure: Failure, attempts: int, elapsed: float) -> None:
        super().__init__(failure.message)
        self.failure, self.attempts, self.elapsed = failure, attempts, elapsed
