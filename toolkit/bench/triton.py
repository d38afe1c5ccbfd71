"""Triton rows for `rtk bench`: a concurrency sweep over HTTP and gRPC, server-side times
per model (decoding next to the classifier), and a bounded soak. Requests are single images
sent as encoded bytes to the ensemble: the run's held-out images, or `--images DIR`."""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Any, Callable

import numpy as np

from .stability import Stability, Window, is_stable, summarize
from .system import LoadMeter, rss_mb

SERVER_PROCESSES = ("tritonserver", "triton_python_backend_stub")


def urls(http: str, grpc: str | None = None) -> dict[str, str]:
    """HTTP at --triton-url; gRPC at --triton-grpc-url, else the next port (rtk serve's layout)."""
    host, _, port = http.split("://", 1)[-1].rpartition(":")
    return {"http": f"{host}:{port}", "grpc": grpc or f"{host}:{int(port) + 1}"}


def open_client(bundle, protocol: str, url: str):
    from ..backends import open_backend

    return open_backend("triton", bundle, "cpu", url=url, protocol=protocol, send_bytes=True)


def load(bundle, protocol: str, url: str, *, payloads: list[bytes], concurrency: int,
         seconds: float, rule: Stability | None = None) -> dict[str, Any]:
    """`concurrency` clients each sending one request at a time: for `seconds`, or (with a
    stability rule) in windows of seconds / rule.max_windows until the rule holds.

    Each client connects in its own thread (tritonclient.http runs on gevent, whose hub
    belongs to the thread that made it), then all start together, so set-up is not timed.
    A request that fails for any reason is counted, never fatal. A payload is a list of
    encoded images: one request.
    """
    clients: list = [None] * concurrency
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    images: list[list[int]] = [[] for _ in range(concurrency)]
    failures = [0] * concurrency
    errors: list[str] = []
    gate = threading.Barrier(concurrency + 1)
    done = threading.Event()

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
        while not done.is_set():
            request = payloads[k % len(payloads)]
            t0 = time.perf_counter()
            try:
                clients[i](request)
                latencies[i].append((time.perf_counter() - t0) * 1000)
                images[i].append(len(request))
            except Exception as exc:  # noqa: BLE001
                failures[i] += 1
                errors.append(getattr(exc, "message", str(exc)))
            k += concurrency

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    gate.wait()
    windows = _windows(latencies, images, seconds, rule)
    done.set()
    for t in threads:
        t.join()
    for client in clients:
        if client is not None:
            client.close()
    wall = sum(w.seconds for w in windows)
    lat = np.concatenate([np.asarray(w.latencies_ms) for w in windows])
    return {"requests": int(lat.size), "failed": sum(failures), "seconds": wall,
            "throughput": sum(w.images for w in windows) / wall, "lat_ms": lat, "windows": windows,
            "first_error": errors[0] if errors else None}


def _windows(latencies: list[list[float]], images: list[list[int]], seconds: float,
             rule: Stability | None) -> list[Window]:
    """Cut the clients' running records into windows until the rule holds (or one window)."""
    window_s = seconds / max(rule.windows, rule.max_windows) if rule else seconds
    marks = [0] * len(latencies)
    windows: list[Window] = []
    last = time.perf_counter()
    while True:
        time.sleep(max(0.0, last + window_s - time.perf_counter()))
        now, ends = time.perf_counter(), [len(x) for x in latencies]
        lat = [v for x, a, b in zip(latencies, marks, ends) for v in x[a:b]]
        n = sum(v for x, a, b in zip(images, marks, ends) for v in x[a:b])
        windows.append(Window(n, now - last, lat))
        marks, last = ends, now
        if rule is None or is_stable(windows, rule) or len(windows) >= max(rule.windows,
                                                                            rule.max_windows):
            return windows


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


def sweep_point(bundle, client, protocol: str, *, url: str, payloads: list[list[bytes]],
                concurrency: int, seconds: float, agreement: float | None,
                rule: Stability | None = None) -> dict[str, Any]:
    """One row of the sweep: client latency and throughput, measured in windows until stable,
    next to Triton's own per-model queue and compute times."""
    from .common import row

    rule = rule or Stability()
    before = server_stats(client.client, protocol)
    with LoadMeter() as meter:
        res = load(bundle, protocol, url, payloads=payloads, concurrency=concurrency, seconds=seconds,
                   rule=rule)
    side = _server_side(before, server_stats(client.client, protocol))
    if res["requests"] == 0:
        return row("triton", "server", 1, status=f"all {res['failed']} requests failed: "
                   f"{res['first_error']}"[:300], protocol=protocol, concurrency=concurrency)
    status = "ok" if not res["failed"] else f"{res['failed']} failed requests, e.g. {res['first_error']}"
    return row("triton", "server", len(payloads[0]), status=status[:300], protocol=protocol,
               concurrency=concurrency, **summarize(res["windows"], rule), agreement=agreement,
               requests=res["requests"], server=side, load=meter.result)


def bench_triton(bundle, opts, images, *, reference, echo: Callable = print) -> dict[str, Any]:
    """Parity through the server, then the sweep per protocol, then the optional soak."""
    from .common import PARITY_IMAGES, agreement, bench_paths, parity_floor, row

    paths = bench_paths(bundle, opts.images, PARITY_IMAGES)
    payloads = [[p.read_bytes()] for p in paths]  # one image per request
    rows, per_protocol = [], {}
    endpoints = urls(opts.triton_url, opts.triton_grpc_url)
    for protocol in opts.triton_protocols:
        url = endpoints[protocol]
        try:
            with open_client(bundle, protocol, url) as client:
                flat = [image for request in payloads for image in request]
                logits = np.concatenate([client(flat[i:i + 8]) for i in range(0, len(flat), 8)])
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
                                     seconds=opts.timing.duration, agreement=raw,
                                     rule=opts.timing.stability)
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
