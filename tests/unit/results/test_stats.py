"""The interval methods against published worked examples, and the "too small" rule."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from tend.results import stats


# Newcombe (1998), "Interval estimation for the difference between independent proportions:
# comparison of eleven methods", Statistics in Medicine 17:873-890, Table II, method 10 (the
# hybrid score interval), to the four decimals the paper prints.
@pytest.mark.parametrize(("x1", "n1", "x2", "n2", "low", "high"), [
    (56, 70, 48, 80, 0.0524, 0.3339),
    (9, 10, 3, 10, 0.1705, 0.8090),
    (6, 7, 2, 7, 0.0582, 0.8062),
    (5, 56, 0, 29, -0.0381, 0.1926),
    (0, 10, 0, 20, -0.1611, 0.2775),
    (10, 10, 0, 20, 0.6791, 1.0000),
])
def test_newcombe_hybrid_score_matches_the_paper(x1: int, n1: int, x2: int, n2: int,
                                                 low: float, high: float) -> None:
    d = stats.rate_difference(x1, n1, x2, n2)
    assert d.estimate == pytest.approx(x1 / n1 - x2 / n2)
    assert (round(d.low, 4), round(d.high, 4)) == (low, high)


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Statistics in
# Medicine 17:857-872, Table I, method 3 (Wilson's score interval without correction).
@pytest.mark.parametrize(("x", "n", "low", "high"), [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_the_paper(x: int, n: int, low: float, high: float) -> None:
    lo, hi = stats.wilson(x, n)
    assert (round(lo, 4), round(hi, 4)) == (low, high)


def test_welch_interval_is_scipys_welch_test() -> None:
    rng = np.random.default_rng(3)
    a = np.where(rng.random(400) < 0.2, rng.gamma(2.0, 30.0, 400), 0.0)
    b = np.where(rng.random(90) < 0.1, rng.gamma(2.0, 30.0, 90), 0.0)
    ours = stats.mean_difference(a, b)
    ref = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert ours is not None
    assert ours.estimate == pytest.approx(a.mean() - b.mean())
    assert (ours.low, ours.high) == pytest.approx((ref.low, ref.high))


def test_welch_needs_two_values_and_some_spread() -> None:
    assert stats.mean_difference(np.array([1.0]), np.array([1.0, 2.0])) is None
    assert stats.mean_difference(np.zeros(5), np.zeros(7)) is None


@pytest.mark.parametrize(("args", "says"), [
    ((10, 100, 0, 0), "no holdout"),
    ((0, 0, 3, 40), "nobody contacted"),
    ((50, 500, 3, 29), "holdout too small (29 < 30 customers)"),
    # pooled rate 12/530, 30 held out: 0.68 responses expected there
    ((10, 500, 2, 30), "too few responses to tell"),
    # pooled rate 523/530: only 0.2 non-responses expected among the 30 held out
    ((495, 500, 28, 30), "too few responses to tell"),
])
def test_too_small_says_why(args: tuple[int, int, int, int], says: str) -> None:
    reason = stats.too_small(*args)
    assert reason is not None and reason.startswith(says)


def test_a_large_enough_holdout_gets_a_figure() -> None:
    # pooled 60/600 = 0.1; 100 held out expect 10 responses
    assert stats.too_small(50, 500, 10, 100) is None
