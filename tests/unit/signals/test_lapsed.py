"""Lapsed detection, first version: each customer measured against their own rhythm."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from tend.features import compute_features
from tend.signals.lapsed import LapsedParams, detect_lapsed

NIGHT = dt.date(2026, 11, 20)


def history(*days_ago: int, customer: str = "C1") -> pd.DataFrame:
    ts = [pd.Timestamp(NIGHT - dt.timedelta(days=d), tz="UTC") + pd.Timedelta(hours=12)
          for d in days_ago]
    return pd.DataFrame({"customer_id": customer, "order_id": [f"{customer}-{i}" for i in
                                                               range(len(ts))],
                         "ordered_at": ts, "total": 20.0})


@pytest.mark.parametrize(
    ("days_ago", "lapsed"),
    [
        ((100, 130, 160, 190), True),    # every 30 days, silent 100 > 2.5*30
        ((50, 80, 110), False),          # every 30 days, silent 50 < 75
        ((70, 100, 130), False),         # silent 70 < the 60-day floor? no: 70 < 2.5*30=75
        ((130,), True),                  # one-time buyer after 120 days
        ((90,), False),
        ((800, 830), False),             # too long ago to bother (and consent has expired)
        ((200, 560, 920), False),        # yearly buyer: 200 < 2.5*360
    ],
)
def test_lapsed_against_own_cadence(days_ago: tuple[int, ...], lapsed: bool) -> None:
    out = detect_lapsed(compute_features(history(*days_ago)), NIGHT)
    assert (len(out) == 1) is lapsed


def test_reason_and_dates_explain_the_signal() -> None:
    out = detect_lapsed(compute_features(history(100, 130, 160, 190)), NIGHT).iloc[0]
    assert out["reason"] == "last order 100 days ago; usually orders every 30 days"
    assert out["due_date"] == NIGHT - dt.timedelta(days=100) + dt.timedelta(days=75)
    assert out["valid_until"] == NIGHT + dt.timedelta(days=LapsedParams().valid_days)
    assert 0 < out["score"] <= 1


def test_more_overdue_scores_higher() -> None:
    a = history(100, 130, 160, customer="A")
    b = history(200, 230, 260, customer="B")
    out = detect_lapsed(compute_features(pd.concat([a, b])), NIGHT).set_index("customer_id")
    assert out.loc["B", "score"] > out.loc["A", "score"]


def test_empty_features() -> None:
    assert detect_lapsed(compute_features(history()[:0]), NIGHT).empty
