"""Seasonal windows that chance cannot fake: the coincidence test, its false-alarm rate, and
the counter-examples that used to read as seasons."""

from __future__ import annotations

import numpy as np
import pytest
from _support import RandomDaysShop

from tend.features.year import TWO_PI, YEAR_DAYS
from tend.signals import SeasonalParams
from tend.signals.seasonal import chance_of_season, seasonal_customers


def test_two_points_chance_is_their_distance_on_the_year() -> None:
    # two yearly points 36 days apart: R = cos(half the angle); the chance that two random
    # points are at most that close is 2 * 36 / 365.2425
    angle = TWO_PI * 36 / YEAR_DAYS
    got = chance_of_season(np.array([np.cos(angle / 2)]), np.array([2]))
    assert got[0] == pytest.approx(2 * 36 / YEAR_DAYS, rel=1e-9)
    assert chance_of_season(np.array([0.0, 1.0]), np.array([3, 3])).tolist() == [1.0, 0.0]


@pytest.mark.parametrize("m", [2, 3, 4, 6, 40])
def test_false_alarm_rate_for_random_yearly_points_is_the_threshold(m: int) -> None:
    """The documented rate: customers whose yearly points are random pass ``chance <= 0.05``
    about 5 % of the time (here with another random stream than the null table's)."""
    rng = np.random.default_rng(1000 + m)
    ang = rng.uniform(0, TWO_PI, size=(20_000, m))
    r = np.hypot(np.cos(ang).mean(axis=1), np.sin(ang).mean(axis=1))
    rate = float(np.mean(chance_of_season(r, np.full(len(r), m)) <= 0.05))
    assert 0.04 <= rate <= 0.06, rate


COUNTER = {
    # the examples: "orders around January 11", and two orders 329 days apart
    "NEW-YEAR": ["2023-12-27", "2024-12-25", "2025-03-04"],
    "329-DAYS": ["2024-06-01", "2025-04-26"],
}
SEASONAL = {
    "SKIPS-2024": ["2023-12-10", "2025-12-13"],  # two Decembers, the one between skipped
    "SKIPS-2025": ["2024-05-03", "2024-05-10", "2026-05-06"],
    "EVERY-YEAR": ["2024-10-10", "2025-10-14", "2026-10-08"],
}


def test_coincidences_are_not_seasons_but_customers_who_skip_a_year_are(
        random_days_shop: RandomDaysShop) -> None:
    fs, products = random_days_shop({**COUNTER, **SEASONAL})
    c = fs.customers.set_index("customer_id")
    old = SeasonalParams()
    # without the chance test they would pass: concentrated, two years, most visits inside
    for cid in COUNTER:
        assert c.loc[cid, "season_r"] >= old.min_concentration
        assert c.loc[cid, "season_years"] >= old.min_years
        assert c.loc[cid, "season_share"] >= old.min_share
    found = seasonal_customers(fs, products).set_index("customer_id")
    assert not set(COUNTER) & set(found.index)
    assert set(SEASONAL) <= set(found.index)
    assert (found.loc[list(SEASONAL), "chance"] <= old.max_chance).all()
    # customers ordering at random days: false alarms within the documented rate
    background = {f"B{i}" for i in range(300)}
    assert len(background & set(found.index)) / len(background) <= old.max_chance
