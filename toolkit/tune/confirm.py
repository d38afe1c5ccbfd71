"""The end of `rtk tune`: the search's best few and the default deployment, re-measured
interleaved, so that the pick rests on a speedup with an interval and not on single readings.

A search reading is one stable point, but a busy moment can still favour one candidate
(measured on this project's 2-core CPU: the same FP32 deployment read 150 images/s once and
45-113 at its neighbours). Interleaving spreads such moments over every finalist; a gain
whose interval includes 1 is "no measurable gain", and the default is kept.
"""

from __future__ import annotations

from typing import Callable

from ..bench.stability import Comparison, interleaved
from .space import Candidate

LOAD_S = 3.0  # what one reload of the four models costs on the 2-core CPU, for the time reserve
SHARE = 0.4  # of the budget, at most, for the confirmation (the search keeps the rest)
SHAPES = ((3, 2), (3, 1), (2, 1))  # (rounds, finalists besides the default), best first


def plan(budget_s: float, seconds: float) -> tuple[int, int]:
    """(rounds, finalists) of the largest confirmation that fits SHARE of the budget: 3 rounds
    of 2 finalists at best, never less than 2 rounds of 1 (then it may overrun a tiny budget)."""
    fits = int(SHARE * budget_s // (seconds + LOAD_S))
    return next(((r, n) for r, n in SHAPES if r * (n + 1) <= fits), SHAPES[-1])


def reserve_s(rounds: int, n: int, seconds: float) -> float:
    """Search time held back for the confirmation: every finalist and the default, per round."""
    return rounds * (n + 1) * (seconds + LOAD_S)


def finalists(scores: dict[Candidate, float], default: Candidate, n: int = 2) -> list[Candidate]:
    """The `n` best-scoring candidates other than the default that beat it (positive scores:
    within the budget)."""
    base = scores.get(default, float("-inf"))
    ranked = sorted((c for c, s in scores.items() if c != default and s > max(0.0, base)),
                    key=lambda c: -scores[c])
    return ranked[:n]


def confirm(measure: Callable[[Candidate], float], chosen: list[Candidate], default: Candidate,
            *, rounds: int = 3) -> tuple[dict, Candidate]:
    """Interleaved rounds of the default and the finalists; the winner is a finalist whose whole
    interval is above 1 (else the default), the one nearest the default unless another is
    measurably faster than it (see `pick`)."""
    comparisons = interleaved(measure, chosen, default, rounds=rounds)
    rows = [{"candidate": c.describe(), "label": c.label(), "ratios": [round(r, 3) for r in comp.ratios],
             "median": round(comp.median, 3), "interval": [round(v, 3) for v in comp.interval()],
             "measurable_gain": comp.measurable_gain()} for c, comp in comparisons.items()]
    winner = pick(comparisons, default)
    out = {"rounds": rounds, "finalists": rows, "winner": winner.describe()}
    if winner == default:
        best = max(comparisons.values(), key=lambda comp: comp.median, default=None)
        out["verdict"] = ("no measurable gain over the default" + (
            f" (best finalist {best.median:.2f}x, interval {best.interval()[0]:.2f}-"
            f"{best.interval()[1]:.2f})" if best else "") + "; the default is kept")
    else:
        comp = comparisons[winner]
        lo, hi = comp.interval()
        out["verdict"] = f"{comp.median:.2f}x the default (90% interval {lo:.2f}-{hi:.2f})"
        out["speedup"], out["interval"] = comp.median, [lo, hi]
    return out, winner


def changes(c: Candidate, default: Candidate) -> int:
    """How many settings a candidate changes from the default deployment."""
    a, b = c.describe(), default.describe()
    return sum(a[k] != b[k] for k in a)


def pick(comparisons: dict, default: Candidate) -> Candidate:
    """Among the finalists with a measurable gain, the one that changes fewest settings, unless
    another is measurably faster than it: the per-round ratio of their two readings (same
    rounds, same baseline) has its whole interval above 1. Two finalists that noise cannot tell
    apart would otherwise be chosen by the larger median, a coin flip between runs."""
    gaining = sorted((c for c, comp in comparisons.items() if comp.measurable_gain()),
                     key=lambda c: (changes(c, default), -comparisons[c].median))
    if not gaining:
        return default
    best = gaining[0]
    for other in gaining[1:]:
        head_to_head = Comparison(tuple(a / b for a, b in zip(comparisons[other].ratios,
                                                               comparisons[best].ratios)))
        if head_to_head.measurable_gain():
            best = other
    return best
