"""Benchmark reports: headlines, Markdown, JSON and PNG plots from one run's results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.files import write_json, write_text

BASELINE = ("torch", "cpu")


def _best(results: list[dict], **match) -> dict | None:
    """The fastest measured row matching `match`: among stable rows, else (marked by its
    `stable: False`) among all, so a noisy machine still gets a headline that says so."""
    ok = [r for r in results if r["status"] == "ok" and all(r[k] == v for k, v in match.items())]
    stable = [r for r in ok if r.get("stable", True)]
    return max(stable or ok, key=lambda r: r["throughput"], default=None)


def headlines(results: list[dict]) -> dict[str, Any]:
    """Best GPU backend over the CPU baseline; best CPU backend over PyTorch eager FP32 (CPU)."""
    base = _best(results, backend=BASELINE[0], device=BASELINE[1])
    out: dict[str, Any] = {"baseline": _brief(base)}
    if base is None:
        return out
    for key, device in (("best_cpu", "cpu"), ("best_gpu", "cuda")):
        best = _best(results, device=device)
        if best is not None:
            out[key] = {**_brief(best), "speedup_vs_cpu_eager": best["throughput"] / base["throughput"]}
    return out


def _brief(r: dict | None) -> dict | None:
    if r is None:
        return None
    return {k: r.get(k) for k in ("backend", "device", "batch_size", "throughput", "p50_ms", "stable")}


ANOMALY_P99_OVER_P50 = 10  # a tail this far above the median is a stall, not a spread


def latency_anomaly(r: dict) -> str | None:
    """A note when a point's p99 exceeds 10x its p50 (else None): a stall, not noise."""
    p50, p99 = r.get("p50_ms"), r.get("p99_ms")
    if p50 and p99 and p99 > ANOMALY_P99_OVER_P50 * p50:
        return f"latency anomaly: p99 {p99 / p50:.0f}x p50"
    return None


def status(r: dict) -> str:
    """The row's status, with the stability verdict and a latency anomaly when there is one."""
    notes = [r["status"]]
    if r.get("stable") is False:
        notes.append(r.get("unstable") or "unstable")
    if latency_anomaly(r):
        notes.append(f"**{latency_anomaly(r)}**")
    if (r.get("load") or {}).get("busy"):
        notes.append(f"machine busy: {r['load']['other_cores_busy']:.2f} cores used by other processes")
    return "; ".join(notes)


def markdown(result: dict[str, Any]) -> str:
    env, h = result["environment"], result["headlines"]
    lines = [f"# rtk benchmark: {result['arch']} at {result['image_size']} px", "",
             f"- date: {env['date']}", f"- CPU: {env['cpu']} ({env['cpu_cores']} cores usable)",
             f"- GPU: {env.get('gpu') or 'none'}"
             + (f" (driver {env.get('driver')}, CUDA {env.get('cuda')})" if env.get("gpu") else ""),
             "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
             f"- git commit: {env.get('git_commit')}", ""]
    lines += ["## Headlines", ""]
    for key, label in (("best_cpu", "Best CPU backend"), ("best_gpu", "Best GPU backend")):
        if h.get(key):
            b = h[key]
            lines.append(f"- {label}: **{b['backend']}** at batch {b['batch_size']}: "
                         f"{b['throughput']:.1f} images/s, **{b['speedup_vs_cpu_eager']:.2f}x** "
                         f"PyTorch eager FP32 on CPU ({h['baseline']['throughput']:.1f} images/s)"
                         + ("; **unstable measurement**, see the table." if not (
                             b.get("stable", True) and h["baseline"].get("stable", True)) else "."))
    dp = result["data_pipeline"]
    lines += ["", "## Data pipeline (decode + eval transform)", "",
              ", ".join(f"{k.replace('_', ' ')}: {v:.1f}" if isinstance(v, float) else f"{k}: {v}"
                        for k, v in dp.items()), "", "## Results", "",
              "Gate top-1 and agreement: the export gate's verdict on the backend's artifact on "
              "the held-out set (n in the manifest); for backends without an artifact, agreement "
              "is with PyTorch on the parity images. H2D: host-to-device bytes per image.", "",
              "| backend | device | batch | images/s | gate top-1 | agreement | p50 ms | p90 ms | "
              "p99 ms | H2D KB/img | RSS MiB | status |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    fmt = lambda v, p=1: "" if v is None else f"{v:.{p}f}"  # noqa: E731
    pct = lambda v: "" if v is None else f"{v:.2%}"  # noqa: E731
    for r in result["results"]:
        label = r["backend"] + (f" ({r['protocol']}, c={r['concurrency']})" if r.get("protocol") else "")
        h2d = r.get("h2d_bytes_per_image")
        lines.append(f"| {label} | {r['device']} | {r['batch_size'] or ''} | {fmt(r['throughput'])} | "
                     f"{pct(r.get('gate_top1'))} | {pct(r.get('gate_agreement', r.get('agreement')))} | "
                     f"{fmt(r['p50_ms'], 2)} | {fmt(r['p90_ms'], 2)} | {fmt(r['p99_ms'], 2)} | "
                     f"{fmt(h2d / 1000 if h2d else None, 0)} | {fmt(r.get('rss_mb'), 0)} | "
                     f"{status(r)} |")
    split = [r for r in result["results"] if r.get("decode_ms_per_image") is not None]
    if split:
        lines += ["", f"## End to end on {result.get('images')}: decoding next to the model", "",
                  "Each call decodes its batch from the files (the decode rule, a thread pool of "
                  "the host's cores), then runs it.", "",
                  "| backend | device | batch | images/s | decode ms/img | model ms/img | decode share |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in split:
            d, m = r["decode_ms_per_image"], r["model_ms_per_image"]
            lines.append(f"| {r['backend']} | {r['device']} | {r['batch_size']} | {fmt(r['throughput'])} "
                         f"| {d:.1f} | {m:.1f} | {d / max(1e-9, d + m):.0%} |")
    int8 = next((r for r in result["results"] if "kept_float_nodes" in r), None)
    if int8 is not None and int8.get("export_speed_vs_fp32") is not None:
        lines += ["", f"INT8 graph ({int8['backend']}): {int8['kept_float_nodes']} node(s) kept in "
                  f"float; at export, measured interleaved: {int8['export_speed_vs_fp32']:.2f}x "
                  f"FP32, {int8['export_speed_vs_single_shot_int8']:.2f}x the single-shot INT8 "
                  "graph."]
    side = [(r, m, t) for r in result["results"] if r.get("server")
            for m, t in sorted(r["server"].items())]
    if side:
        lines += ["", "## Triton: client latency next to server-side time per request", "",
                  "| protocol | concurrency | client p50 ms | model | queue ms | compute ms |",
                  "|---|---:|---:|---|---:|---:|"]
        lines += [f"| {r['protocol']} | {r['concurrency']} | {r['p50_ms']:.2f} | {m} | "
                  f"{t['queue_ms']:.2f} | {t['compute_ms']:.2f} |" for r, m, t in side]
    triton = result.get("triton") or {}
    if triton.get("soak"):
        s = triton["soak"]
        lines += ["", "## Triton soak", "", f"{s['seconds']:.0f} s at concurrency {s['concurrency']}: "
                  f"{s['requests']} requests, {s['failed']} failed, server RSS "
                  f"{fmt(s.get('server_rss_start_mb'), 0)} -> {fmt(s.get('server_rss_end_mb'), 0)} MiB."]
    return "\n".join(lines) + "\n"


def plot_throughput(results: list[dict], path: Path) -> None:
    from ..ui.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    series: dict[str, list] = {}
    for r in results:
        if r["status"] == "ok" and not r.get("protocol"):
            top1 = f", top-1 {r['gate_top1']:.1%}" if r.get("gate_top1") is not None else ""
            series.setdefault(f"{r['backend']} ({r['device']}{top1})", []).append(
                (r["batch_size"], r["throughput"]))
    for label, pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
    ax.set(xscale="log", xlabel="batch size", ylabel="images/s", title="Throughput by batch size")
    ax.set_xticks(sorted({r["batch_size"] for r in results if r["batch_size"]}))
    ax.get_xaxis().set_major_formatter(plt.ScalarFormatter())
    ax.get_xaxis().set_minor_formatter(plt.NullFormatter())  # no "2x10^0" labels between ticks
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_triton(results: list[dict], path: Path) -> None:
    from ..ui.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for proto in ("http", "grpc"):
        pts = sorted((r["throughput"], r["p99_ms"], r["concurrency"]) for r in results
                     if r.get("protocol") == proto and r["status"] == "ok")
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=proto)
            for x, y, c in pts:
                ax.annotate(f"c={c}", (x, y), fontsize=7)
    ax.set(xlabel="images/s", ylabel="p99 latency (ms)", title="Triton: latency vs throughput")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def write(result: dict[str, Any], out: str | Path) -> list[Path]:
    """report.md, results.json, throughput.png (and triton.png) under `out`."""
    out = Path(out)
    write_json(out / "results.json", result)
    write_text(out / "report.md", markdown(result))
    paths = [out / "report.md", out / "results.json", out / "throughput.png"]
    plot_throughput(result["results"], out / "throughput.png")
    if any(r.get("protocol") for r in result["results"]):
        plot_triton(result["results"], out / "triton.png")
        paths.append(out / "triton.png")
    return paths

