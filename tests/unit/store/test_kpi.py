"""The kpi table: a month's rows replaced as a whole, NaN stored as NULL; both backends."""

from __future__ import annotations

import datetime as dt
import math

import pandas as pd

from tend.store import kpi
from tend.store.db import connect

STAMP = dt.datetime(2026, 11, 3, 2, tzinfo=dt.UTC)


def rows(month: str, **figures: object) -> pd.DataFrame:
    base = {"month": month, "program": "winback", "contacted": 120, "held_out": 14,
            "responses": 20, "holdout_responses": 1, "response_rate": 20 / 120,
            "holdout_response_rate": 1 / 14, "lift": float("nan"), "direct_responses": 7,
            "messages": 125, "open_windows": 0, "window_days": 7,
            "note": "holdout too small (14 < 30 customers)"}
    return pd.DataFrame([{**base, **figures}])


def test_months_are_replaced_and_nan_is_null(store_url: str) -> None:
    engine = connect(store_url)
    with engine.begin() as conn:
        kpi.replace_months(conn, pd.concat([rows("2026-10"), rows("2026-11", contacted=3)]),
                           ["2026-10", "2026-11"], as_of=dt.date(2026, 11, 2), computed_at=STAMP)
    with engine.begin() as conn:  # the next night: November again, October left alone
        written = kpi.replace_months(conn, rows("2026-11", contacted=9, lift=0.05),
                                     ["2026-11"], as_of=dt.date(2026, 11, 3), computed_at=STAMP)
    with engine.connect() as conn:
        stored = kpi.read(conn)
        november = kpi.read(conn, ["2026-11"])
    assert written == 1
    assert stored[["month", "contacted"]].values.tolist() == [["2026-10", 120], ["2026-11", 9]]
    assert stored.loc[0, "lift"] is None or math.isnan(stored.loc[0, "lift"])
    assert stored.loc[1, "lift"] == 0.05
    assert stored.loc[0, "note"].startswith("holdout too small")
    assert str(stored.loc[1, "as_of"])[:10] == "2026-11-03"
    assert len(november) == 1


def test_a_month_without_rows_is_emptied(store_url: str) -> None:
    engine = connect(store_url)
    with engine.begin() as conn:
        kpi.replace_months(conn, rows("2026-10"), ["2026-10"], as_of=dt.date(2026, 11, 2),
                           computed_at=STAMP)
    with engine.begin() as conn:
        assert kpi.replace_months(conn, rows("2026-10").iloc[0:0], ["2026-10"],
                                  as_of=dt.date(2026, 11, 3), computed_at=STAMP) == 0
    with engine.connect() as conn:
        assert kpi.read(conn).empty
