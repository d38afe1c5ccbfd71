"""`rtk tune`'s search and decision on made-up measurements: no server, CPU only.

test_tune.py runs the whole command against a real Triton server; these pin the parts that
decide what it measures and what it picks: coordinate_ascent, decide and pareto.
"""

from __future__ import annotations

import pytest

from toolkit.tune import decide
from toolkit.tune.report import pareto
from toolkit.tune.space import Candidate, Space, coordinate_ascent

SPACE = Space(artifacts=("onnx", "fp16", "int8"), max_batches=(1, 2, 4, 8, 16, 32, 64),
              instances=(1, 2, 3, 4), queue_delays_us=(0, 100, 500, 2000))
DEFAULT = Candidate("onnx", 64, 1, 100)


def closeness(c: Candidate, best: Candidate) -> float:
    """Highest at `best`, falling with the distance in steps on every numeric dimension."""
    distance = sum(abs(SPACE.values(d).index(getattr(c, d)) - SPACE.values(d).index(getattr(best, d)))
                   for d in ("max_batch_size", "instances", "queue_delay_us"))
    return (10.0 if c.artifact == best.artifact else 0.0) - distance


def peaked(best: Candidate):
    """closeness to `best` as the score; `asked` records every candidate scored, in order."""
    asked: list[Candidate] = []

    def score(c: Candidate) -> float:
        asked.append(c)
        return closeness(c, best)
    return score, asked


def never() -> bool:
    return False


def test_coordinate_ascent_finds_a_single_peak_walking_up_and_down():
    best = Candidate("int8", 8, 3, 0)  # batch below the start, instances above, delay below
    score, asked = peaked(best)
    assert coordinate_ascent(SPACE, DEFAULT, score, out_of_time=never) == best
    # every artifact is tried; then each dimension moves one step at a time
    assert [c.artifact for c in asked[1:4]] == ["onnx", "fp16", "int8"]
    assert Candidate("int8", 64, 2, 100) in asked and Candidate("int8", 32, 3, 100) in asked
    # instances up 2, 3, 4 (4 is worse: stop, and a dimension that moved up is not walked
    # down); max batch down 32, 16, 8, 4; delay up 500 (worse), then down 0
    assert len(asked) == 1 + 3 + 3 + 4 + 2


def test_coordinate_ascent_stops_a_dimension_at_the_first_step_that_does_not_pay():
    score, asked = peaked(DEFAULT)  # the start is already the best
    assert coordinate_ascent(SPACE, DEFAULT, score, out_of_time=never) == DEFAULT
    # the start, 3 artifacts, then one step each way per numeric dimension where there is one
    # (1 instance is the bottom of its range, max batch 64 the top), and nothing more
    assert len(asked) == 1 + 3 + 1 + 1 + 2
    assert Candidate("onnx", 16, 1, 100) not in asked  # two steps down: never walked


def test_coordinate_ascent_keeps_the_start_on_a_tie():
    asked = []

    def flat(c: Candidate) -> float:
        asked.append(c)
        return 1.0
    assert coordinate_ascent(SPACE, DEFAULT, flat, out_of_time=never) == DEFAULT


def test_coordinate_ascent_returns_the_best_so_far_when_time_runs_out():
    best = Candidate("int8", 8, 3, 0)
    score, asked = peaked(best)
    calls = iter(range(100))
    out_of_time = lambda: next(calls) >= 5  # noqa: E731 - five more candidates, then stop
    found = coordinate_ascent(SPACE, DEFAULT, score, out_of_time=out_of_time)
    assert 1 < len(asked) <= 1 + 5 and found != best
    # the best of what was measured, nothing unmeasured
    assert found == max(asked, key=lambda c: closeness(c, best))


def row(c: Candidate, concurrency: int, throughput: float, p99: float, status: str = "ok") -> dict:
    return {**c.describe(), "concurrency": concurrency, "throughput": throughput,
            "p50_ms": p99 / 2, "p99_ms": p99, "status": status, "server": "local"}


FAST = Candidate("int8", 16, 2, 500)


def test_decide_picks_the_highest_throughput_within_the_budget():
    measured = {DEFAULT: [row(DEFAULT, 1, 100.0, 20.0), row(DEFAULT, 4, 150.0, 60.0)],
                FAST: [row(FAST, 1, 180.0, 30.0), row(FAST, 4, 400.0, 120.0),
                       row(FAST, 8, 900.0, 10.0, status="failed")]}
    result, pick = decide(measured, DEFAULT, 50.0)
    assert pick == FAST  # the winner itself, not rebuilt from the row's keys
    assert (result["chosen"]["artifact"], result["chosen"]["concurrency"]) == ("int8", 1)
    assert result["chosen"]["throughput"] == 180.0  # not 400 (over budget), not 900 (failed)
    assert result["default"]["throughput"] == 100.0
    assert result["speedup_vs_default"] == pytest.approx(1.8)
    assert result["candidates_measured"] == 2 and len(result["candidates"]) == 5
    assert result["verdict"] == "180.0 images/s at concurrency 1 with p99 30.0 ms"


def test_decide_gives_no_speedup_when_the_default_misses_the_budget():
    measured = {DEFAULT: [row(DEFAULT, 1, 100.0, 80.0)], FAST: [row(FAST, 1, 180.0, 30.0)]}
    result, _ = decide(measured, DEFAULT, 50.0)
    assert result["chosen"]["throughput"] == 180.0
    assert result["default"]["p99_ms"] == 80.0 and result["speedup_vs_default"] is None


def test_decide_names_the_lowest_p99_when_nothing_meets_the_budget():
    measured = {DEFAULT: [row(DEFAULT, 1, 100.0, 80.0)], FAST: [row(FAST, 1, 180.0, 70.0),
                                                              row(FAST, 2, 1.0, 5.0, "failed")]}
    result, pick = decide(measured, DEFAULT, 50.0)
    assert result["chosen"] is None and pick is None and "speedup_vs_default" not in result
    assert result["lowest_p99"]["p99_ms"] == 70.0
    assert result["verdict"] == "No candidate meets p99 <= 50 ms; the lowest p99 was 70.0 ms"
    nothing, _ = decide({DEFAULT: [row(DEFAULT, 1, 0.0, 0.0, "failed")]}, DEFAULT, 50.0)
    assert nothing["verdict"] == "No candidate meets p99 <= 50 ms" and nothing["default"] is None


def test_pareto_keeps_only_points_nothing_beats_on_both_axes():
    points = [{"name": n, "throughput": t, "p99_ms": p, "status": s} for n, t, p, s in [
        ("a", 100.0, 10.0, "ok"), ("b", 90.0, 20.0, "ok"),     # b: slower and later than a
        ("c", 300.0, 30.0, "ok"), ("d", 300.0, 40.0, "ok"),    # d: as fast as c, but later
        ("e", 500.0, 50.0, "ok"), ("f", 900.0, 1.0, "failed"),  # f failed: never on the front
        ("g", 100.0, 10.0, "ok")]]                              # g ties a: one of them is kept
    assert [p["name"] for p in pareto(points)] == ["a", "c", "e"]
    assert pareto([]) == [] and pareto(points[5:6]) == []
