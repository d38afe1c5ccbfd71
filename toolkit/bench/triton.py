"""Triton rows for `rtk bench`: a concurrency sweep over HTTP and gRPC, server-side times,
and a bounded soak. Requests are single images sent as encoded bytes to the ensemble."""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Any, Callable

import numpy as np

from .system import rss_mb

SERVER_PROCESSES = ("tritonserver", "triton_python_backend_stub")


def urls(http: str, grpc: str | None = None) -> dict[str, str]:
    """HTTP at --triton-url; gRPC at --triton-grpc-url, else the next port (rtk serve's layout)."""
    host, _, port = http.split("://", 1)[-1].rpartition(":")
    return {"http": f"{host}:{port}", "grpc": grpc or f"{host}:{int(port) + 1}"}


def open_client(bundle, protocol: str, url: str):
    from ..backends import open_backend

    return open_backend("triton", bundle, "cpu", url=url, protocol=protocol, send_bytes=True)


def load(bundle, protocol: str, url: str, *, payloads: list[bytes], concurrency: int,
         seconds: float) -> dict[str, Any]:
    """`concurrency` clients each sending one image at a time for `seconds`.

    Each client connects in its own thread (tritonclient.http runs on gevent, whose hub
    belongs to the thread that made it), then all start together, so set-up is not timed.
    A request that fails for any reason is counted, never fatal.
    """
    clients: list = [None] * concurrency
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    failures = [0] * concurrency
    errors: list[str] = []
    gate = threading.Barrier(concurrency + 1)
    stop = [0.0]

    def worker(i: int) -> None:
        try:
            clients[i] = open_client(bundle, protocol, url)
        except Exception as exc:  # noqa: BLE001 - a client that cannot connect is a failure
            failures[i] += 1
            errors.append(getattr(exc, "message", str(exc)))
        finally:
            gate.wait()  # never leave the others waiting, even if this client failed
        if clients[i] is None:
            return
        k = i
        while time.perf_counter() < stop[0]:
            t0 = time.perf_counter()
            try:
                clients[i]([payloads[k % len(payloads)]])
                latencies[i].append(time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001
                failures[i] += 1
                errors.append(getattr(exc, "message", str(exc)))
            k += concurrency

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    stop[0] = start + seconds
    gate.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    for client in clients:
        if client is not None:
            client.close()
    lat = np.concatenate([np.asarray(x) for x in latencies]) * 1000
    return {"requests": int(lat.size), "failed": sum(failures), "seconds": wall,
            "throughput": lat.size / wall, "lat_ms": lat, "first_error": errors[0] if errors else None}


def server_stats(client, protocol: str) -> dict[str, dict[str, float]]:
    """Cumulative queue and compute time (ns) and counts per model, from Triton's statistics API."""
    raw = client.get_inference_statistics(**({"as_json": True} if protocol == "grpc" else {}))
    out = {}
    for m in raw.get("model_stats", []):
        s = m.get("inference_stats", {})
        out[m["name"]] = {k: float(s.get(k, {}).get("ns", 0)) for k in ("queue", "compute_infer")}
        out[m["name"]]["count"] = float(s.get("success", {}).get("count", 0))
    return out


def _server_side(before: dict, after: dict) -> dict[str, dict[str, float]]:
    result = {}
    for name, a in after.items():
        b = before.get(name, {"queue": 0, "compute_infer": 0, "count": 0})
        n = a["count"] - b["count"]
        if n > 0:
            result[name] = {"queue_ms": (a["queue"] - b["queue"]) / n / 1e6,
                            "compute_ms": (a["compute_infer"] - b["compute_infer"]) / n / 1e6}
    return result


def server_rss_mb() -> float | None:
    """Resident memory of the local Triton server and its Python backend stubs."""
    try:
        pids = subprocess.run(["pgrep", "-f", "|".join(SERVER_PROCESSES)], capture_output=True,
                              text=True, timeout=5).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    sizes = [s for p in pids if (s := rss_mb(p)) is not None]
    return sum(sizes) if sizes else None


def sweep_point(bundle, client, protocol: str, *, url: str, payloads: list[bytes], concurrency: int,
                seconds: float, agreement: float) -> dict[str, Any]:
    """One row of the sweep: client latency and throughput next to Triton's own timings."""
    from .common import row

    before = server_stats(client.client, protocol)
    res = load(bundle, protocol, url, payloads=payloads, concurrency=concurrency, seconds=seconds)
    side = _server_side(before, server_stats(client.client, protocol))
    lat, first_error = res.pop("lat_ms"), res.pop("first_error")
    if lat.size == 0:
        return row("triton", "server", 1, status=f"all {res['failed']} requests failed: {first_error}"[:300],
                   protocol=protocol, concurrency=concurrency)
    status = "ok" if not res["failed"] else f"{res['failed']} failed requests, e.g. {first_error}"
    return row("triton", "server", 1, status=status[:300], protocol=protocol, concurrency=concurrency,
               throughput=res["throughput"], agreement=agreement, requests=res["requests"],
               p50_ms=float(np.percentile(lat, 50)), p90_ms=float(np.percentile(lat, 90)),
               p99_ms=float(np.percentile(lat, 99)), server=side)


def bench_triton(bundle, opts, images, *, reference, echo: Callable = print) -> dict[str, Any]:
    """Parity through the server, then the sweep per protocol, then the optional soak."""
    from .common import PARITY_IMAGES, agreement, parity_floor, row, sample_paths

    paths = sample_paths(bundle, PARITY_IMAGES)
    payloads = [p.read_bytes() for p in paths]
    rows, per_protocol = [], {}
    endpoints = urls(opts.triton_url, opts.triton_grpc_url)
    for protocol in opts.triton_protocols:
        url = endpoints[protocol]
        try:
            with open_client(bundle, protocol, url) as client:
                logits = client(payloads)
                raw, confident = agreement(reference, logits)
                served = client.config.get("parameters", {}).get("rtk.artifact", {})
                artifact = served.get("string_value", "")
                entry = bundle.manifest.artifact(artifact)
                precision = entry.precision if entry else None
                if confident < parity_floor("triton", precision):
                    rows.append(row("triton", "server", 1, status=f"parity failed: confident agreement "
                                    f"{confident:.1%} ({artifact})", protocol=protocol,
                                    concurrency=None))
                    continue
                sweep = []
                for c in opts.triton_concurrency:
                    echo(f"  triton {protocol:<4} concurrency {c}")
                    r = sweep_point(bundle, client, protocol, url=url, payloads=payloads, concurrency=c,
                                     seconds=opts.timing.duration, agreement=raw)
                    rows.append(r)
                    if r["throughput"] is not None:
                        sweep.append(r)
                per_protocol[protocol] = sweep
        except Exception as exc:  # an unreachable server is a row, not a crash
            rows.append(row("triton", "server", None, status=f"error: {getattr(exc, 'message', exc)}",
                            protocol=protocol, concurrency=None))
    soak = None
    if opts.soak_seconds > 0 and per_protocol:
        protocol, c = next(iter(per_protocol)), max(opts.triton_concurrency)
        echo(f"  triton soak: {opts.soak_seconds:.0f} s at concurrency {c} ({protocol})")
        start_rss = server_rss_mb()
        res = load(bundle, protocol, endpoints[protocol], payloads=payloads, concurrency=c,
                   seconds=opts.soak_seconds)
        soak = {"protocol": protocol, "concurrency": c, "seconds": res["seconds"],
                "requests": res["requests"], "failed": res["failed"],
                "first_error": res["first_error"],
                "server_rss_start_mb": start_rss, "server_rss_end_mb": server_rss_mb()}
    return {"rows": rows, "soak": soak}
