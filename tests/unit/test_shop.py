"""Reading the shop: every unusable order row is quarantined with its reason, never dropped."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from tend.errors import DataError
from tend.shop import require_schema, validate_orders

NIGHT = dt.date(2026, 11, 20)
GOOD = {"order_id": "O1", "customer_id": "C1", "ordered_at": "2026-11-01 10:00:00+00:00",
        "total": "12.50"}


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"order_id": None}, "order without an order_id"),
        ({"order_id": " "}, "order without an order_id"),
        ({"customer_id": None}, "order without a customer"),
        ({"customer_id": "C999"}, "order for an unknown customer"),
        ({"ordered_at": "yesterday-ish"}, "unparseable ordered_at timestamp"),
        ({"ordered_at": None}, "unparseable ordered_at timestamp"),
        ({"total": "twelve"}, "total is not a number"),
        ({"total": "-1"}, "negative order total"),
        ({"total": "2000000"}, "absurd amount"),
    ],
)
def test_bad_rows_are_quarantined_with_a_reason(row: dict, reason: str) -> None:
    raw = pd.DataFrame([GOOD | {"order_id": "O0"}, GOOD | row])
    clean, bad = validate_orders(raw, {"C1"}, NIGHT)
    assert list(clean["order_id"]) == ["O0"]
    assert len(bad) == 1
    assert reason in bad[0].reason
    assert bad[0].source == "orders"


def test_duplicate_order_ids_keep_the_first() -> None:
    raw = pd.DataFrame([GOOD, GOOD | {"total": "99"}])
    clean, bad = validate_orders(raw, {"C1"}, NIGHT)
    assert clean["total"].tolist() == [12.5]
    assert [b.reason for b in bad] == ["duplicate order_id (the first occurrence was kept)"]


def test_orders_after_the_night_do_not_exist_yet() -> None:
    raw = pd.DataFrame([GOOD, GOOD | {"order_id": "O2", "ordered_at": "2026-11-21 00:00:00Z"}])
    clean, bad = validate_orders(raw, {"C1"}, NIGHT)
    assert clean["order_id"].tolist() == ["O1"]
    assert bad == []


@pytest.mark.parametrize("stamp", ["2026-11-01 10:00:00+00:00", "2026-11-01T05:00:00-05:00",
                                   "2026-11-01 10:00:00", "2026-11-01T10:00:00Z"])
def test_timestamps_in_any_common_spelling_become_utc(stamp: str) -> None:
    clean, _ = validate_orders(pd.DataFrame([GOOD | {"ordered_at": stamp}]), {"C1"}, NIGHT)
    assert clean.loc[0, "ordered_at"] == pd.Timestamp("2026-11-01 10:00:00", tz="UTC")


def test_a_shop_without_tends_tables_gets_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="create views with these names"):
        require_schema(f"sqlite:///{tmp_path / 'empty.db'}")
