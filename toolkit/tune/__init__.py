"""`rtk tune`: the fastest trusted Triton deployment whose p99 latency meets a budget.

Candidates come from the bundle (trusted artifacts only: accuracy is settled by the export
gate before speed is looked at), are walked by coordinate ascent (space.py) and measured on
one real Triton server (measure.py). The pick is the highest throughput with p99 within the
budget at some concurrency; the default deployment of `rtk triton` is measured in the same
run, so the gain is a ratio from one machine and one session.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..core.bundle import Bundle
from ..core.errors import RtkError
from ..bench.stability import Stability
from .confirm import confirm, finalists, plan, reserve_s
from .space import Candidate, coordinate_ascent, space_for

ARTIFACT_KEYS = {"model.onnx": "onnx", "model.fp16.onnx": "fp16", "model.int8.onnx": "int8"}


@dataclass
class TuneOptions:
    p99_ms: float
    kind: str = "cpu"
    platform: str | None = None  # None: python on cpu (the local server's backend), onnxruntime on gpu
    budget_minutes: float = 5.0
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 8])
    seconds: float = 5.0  # per (candidate, concurrency) point
    out: str = "tune"
    repo: str = "model_repository"
    name: str | None = None
    backend_env: str | None = None  # the local server's Python environment (triton/backend_env.py)
    stability: Stability = field(default_factory=Stability)  # per point (toolkit.bench.stability)
    images: str | None = None  # measure with these files (e.g. camera photos), not the held-out set
    target_cpu: str | None = None  # CPU int8 class of the serving nodes (default: this host's)


def trusted_artifacts(bundle: Bundle, repo_opts=None, echo: Callable = print) -> list[str]:
    """The ONNX artifacts whose export gate passed (the only ones worth timing); INT8 only
    where it was gated on the target CPU kind (the tune measures whether it pays)."""
    from ..triton.repository import int8_refusal

    found = [key for name, key in ARTIFACT_KEYS.items() if bundle.manifest.trusted(name)]
    if "int8" in found and repo_opts is not None:
        reason = int8_refusal(bundle, repo_opts, pays=False)
        if reason:
            echo(f"INT8 is left out of the search: {reason}.")
            found.remove("int8")
    if not found:
        raise RtkError(f"{bundle.root} has no trusted ONNX artifact to deploy.",
                       f"Export and gate one first: rtk export {bundle.root} --int8")
    return found


def tune(bundle: Bundle, opts: TuneOptions, echo: Callable = print) -> dict[str, Any]:
    """Search, measure, pick, write the winner's repository; returns the report object."""
    from ..core.host import usable_cores
    from ..triton import RepoOptions
    from ..triton.repository import build_configs
    from .measure import Bench

    if opts.p99_ms <= 0:
        raise RtkError(f"--p99-ms must be positive, got {opts.p99_ms}.", "Pass e.g. --p99-ms 200.")
    platform = opts.platform or ("python" if opts.kind == "cpu" else "onnxruntime")

    def options(c: Candidate, repo: str) -> RepoOptions:
        return RepoOptions(repo=repo, name=opts.name, platform=platform, kind=opts.kind,
                           target_cpu=opts.target_cpu, max_batch=c.max_batch_size, instances=c.instances,
                           preprocess_instances=c.preprocess_instances,
                           queue_delay_us=c.queue_delay_us, artifact=c.artifact)

    base = RepoOptions(name=opts.name, platform=platform, kind=opts.kind, target_cpu=opts.target_cpu)
    _, facts = build_configs(bundle, base)
    default = Candidate(ARTIFACT_KEYS[facts["artifact"]], facts["max_batch"], facts["instances"],
                        RepoOptions().queue_delay_us, facts["preprocess_instances"])
    space = space_for(trusted_artifacts(bundle, base if opts.kind == "cpu" else None, echo),
                      facts["max_batch"], usable_cores())
    measured: dict[Candidate, list[dict]] = {}
    started, deadline = time.monotonic(), time.monotonic() + 60 * opts.budget_minutes
    rounds, n_final = plan(60 * opts.budget_minutes, opts.seconds)
    search_deadline = deadline - reserve_s(rounds, n_final, opts.seconds)  # the confirmation's share
    bench = Bench(bundle, options, opts.concurrency, seconds=opts.seconds, echo=echo,
                  backend_env=opts.backend_env, rule=opts.stability, images=opts.images)

    def score(c: Candidate) -> float:
        if c not in measured:
            echo(f"  candidate {len(measured) + 1}: {c.label()}")
            measured[c] = bench.measure(c)
        return objective(measured[c], opts.p99_ms)

    def out_of_time() -> bool:  # stop before a candidate that would end past the budget
        per = (time.monotonic() - started) / max(1, len(measured))
        return time.monotonic() + per > search_deadline

    try:
        bench.start(default)
        coordinate_ascent(space, default, score, out_of_time=out_of_time)
        result, pick = decide(measured, default, opts.p99_ms)
        pick = _confirmed(bench, measured, default, pick, result, opts, echo,
                          rounds=rounds, n_final=n_final)
    finally:
        bench.close()
    result.update(elapsed_s=round(time.monotonic() - started, 1), budget_minutes=opts.budget_minutes,
                  platform=platform, kind=opts.kind, images=opts.images)
    if pick is not None:
        from ..triton import write_repository

        summary = write_repository(bundle, options(pick, opts.repo), echo=echo)
        result["repository"] = summary["repo"]
        env = f" --backend-env {opts.backend_env}" if opts.backend_env else ""
        result["serve"] = f"rtk serve {summary['repo']}{env}"
    return result


def _confirmed(bench, measured: dict, default: Candidate, pick: Candidate | None, result: dict,
               opts: TuneOptions, echo: Callable, *, rounds: int, n_final: int) -> Candidate | None:
    """The search's pick against the default, re-measured interleaved (confirm.py): the pick
    stands only with a measurable gain; otherwise the default is kept. Updates `result`."""
    budget = opts.p99_ms
    scores = {c: objective(rows, budget) for c, rows in measured.items()}
    result["search_best"] = result["chosen"]
    if pick is None or pick == default or scores.get(default, -1.0) <= 0:
        return pick  # nothing within budget, the default won, or it misses the budget itself
    finals = finalists(scores, default, n_final)
    at = {c: best_point(measured[c], budget)["concurrency"] for c in [default, *finals]}

    def measure(c: Candidate) -> float:
        (r,) = bench.measure(c, [at[c]])
        ok = r["status"] == "ok" and r["p99_ms"] is not None and r["p99_ms"] <= budget
        echo(f"    confirm {c.label()} at concurrency {at[c]}: "
             f"{r['throughput'] or 0:.1f} images/s" + ("" if ok else " (over budget or failed)"))
        return r["throughput"] if ok else 0.0

    echo(f"  confirming: {len(finals)} finalist(s) and the default, interleaved, {rounds} rounds")
    confirmation, winner = confirm(measure, finals, default, rounds=rounds)
    result["confirmation"] = confirmation
    if winner == default:
        result["chosen"] = best_point([_brief(r) for r in measured[default]], budget)
        result["speedup_vs_default"] = None
        result["verdict"] = (f"{confirmation['verdict']} (the search's best read "
                             f"{result['search_best']['throughput']:.1f} images/s once)")
    else:
        result["chosen"] = best_point([_brief(r) for r in measured[winner]], budget)
        result["speedup_vs_default"] = confirmation["speedup"]
        result["speedup_interval"] = confirmation["interval"]
        c = result["chosen"]
        result["verdict"] = (f"{c['throughput']:.1f} images/s at concurrency {c['concurrency']} with "
                             f"p99 {c['p99_ms']:.1f} ms; confirmed interleaved: {confirmation['verdict']}")
    return winner


def best_point(rows: list[dict], budget: float) -> dict | None:
    """The highest throughput within the budget, else the lowest p99 (None: nothing worked);
    among stable points when there is one (an unstable one stays marked in the report)."""
    ok = [r for r in rows if r["status"] == "ok"]
    ok = [r for r in ok if r.get("stable", True)] or ok
    within = [r for r in ok if r["p99_ms"] <= budget]
    if within:
        return max(within, key=lambda r: r["throughput"])
    return min(ok, key=lambda r: r["p99_ms"], default=None)


def objective(rows: list[dict], budget: float) -> float:
    """Best throughput within the budget; below zero (minus the lowest p99) when none is."""
    r = best_point(rows, budget)
    if r is None:
        return float("-inf")
    return r["throughput"] if r["p99_ms"] <= budget else -r["p99_ms"]


FIELDS = ("artifact", "max_batch_size", "instances", "preprocess_instances", "queue_delay_us",
          "concurrency", "throughput", "stable", "load",
          "p50_ms", "p99_ms", "status", "server")


def _brief(r: dict) -> dict:
    return {k: r.get(k) for k in FIELDS}


def decide(measured: dict[Candidate, list[dict]], default: Candidate,
           budget: float) -> tuple[dict, Candidate | None]:
    """The report object (every point, the default deployment's best point, the pick's point)
    and the picked candidate itself (None when no point meets the budget)."""
    owned = [(c, _brief(r)) for c, rows in measured.items() for r in rows]
    points = [p for _, p in owned]
    ok = [p for p in points if p["status"] == "ok"]
    within = [(c, p) for c, p in owned if p["status"] == "ok" and p["p99_ms"] <= budget]
    stable = [(c, p) for c, p in within if p.get("stable", True)]
    unstable_only = bool(within) and not stable
    within = stable or within

    pick, chosen = max(within, key=lambda cp: cp[1]["throughput"]) if within else (None, None)
    default_point = best_point([_brief(r) for r in measured.get(default, [])], budget)
    result = {"p99_budget_ms": budget, "candidates": points, "default": default_point,
              "chosen": chosen, "candidates_measured": len(measured)}
    if unstable_only:
        result["warning"] = ("no point within the budget was stable: the pick rests on unstable "
                             "readings (a busy machine?); measure longer with --seconds")
    if chosen is None:
        lowest = min(ok, key=lambda p: p["p99_ms"], default=None)
        result["verdict"] = (f"No candidate meets p99 <= {budget:g} ms"
                             + (f"; the lowest p99 was {lowest['p99_ms']:.1f} ms" if lowest else ""))
        result["lowest_p99"] = lowest
    else:
        gain = (chosen["throughput"] / default_point["throughput"]
                if default_point and default_point["status"] == "ok"
                and default_point["p99_ms"] <= budget else None)
        result["speedup_vs_default"] = gain
        result["verdict"] = (f"{chosen['throughput']:.1f} images/s at concurrency "
                             f"{chosen['concurrency']} with p99 {chosen['p99_ms']:.1f} ms")
    return result, pick
