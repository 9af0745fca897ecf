"""The statistics of lift: two rates, two means, and how sure we can be of their difference.

* A response rate's difference (contacted minus held out) gets **Newcombe's hybrid score
  interval** (Newcombe 1998, "Interval estimation for the difference between independent
  proportions: comparison of eleven methods", Statistics in Medicine 17:873-890, method 10):
  it combines the two groups' Wilson score intervals. Unlike the textbook Wald interval it
  stays inside [-1, 1], behaves with rates near 0 (a win-back's few percent) and with small
  holdouts, and its coverage is close to the nominal 95 % where Wald's falls well below it.
* Revenue per customer (most customers spend nothing, a few spend a lot) gets **Welch's
  t interval** for a difference of means with unequal variances (Welch-Satterthwaite degrees of
  freedom). It leans on the central limit theorem, so with a few dozen held-out buyers and the
  odd big-ticket order it comes out somewhat too narrow (docs/results.md measures how much):
  indicative, while the response-rate lift is the figure to decide on.

When the holdout is too small to say anything (``too_small``), no interval is given at all:
an interval from a handful of customers looks precise and is not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

#: Below this many held-out customers a program's lift is not shown.
MIN_HELD_OUT = 30
#: ... nor when either group expects fewer responses than this at the pooled rate (the rule of
#: thumb under which normal approximations of a proportion are not trusted).
MIN_EXPECTED_RESPONSES = 5.0
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    def covers(self, value: float) -> bool:
        return self.low <= value <= self.high


def wilson(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson's score interval for one proportion (Newcombe 1998's method 3 for one rate)."""
    if n <= 0:
        raise ValueError("a proportion needs n >= 1")
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    return max(0.0, (centre - spread) / scale), min(1.0, (centre + spread) / scale)


def rate_difference(x1: int, n1: int, x2: int, n2: int,
                    confidence: float = CONFIDENCE) -> Interval:
    """``x1/n1 - x2/n2`` with Newcombe's hybrid score interval (method 10)."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1, confidence)
    l2, u2 = wilson(x2, n2, confidence)
    d = p1 - p2
    return Interval(d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
                    d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def mean_difference(a: np.ndarray, b: np.ndarray, confidence: float = CONFIDENCE
                    ) -> Interval | None:
    """``mean(a) - mean(b)`` with Welch's t interval; None when either group has < 2 values
    or neither varies (no spread to estimate)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    d = float(a.mean() - b.mean())
    se2 = va + vb
    if se2 <= 0:
        return None
    df = se2 ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(se2)
    return Interval(d, d - half, d + half)


def too_small(responses_contacted: int, contacted: int, responses_held: int, held_out: int
              ) -> str | None:
    """Why the holdout cannot support a lift figure, or None when it can.

    The rule: fewer than ``MIN_HELD_OUT`` held-out customers, or fewer than
    ``MIN_EXPECTED_RESPONSES`` responses expected in either group at the pooled response rate.
    """
    if held_out == 0:
        return "no holdout"
    if contacted == 0:
        return "nobody contacted"
    if held_out < MIN_HELD_OUT:
        return f"holdout too small ({held_out} < {MIN_HELD_OUT} customers)"
    pooled = (responses_contacted + responses_held) / (contacted + held_out)
    expected = min(contacted, held_out) * min(pooled, 1 - pooled)
    if expected < MIN_EXPECTED_RESPONSES:
        return (f"too few responses to tell ({expected:.1f} expected in the smaller group, "
                f"< {MIN_EXPECTED_RESPONSES:g})")
    return None
