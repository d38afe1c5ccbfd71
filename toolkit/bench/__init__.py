"""`rtk bench`: parity-checked throughput and latency of every backend, with reports."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..core.bundle import Bundle
from .harness import Timing, time_calls
from ..core.host import usable_cores
from ..core.manifest import Artifact
from .system import environment, rss_mb
from .common import PARITY_IMAGES, agreement, parity_floor, row, sample_paths


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


def _reference(bundle: Bundle):
    from ..backends import open_backend
    from ..backends.run import run_backend

    paths = sample_paths(bundle, PARITY_IMAGES)
    with open_backend("torch", bundle, "cpu") as ref:
        logits = run_backend(ref, paths, bundle.preprocessing)
    from ..backends.run import batches

    images = next(batches(paths, bundle.preprocessing, len(paths)))
    return images, logits


def data_pipeline(bundle: Bundle, n: int = 256) -> dict[str, Any]:
    """Images/s of decode + eval transform, single-threaded and with a thread pool."""
    from concurrent.futures import ThreadPoolExecutor

    from ..data.images import eval_uint8, open_rgb

    paths = sample_paths(bundle, n)
    recipe = bundle.preprocessing.to_json()  # images.py takes the plain dict (copied to Triton)
    work = lambda p: eval_uint8(open_rgb(p), recipe)  # noqa: E731
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
                  reference: np.ndarray, echo: Callable = print) -> list[dict]:
    """Rows for one backend on one device: a reason row, a parity-failed row, or timed rows."""
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
                batch = np.ascontiguousarray(np.resize(images, (bs, *images.shape[1:])))
                echo(f"  {name:<18} {device:<4} batch {bs:<4}")
                rows.append({**_timed(backend, name, device, bs=bs, batch=batch, timing=opts.timing,
                                     agreement=raw), **gate})
    except Exception as exc:  # e.g. torch.compile without a C++ compiler: a row, not a crash
        rows.append(row(name, device, None, status=f"error: {getattr(exc, 'message', exc)}"[:300]))
    return rows


def _timed(backend, name, device, *, bs, batch, timing, agreement) -> dict:
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        stats = time_calls(lambda: backend(batch), bs, timing, device=device)
    except Exception as exc:  # out of memory and friends: report, keep going
        oom = "out of memory" in str(exc).lower()
        return row(name, device, bs, status=("out of memory" if oom else f"error: {exc}")[:200])
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    # Every backend takes the uint8 contract, so a GPU receives exactly the image bytes.
    h2d = batch[0].nbytes if device == "cuda" else 0
    return row(name, device, bs, status="ok", **stats, agreement=agreement, rss_mb=rss_mb(),
               gpu_peak_mb=gpu_mb, h2d_bytes_per_image=h2d)


def default_backends() -> list[str]:
    from ..backends import REGISTRY

    return [n for n in REGISTRY if n != "triton"]


def run_bench(bundle: Bundle, opts: BenchOptions, echo: Callable = print) -> dict[str, Any]:
    """Benchmark every requested backend and device; the result feeds `report.write`."""
    echo("Parity reference: PyTorch eager FP32 on held-out images...")
    images, reference = _reference(bundle)
    results = []
    for device in opts.devices:
        for name in opts.backends or default_backends():
            if name == "triton":
                continue
            results += bench_backend(bundle, name, device, opts=opts, images=images,
                                     reference=reference, echo=echo)
    triton = None
    if opts.triton_url or (opts.backends and "triton" in opts.backends):
        from .triton import bench_triton

        triton = bench_triton(bundle, opts, images, reference=reference, echo=echo)
        results += triton.pop("rows")
    from .report import headlines

    return {"environment": environment(), "bundle": str(bundle.root),
            "arch": bundle.manifest.arch, "image_size": bundle.preprocessing.crop,
            "timing": vars(opts.timing), "data_pipeline": data_pipeline(bundle),
            "results": results, "triton": triton, "headlines": headlines(results)}
