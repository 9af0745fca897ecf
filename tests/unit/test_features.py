"""Features: visits, rhythm on the log scale, medians, seasons, per product — table-driven."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from tend.features import (
    FEATURE_COLUMNS,
    PROFILE_COLUMNS,
    SKU_COLUMNS,
    compute_feature_set,
    compute_features,
    group_median,
)


def orders(*stamps: str, customer: str = "C1", total: float = 10.0) -> pd.DataFrame:
    return pd.DataFrame({"customer_id": customer,
                         "order_id": [f"{customer}-{i}" for i in range(len(stamps))],
                         "ordered_at": pd.to_datetime(list(stamps), utc=True, format="mixed"),
                         "total": total})


@pytest.mark.parametrize(
    ("stamps", "visits", "median", "log_var_nan"),
    [
        (("2026-01-01 10:00",), 1, np.nan, True),
        (("2026-01-01 10:00", "2026-01-01 18:00"), 1, np.nan, True),  # same day: one visit
        (("2026-01-01", "2026-01-11", "2026-01-31"), 3, 15.0, False),
        (("2026-01-01", "2026-01-11"), 2, 10.0, True),
    ],
)
def test_visits_and_rhythm(stamps: tuple[str, ...], visits: int, median: float,
                           log_var_nan: bool) -> None:
    f = compute_features(orders(*stamps)).iloc[0]
    assert f["orders_count"] == len(stamps)
    assert f["order_days"] == visits
    assert (np.isnan(median) and np.isnan(f["median_interval_days"])) or \
        f["median_interval_days"] == median
    assert bool(np.isnan(f["gap_log_var"])) is log_var_nan
    assert set(FEATURE_COLUMNS) | set(PROFILE_COLUMNS) <= set(compute_features(
        orders(*stamps)).columns)


def test_last_visit_spend_and_totals() -> None:
    o = pd.concat([orders("2026-01-01", "2026-02-01"),
                   orders("2026-02-01 20:00", total=5.0).assign(order_id="x")])
    f = compute_features(o).iloc[0]
    assert f["total_spent"] == 25.0 and f["last_day_spent"] == 15.0


def test_seasons_are_one_point_per_year_and_cross_new_year() -> None:
    # 28 Dec, 2 Jan, 30 Dec, 4 Jan, 27 Dec: a window around New Year, three seasons
    f = compute_features(orders("2023-12-28", "2024-01-02", "2024-12-30", "2025-01-04",
                                "2025-12-27")).iloc[0]
    assert f["season_r"] > 0.95
    assert f["season_cycles"] == 3 and f["season_years"] == 3
    assert f["season_doy"] > 355 or f["season_doy"] < 5
    regular = compute_features(orders(*[f"2025-{m:02d}-15" for m in range(1, 13)])).iloc[0]
    assert regular["season_r"] < 0.3


def test_customers_are_independent_of_each_other_and_of_row_order() -> None:
    a = orders("2026-01-01", "2026-02-01", customer="A")
    b = orders("2025-05-01", customer="B")
    both = compute_features(pd.concat([b, a]).sample(frac=1, random_state=1))
    alone = compute_features(a)
    pd.testing.assert_frame_equal(both.loc[both["customer_id"] == "A"].reset_index(drop=True),
                                  alone)


def test_sku_features_with_quantities() -> None:
    o = orders("2026-01-01", "2026-01-31", "2026-03-01", "2026-03-01 12:00")
    lines = pd.DataFrame({"order": [0, 1, 2, 3, 0], "sku": ["B", "B", "B", "B", "M"],
                          "quantity": [1, 2, 1, 1, 1]})
    fs = compute_feature_set(o, lines)
    s = fs.skus.set_index("sku")
    assert list(fs.skus.columns) == SKU_COLUMNS
    assert s.loc["B", "days"] == 3 and s.loc["B", "quantity"] == 5
    assert s.loc["B", "last_quantity"] == 2  # two units on the last day
    assert s.loc["B", "gap_median"] == 29.5  # 30 and 29 days
    assert s.loc["B", "unit_gap_median"] == pytest.approx((30 / 1 + 29 / 2) / 2, abs=0.05)
    assert s.loc["M", "days"] == 1 and np.isnan(s.loc["M", "gap_median"])
    assert fs.daily["orders"].sum() == 4
    assert fs.daily["day"].tolist()[0] == dt.date(2026, 1, 1)


def test_group_median() -> None:
    g = np.array([0, 0, 0, 2, 2])
    v = np.array([3.0, 1.0, 2.0, 5.0, 1.5])
    assert group_median(g, v, 3).tolist()[0] == 2.0
    assert np.isnan(group_median(g, v, 3)[1])
    assert group_median(g, v, 3)[2] == 3.25


def test_empty() -> None:
    assert compute_features(orders()[:0]).empty
