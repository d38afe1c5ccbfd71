"""The stability rule and the interleaved confirmation, fed made-up measurements (no timing)."""

from __future__ import annotations

from toolkit.bench.stability import (Comparison, Stability, Window, interleaved, is_stable, summarize,
                                     until_stable)
from toolkit.tune.confirm import confirm, finalists
from toolkit.tune.space import Candidate


def windows_from(rates: list[float], latency_ms: float = 10.0):
    """A fake measurement source: each call is the next window, at the given rate."""
    it = iter(rates)
    taken: list[float] = []

    def measure() -> Window:
        rate = next(it)
        taken.append(rate)
        return Window(images=int(rate), seconds=1.0, latencies_ms=[latency_ms] * 4)
    return measure, taken


def test_a_point_is_measured_until_k_consecutive_windows_agree():
    measure, taken = windows_from([50, 150, 100, 104, 98, 500, 500])
    rule = Stability(windows=3, percent=10, max_windows=10)
    windows = until_stable(measure, rule)
    assert taken == [50, 150, 100, 104, 98]  # stops at the first 3 in a row within 10%
    out = summarize(windows, rule)
    assert out["stable"] and out["windows"] == 5
    assert out["throughput"] == (100 + 104 + 98) / 3  # the stable windows' mean, not all five


def test_an_unstable_point_stops_at_the_cap_and_says_so():
    measure, taken = windows_from([50, 150] * 10)
    rule = Stability(windows=3, percent=10, max_windows=6)
    out = summarize(until_stable(measure, rule), rule)
    assert len(taken) == 6 and not out["stable"]
    assert out["unstable"].startswith("unstable: the last 3 of 6 windows spread")


def test_latency_must_agree_too_and_the_percent_is_settable():
    steady = [Window(100, 1.0, [10.0] * 4), Window(100, 1.0, [10.0] * 4), Window(100, 1.0, [14.0] * 4)]
    assert not is_stable(steady, Stability(percent=10))  # the same rate, latency off by 40%
    assert is_stable(steady, Stability(percent=25))
    rates = [Window(r, 1.0, [10.0]) for r in (100, 110, 120)]
    assert not is_stable(rates, Stability(percent=5)) and is_stable(rates, Stability(percent=10))
    assert not is_stable(rates[:2], Stability(windows=3))  # too few windows is never stable


def test_interleaved_rounds_measure_the_baseline_first_each_round():
    order: list[str] = []
    speeds = {"base": [100, 50, 100], "a": [130, 64, 128], "b": [101, 50, 99]}

    def measure(name: str) -> float:
        order.append(name)
        return float(speeds[name][order.count(name) - 1])
    comps = interleaved(measure, ["a", "b"], "base", rounds=3)
    assert order == ["base", "a", "b"] * 3
    # the slow round hits every candidate alike: the ratios stay put
    assert comps["a"].ratios == (1.3, 1.28, 1.28) and comps["a"].measurable_gain()
    assert not comps["b"].measurable_gain()
    lo, hi = comps["b"].interval()
    assert lo <= 1.0 <= hi


def test_the_interval_is_reproducible_and_brackets_the_median():
    c = Comparison((1.1, 0.9, 1.4, 1.0, 1.2))
    assert c.interval() == c.interval()
    lo, hi = c.interval()
    assert lo <= c.median <= hi and lo >= 0.9 and hi <= 1.4


DEFAULT = Candidate("onnx", 16, 1, 100, 2)
FAST = Candidate("int8", 16, 2, 100, 2)
LUCKY = Candidate("onnx", 16, 2, 100, 2)


def test_confirmation_keeps_the_default_without_a_measurable_gain():
    """The search saw LUCKY at 1.5x once; interleaved, it is no faster than the default."""
    truth = {DEFAULT: 100.0, LUCKY: 101.0, FAST: 160.0}
    noise = iter([1.0, 0.7, 1.3, 1.0, 1.2, 0.8] * 4)
    result, winner = confirm(lambda c: truth[c] * next(noise), [LUCKY], DEFAULT, rounds=3)
    assert winner == DEFAULT and result["verdict"].startswith("no measurable gain")
    assert result["finalists"][0]["measurable_gain"] is False


def test_confirmation_picks_a_finalist_whose_whole_interval_is_above_one():
    truth = {DEFAULT: 100.0, LUCKY: 101.0, FAST: 160.0}
    result, winner = confirm(lambda c: truth[c], [LUCKY, FAST], DEFAULT, rounds=3)
    assert winner == FAST and result["speedup"] == 1.6 and result["interval"][0] > 1


def test_finalists_are_the_best_scores_that_beat_the_default():
    scores = {DEFAULT: 100.0, FAST: 160.0, LUCKY: 150.0, Candidate("fp16", 16, 1, 100, 2): 90.0,
              Candidate("int8", 1, 1, 100, 2): -400.0}
    assert finalists(scores, DEFAULT) == [FAST, LUCKY]
    assert finalists({DEFAULT: 100.0, LUCKY: 99.0}, DEFAULT) == []


def test_the_bench_report_flags_unstable_busy_and_stalled_points():
    from toolkit.bench.report import latency_anomaly, status

    calm = {"status": "ok", "stable": True, "p50_ms": 5.0, "p99_ms": 20.0,
            "load": {"other_cores_busy": 0.0, "busy": False}}
    assert status(calm) == "ok" and latency_anomaly(calm) is None
    stalled = {**calm, "p99_ms": 510.0}  # the Python backend's 500 ms stall at p99
    assert latency_anomaly(stalled) == "latency anomaly: p99 102x p50"
    noisy = {**calm, "stable": False, "unstable": "unstable: spread 30%",
             "load": {"other_cores_busy": 0.9, "busy": True}}
    assert status(noisy) == "ok; unstable: spread 30%; machine busy: 0.90 cores used by other processes"


def test_headlines_prefer_stable_points():
    from toolkit.bench.report import headlines

    rows = [{"backend": "torch", "device": "cpu", "batch_size": 1, "throughput": 10.0, "p50_ms": 1.0,
             "status": "ok", "stable": True},
            {"backend": "onnxruntime", "device": "cpu", "batch_size": 8, "throughput": 90.0,
             "p50_ms": 1.0, "status": "ok", "stable": False},
            {"backend": "onnxruntime", "device": "cpu", "batch_size": 1, "throughput": 40.0,
             "p50_ms": 1.0, "status": "ok", "stable": True}]
    assert headlines(rows)["best_cpu"]["throughput"] == 40.0  # not the unstable 90


def test_the_confirmation_fits_its_share_of_the_budget():
    from toolkit.tune.confirm import plan, reserve_s

    assert plan(300, 5) == (3, 2)  # 5 minutes: 3 rounds of 2 finalists and the default
    assert plan(60, 3) == (2, 1) and reserve_s(2, 1, 3) <= 0.4 * 60  # the demo's 1 minute
    assert plan(72, 1) == (3, 1)
    assert plan(5, 5) == (2, 1)  # the least it ever does, even past a tiny budget


def test_two_finalists_that_noise_cannot_tell_apart_go_to_the_simpler_one():
    """Run 2 of the digits tune: both finalists gained over the default; the one with the
    larger median changed one more setting and was not measurably faster than the other."""
    from toolkit.tune.confirm import pick

    default = Candidate("int8", 64, 1, 100, 2)
    simple = Candidate("int8", 64, 2, 100, 2)  # one setting changed
    busier = Candidate("int8", 64, 2, 0, 2)  # two changed
    noisy = {simple: Comparison((1.099, 1.035, 1.099)), busier: Comparison((1.142, 1.043, 1.049))}
    assert pick(noisy, default) == simple
    clear = {simple: Comparison((1.05, 1.04, 1.06)), busier: Comparison((1.40, 1.38, 1.45))}
    assert pick(clear, default) == busier  # measurably faster than the simpler one: it wins
    assert pick({busier: Comparison((1.2, 0.9, 1.1))}, default) == default
