"""The nights that were ingested but never planned (tend.store.nights), on both backends."""

from __future__ import annotations

import datetime as dt

import pytest
from _support import make_program, make_registry, plan_test_night

from tend.store import ledger, nights
from tend.store.db import connect

D16, D17, D18, D20 = (dt.date(2026, 11, d) for d in (16, 17, 18, 20))

pytestmark = pytest.mark.demo_shop(customers=60, seed=5, as_of=D20)


def test_recorded_nights_stay_unplanned_until_a_run_plans_them(store_url: str,
                                                                shop_url: str) -> None:
    at = ledger.now()
    with connect(store_url).begin() as conn:
        assert nights.record(conn, [D18, D17], overtaken_by=D20, run_id="r1", at=at) == 2
        # found again by a later run: the first record stands
        assert nights.record(conn, [D18, D16], overtaken_by=D20, run_id="r2", at=at) == 1
    with connect(store_url).connect() as conn:
        rows = nights.unplanned(conn)
        assert [(r["as_of"], r["overtaken_by"], r["run_id"]) for r in rows] == [
            (D16, D20, "r2"), (D17, D20, "r1"), (D18, D20, "r1")]
        assert [r["as_of"] for r in nights.unplanned(conn, since=D17)] == [D17, D18]
        assert nights.unplanned(conn, overtaken_by=D18) == []
    # a replay of D18 plans it: only the others remain
    plan_test_night(shop_url, store_url, D18, make_registry(make_program("winback")))
    with connect(store_url).connect() as conn:
        assert [r["as_of"] for r in nights.unplanned(conn, overtaken_by=D20)] == [D16, D17]


def test_the_warning_says_what_was_offered_and_how_to_offer_the_rest() -> None:
    text = nights.unplanned_warning(D18, D20)
    assert text.startswith("night 2026-11-18 was never planned: the ingest of 2026-11-20")
    assert "tend_ingest then tend_programs with as_of 2026-11-18" in text
