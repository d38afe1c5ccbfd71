"""`rtk bench`: parity-checked throughput and latency of every backend, with reports."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from ..core.bundle import Bundle
from .harness import Timing, time_calls
from ..core.host import usable_cores
from ..core.manifest import Artifact
from .system import LoadMeter, environment, rss_mb
from .common import PARITY_IMAGES, agreement, bench_paths, parity_floor, row


@dataclass
class BenchOptions:
    backends: list[str] | None = None       # None: every registered local backend
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    timing: Timing = field(default_factory=Timing)
    triton_url: str | None = None
    triton_grpc_url: str | None = None
    triton_concurrency: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    triton_protocols: list[str] = field(default_factory=lambda: ["http", "grpc"])
    soak_seconds: float = 0.0
    images: str | None = None  # a folder of the user's own files: measured end to end, decoding included


def _reference(bundle: Bundle, paths: list):
    from ..backends import open_backend
    from ..backends.run import run_backend

    with open_backend("torch", bundle, "cpu") as ref:
        logits = run_backend(ref, paths, bundle.preprocessing)
    from ..backends.run import batches

    images = next(batches(paths, bundle.preprocessing, len(paths)))
    return images, logits


def data_pipeline(bundle: Bundle, paths: list) -> dict[str, Any]:
    """Images/s of decode + eval transform, single-threaded and with a thread pool."""
    from concurrent.futures import ThreadPoolExecutor

    from ..data.images import load_eval

    recipe = bundle.preprocessing.to_json()  # images.py takes the plain dict (copied to Triton)
    work = lambda p: load_eval(p, recipe)  # noqa: E731
    t0 = time.perf_counter()
    for p in paths:
        work(p)
    single = len(paths) / (time.perf_counter() - t0)
    workers = max(2, usable_cores())
    with ThreadPoolExecutor(workers) as pool:
        t0 = time.perf_counter()
        list(pool.map(work, paths))
        pooled = len(paths) / (time.perf_counter() - t0)
    return {"images": len(paths), "single_thread_images_per_s": single,
            f"{workers}_threads_images_per_s": pooled}


def gate_of(bundle: Bundle, name: str) -> dict[str, Any]:
    """The export gate's verdict on the artifact a backend runs (the reference for `torch`)."""
    from ..backends import backend_class

    artifact = getattr(backend_class(name), "artifact", None)
    entry = bundle.manifest.artifact(artifact)
    parity = entry.parity if entry else None
    if parity:
        return {"gate_top1": parity["top1"], "gate_agreement": parity["agreement"],
                "gate_passed": parity["passed"], "gate_n": parity["n"], **int8_record(entry)}
    rows = (bundle.manifest.export.parity if bundle.manifest.export else None) or [{}]
    if name == "torch" and "reference_top1" in rows[0]:
        return {"gate_top1": rows[0]["reference_top1"], "gate_agreement": 1.0, "gate_passed": True,
                "gate_n": rows[0]["n"]}
    return {}


def int8_record(entry: Artifact) -> dict[str, Any]:
    """What the export recorded of an INT8 graph: nodes kept in float, and its speed against
    the single-shot INT8 graph and FP32, measured by the export in one interleaved run."""
    if entry.precision != "int8":
        return {}
    speed = entry.speed or {}
    kept = entry.kept_float_nodes
    return {"kept_float_nodes": len(entry.kept_float or ()) if kept is None else kept,
            "export_speed_vs_fp32": speed.get("vs_fp32"),
            "export_speed_vs_single_shot_int8": speed.get("vs_single_shot_int8")}


def bench_backend(bundle: Bundle, name: str, device: str, *, opts: BenchOptions, images: np.ndarray,
                  reference: np.ndarray, echo: Callable = print, files: list | None = None) -> list[dict]:
    """Rows for one backend on one device: a reason row, a parity-failed row, or timed rows.
    `files`: what `--images` timing decodes (found once by run_bench; else found here)."""
    from ..backends import backend_class

    reason = backend_class(name).availability(bundle, device)
    if reason:
        return [row(name, device, None, status=f"unavailable: {reason}")]
    gate = gate_of(bundle, name)
    from ..backends import open_backend

    try:
        backend = open_backend(name, bundle, device)
    except Exception as exc:  # a missing library or broken artifact is a row, not a crash
        return [row(name, device, None, status=f"error: {getattr(exc, 'message', exc)}")]
    rows = []
    try:
        with backend:
            logits = np.concatenate([backend(images[i:i + 16]) for i in range(0, len(images), 16)])
            raw, confident = agreement(reference, logits)
            if confident < parity_floor(name):
                return [row(name, device, None, status=f"parity failed: confident top-1 agreement "
                            f"{confident:.1%} with PyTorch (floor {parity_floor(name):.0%})",
                            agreement=raw)]
            for bs in opts.batch_sizes:
                echo(f"  {name:<18} {device:<4} batch {bs:<4}")
                if opts.images:
                    call = EndToEnd(backend, files or bench_paths(bundle, opts.images, 256),
                                    bundle.preprocessing.to_json(), bs)
                else:
                    call = Prepared(backend, np.ascontiguousarray(np.resize(images, (bs, *images.shape[1:]))))
                rows.append({**_timed(call, name, device, bs=bs, timing=opts.timing,
                                      agreement=raw), **gate})
    except Exception as exc:  # e.g. torch.compile without a C++ compiler: a row, not a crash
        rows.append(row(name, device, None, status=f"error: {getattr(exc, 'message', exc)}"[:300]))
    return rows


class Prepared:
    """A backend timed on one prepared uint8 batch: model time alone."""

    def __init__(self, backend, batch: np.ndarray):
        self.backend, self.batch = backend, batch

    def __call__(self):
        return self.backend(self.batch)

    def split(self) -> dict:
        return {}

    def close(self) -> None:
        pass


class EndToEnd:
    """A backend fed from files: each call decodes the next `bs` files with the decode rule
    (data/images.py, a thread pool of the host's cores) and runs the batch. Decoding and the
    model are timed apart, so the report can show where the time goes."""

    def __init__(self, backend, paths: list, recipe: dict, bs: int):
        from concurrent.futures import ThreadPoolExecutor
        from itertools import cycle

        from ..data.images import load_eval

        self.decode = lambda p: load_eval(p, recipe)
        self.backend, self.bs = backend, bs
        self.files = cycle(paths)
        self.pool = ThreadPoolExecutor(max(1, usable_cores()))
        self.decode_s = self.model_s = 0.0
        self.images = 0

    def __call__(self):
        t0 = time.perf_counter()
        files = [next(self.files) for _ in range(self.bs)]
        batch = np.stack(list(self.pool.map(self.decode, files)))
        t1 = time.perf_counter()
        out = self.backend(batch)
        self.decode_s += t1 - t0
        self.model_s += time.perf_counter() - t1
        self.images += self.bs
        return out

    def close(self) -> None:
        self.pool.shutdown()

    def split(self) -> dict:
        n = max(1, self.images)
        return {"decode_ms_per_image": self.decode_s * 1000 / n,
                "model_ms_per_image": self.model_s * 1000 / n}


def _timed(call, name, device, *, bs, timing, agreement) -> dict:
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    batch = getattr(call, "batch", None)
    try:
        with LoadMeter() as load:
            stats = time_calls(call, bs, timing, device=device)
    except Exception as exc:  # out of memory and friends: report, keep going
        oom = "out of memory" in str(exc).lower()
        return row(name, device, bs, status=("out of memory" if oom else f"error: {exc}")[:200])
    finally:
        call.close()
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    # Every backend takes the uint8 contract, so a GPU receives exactly the image bytes.
    h2d = (batch[0].nbytes if batch is not None else 0) if device == "cuda" else 0
    return row(name, device, bs, status="ok", **stats, **call.split(), load=load.result, agreement=agreement,
               rss_mb=rss_mb(), gpu_peak_mb=gpu_mb, h2d_bytes_per_image=h2d)


def default_backends() -> list[str]:
    from ..backends import REGISTRY

    return [n for n in REGISTRY if n != "triton"]


def run_bench(bundle: Bundle, opts: BenchOptions, echo: Callable = print) -> dict[str, Any]:
    """Benchmark every requested backend and device; the result feeds `report.write`."""
    source = f"the images in {opts.images}" if opts.images else "held-out images"
    echo(f"Parity reference: PyTorch eager FP32 on {source}...")
    files = bench_paths(bundle, opts.images, 256)  # one look at the folder for every use below
    images, reference = _reference(bundle, files[:PARITY_IMAGES])
    results = []
    for device in opts.devices:
        for name in opts.backends or default_backends():
            if name == "triton":
                continue
            results += bench_backend(bundle, name, device, opts=opts, images=images,
                                     reference=reference, echo=echo, files=files)
    triton = None
    if opts.triton_url or (opts.backends and "triton" in opts.backends):
        from .triton import bench_triton

        triton = bench_triton(bundle, opts, images, reference=reference, echo=echo)
        results += triton.pop("rows")
    from .report import headlines

    return {"environment": environment(), "bundle": str(bundle.root),
            "arch": bundle.manifest.arch, "image_size": bundle.preprocessing.crop,
            "timing": {**asdict(opts.timing), "window_s": opts.timing.window_s}, "images": opts.images,
            "data_pipeline": data_pipeline(bundle, files),
            "results": results, "triton": triton, "headlines": headlines(results)}
