"""Measure candidate deployments on one real Triton server, reloading models between them.

The server runs in explicit model-control mode on a private repository. For each candidate
rtk rewrites the repository with `rtk triton`'s own writer and asks Triton to load the four
models again (its repository API reloads a model whose files changed), so no restart is
needed between candidates. Each point is a concurrency: client images/s and p50/p99 from the
load generator of `rtk bench`, queue and compute time from Triton's statistics.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from ..core.bundle import Bundle
from ..core.errors import RtkError
from .space import Candidate

LOAD_ORDER = ("preprocess", "classifier", "postprocess", "ensemble")


class Bench:
    """A Triton server on a scratch repository; `measure(candidate)` gives its rows."""

    def __init__(self, bundle: Bundle, options: Callable[[Candidate, str], Any],
                 concurrency: list[int], *, seconds: float, echo: Callable = print,
                 backend_env: str | None = None, rule=None, images: str | None = None):
        from ..bench.stability import Stability

        self.bundle, self.options, self.echo, self.backend_env = bundle, options, echo, backend_env
        self.rule, self.images = rule or Stability(), images
        self.concurrency, self.seconds = concurrency, seconds
        self._tmp = tempfile.TemporaryDirectory(prefix="rtk-tune-")
        self.repo = Path(self._tmp.name) / "repo"
        self.server = self.client = self.control = None

    def start(self, first: Candidate) -> "Bench":
        from ..bench.common import bench_paths
        from ..triton import write_repository
        from ..triton.server import TritonServer, free_port
        from ..triton.watchdog import ModelControl

        self.names = write_repository(self.bundle, self.options(first, str(self.repo)),
                                      echo=lambda *_: None)["names"]
        http, grpc, metrics = (free_port() for _ in range(3))
        self.server = TritonServer(self.repo, http_port=http, grpc_port=grpc, metrics_port=metrics,
                                   heal=False, backend_env=self.backend_env).start()
        self.control = ModelControl(f"http://{self.server.endpoints['http']}", self.server.control_key)
        self.payloads = [[p.read_bytes()] for p in bench_paths(self.bundle, self.images, 32)]
        self.loaded = first
        return self

    def measure(self, candidate: Candidate, concurrency: list[int] | None = None) -> list[dict[str, Any]]:
        """One row per concurrency (or one row saying why the candidate could not be measured),
        each measured in windows until stable (toolkit.bench.stability)."""
        from ..bench.common import row

        try:
            self._load(candidate)
        except RtkError as exc:
            return [row("triton", "server", None, status=f"load failed: {exc.message}"[:300],
                        **candidate.describe())]
        from ..bench.triton import open_client, sweep_point

        url = self.server.endpoints["grpc"]
        rows = []
        with open_client(self.bundle, "grpc", url) as client:
            for c in concurrency or self.concurrency:
                r = sweep_point(self.bundle, client, "grpc", url=url, payloads=self.payloads,
                                concurrency=c, seconds=self.seconds, agreement=None, rule=self.rule)
                rows.append({**r, **candidate.describe()})
        return rows

    def _load(self, candidate: Candidate) -> None:
        from ..triton import write_repository

        if candidate == self.loaded:
            return
        start = time.perf_counter()
        write_repository(self.bundle, self.options(candidate, str(self.repo)), echo=lambda *_: None)
        self.loaded = None  # until every model has loaded again
        for role in LOAD_ORDER:
            ok, message = self.control.load(self.names[role])
            if not ok:
                raise RtkError(f"Triton could not load {self.names[role]}: {message}")
        self.loaded = candidate
        self.echo(f"    loaded in {time.perf_counter() - start:.1f} s")

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        self._tmp.cleanup()
