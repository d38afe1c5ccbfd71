"""`rtk tune` reports: Markdown, JSON and a throughput-vs-p99 plot with the Pareto front."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.files import write_json, write_text


def pareto(points: list[dict]) -> list[dict]:
    """Points no other point beats on both throughput (higher) and p99 (lower), by p99."""
    ok = sorted((p for p in points if p["status"] == "ok"), key=lambda p: (p["p99_ms"], -p["throughput"]))
    front, best = [], -1.0
    for p in ok:
        if p["throughput"] > best:
            front.append(p)
            best = p["throughput"]
    return front


def markdown(result: dict[str, Any]) -> str:
    budget = result["p99_budget_ms"]
    lines = [f"# rtk tune: p99 budget {budget:g} ms ({result['kind']}, {result['platform']})", "",
             f"- {result['candidates_measured']} candidate deployment(s) measured in "
             f"{result['elapsed_s']:.0f} s (budget {result['budget_minutes']:g} min), on a real "
             "Triton server, JPEG bytes through the ensemble over gRPC.",
             f"- Result: {result['verdict']}."]
    if result.get("speedup_vs_default"):
        lines.append(f"- Over the default `rtk triton` deployment measured in the same run: "
                     f"**{result['speedup_vs_default']:.2f}x**.")
    if result.get("warning"):
        lines.append(f"- **Warning:** {result['warning']}.")
    conf = result.get("confirmation")
    if conf:
        lines.append(f"- Confirmation: the default and {len(conf['finalists'])} finalist(s) re-measured "
                     f"interleaved over {conf['rounds']} rounds: {conf['verdict']}.")
        lines += [f"  - {f['label']}: per-round ratios {', '.join(f'{r:.2f}' for r in f['ratios'])}, "
                  f"median {f['median']:.2f}x, interval {f['interval'][0]:.2f}-{f['interval'][1]:.2f}"
                  for f in conf["finalists"]]
    busy = [p for p in result["candidates"] if (p.get("load") or {}).get("busy")]
    if busy:
        lines.append(f"- **The machine was busy** during {len(busy)} of {len(result['candidates'])} "
                     "points (other processes used CPU): their readings are less trustworthy.")
    if result.get("serve"):
        lines.append(f"- Repository written to `{result['repository']}`; serve it with "
                     f"`{result['serve']}`.")
    lines += ["", "| artifact | max batch | instances | decoders | delay us | concurrency | images/s "
              "| p50 ms | p99 ms | within budget | status |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    fmt = lambda v, p=1: "" if v is None else f"{v:.{p}f}"  # noqa: E731
    for p in result["candidates"]:
        mark = " (default)" if same_point(p, result.get("default")) else ""
        mark += " **chosen**" if same_point(p, result.get("chosen")) else ""
        fits = p["status"] == "ok" and p["p99_ms"] <= budget
        lines.append(f"| {p['artifact']}{mark} | {p['max_batch_size']} | {p['instances']} | "
                     f"{p.get('preprocess_instances', '')} | {p['queue_delay_us']} | "
                     f"{p.get('concurrency') or ''} | {fmt(p['throughput'])} | "
                     f"{fmt(p['p50_ms'])} | {fmt(p['p99_ms'])} | {'yes' if fits else 'no'} | "
                     f"{p['status']}{'' if p.get('stable', True) else ' (unstable)'} |")
    return "\n".join(lines) + "\n"


def same_point(a: dict, b: dict | None) -> bool:
    keys = ("artifact", "max_batch_size", "instances", "preprocess_instances", "queue_delay_us",
            "concurrency")
    return b is not None and all(a.get(k) == b.get(k) for k in keys)


def plot(result: dict[str, Any], path: Path) -> None:
    from ..ui.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    ok = [p for p in result["candidates"] if p["status"] == "ok"]
    ax.scatter([p["p99_ms"] for p in ok], [p["throughput"] for p in ok], s=18, alpha=0.6,
               label="candidate x concurrency")
    front = pareto(ok)
    ax.plot([p["p99_ms"] for p in front], [p["throughput"] for p in front], "k--", lw=1,
            label="Pareto front")
    ax.axvline(result["p99_budget_ms"], color="red", lw=1, label="p99 budget")
    for key, marker in (("default", "s"), ("chosen", "*")):
        p = result.get(key)
        if p and p["status"] == "ok":
            ax.scatter([p["p99_ms"]], [p["throughput"]], marker=marker, s=160, label=key,
                       edgecolors="black", zorder=3)
    ax.set(xscale="log", xlabel="p99 latency (ms, log)", ylabel="images/s",
           title="rtk tune: throughput against p99")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def upgrade(result: dict[str, Any]) -> dict[str, Any]:
    """A tune.json's result, also one rtk wrote before `max_batch` became Triton's `max_batch_size`."""
    for p in [*result.get("candidates", []), result.get("default"), result.get("chosen")]:
        if p and "max_batch" in p and "max_batch_size" not in p:
            p["max_batch_size"] = p.pop("max_batch")
    return result


def write(result: dict[str, Any], out: str | Path) -> list[Path]:
    out = Path(out)
    write_json(out / "tune.json", result)
    write_text(out / "tune.md", markdown(result))
    plot(result, out / "tune.png")
    return [out / "tune.md", out / "tune.json", out / "tune.png"]
