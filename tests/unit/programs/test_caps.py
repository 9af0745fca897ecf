"""Holdouts and quiet hours: deterministic, stable, DST-correct."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from tend.programs.caps import (
    FEWER_EMAILS_MESSAGES,
    SendWindow,
    fewer_emails_fates,
    held_out,
    holdout_draw,
    holdout_period,
)

UTC = dt.UTC


@pytest.mark.parametrize(
    ("now", "tz", "expected"),
    [
        # 02:00 in Montréal in winter (EST, UTC-5) -> 09:00 local = 14:00 UTC the same day
        ("2026-11-23T07:00", "America/Montreal", "2026-11-23T14:00"),
        # summer (EDT, UTC-4) -> 13:00 UTC
        ("2026-07-23T06:00", "America/Montreal", "2026-07-23T13:00"),
        # inside the window: send now
        ("2026-07-23T15:00", "America/Montreal", None),
        # 21:00 local is after the window: next morning
        ("2026-11-24T02:00", "America/Montreal", "2026-11-24T14:00"),
        # the night clocks go back (Nov 1 2026 in North America): 09:00 EST = 14:00 UTC
        ("2026-11-01T05:30", "America/Toronto", "2026-11-01T14:00"),
        # the night clocks go forward (Mar 8 2026): 09:00 EDT = 13:00 UTC
        ("2026-03-08T06:30", "America/Toronto", "2026-03-08T13:00"),
        # Paris, and an unknown zone falls back to UTC
        ("2026-11-23T05:00", "Europe/Paris", "2026-11-23T08:00"),
        ("2026-11-23T05:00", "Mars/Olympus", "2026-11-23T09:00"),
        # a folder of the tz database is no zone either (ZoneInfo raises an OSError for it)
        ("2026-11-23T05:00", "Canada", "2026-11-23T09:00"),
        ("2026-11-23T05:00", "America", "2026-11-23T09:00"),
        ("2026-11-23T05:00", None, "2026-11-23T09:00"),
    ],
)
def test_next_send_time(now: str, tz: str | None, expected: str | None) -> None:
    got = SendWindow().next_send_time(dt.datetime.fromisoformat(now).replace(tzinfo=UTC), tz)
    want = None if expected is None else dt.datetime.fromisoformat(expected).replace(tzinfo=UTC)
    assert got == want


def test_custom_window_edges() -> None:
    w = SendWindow(start=dt.time(10), end=dt.time(18))
    at = dt.datetime(2026, 11, 23, 10, tzinfo=UTC)
    assert w.next_send_time(at, "UTC") is None  # start is inclusive
    assert w.next_send_time(at.replace(hour=18), "UTC") == at + dt.timedelta(days=1)


def test_holdout_is_deterministic_and_close_to_its_share() -> None:
    ids = pd.Series([f"C{i:06d}" for i in range(20_000)])
    night = dt.date(2026, 11, 20)
    a = held_out(ids, "winback", night, 0.1)
    assert (a == held_out(ids, "winback", night, 0.1)).all()
    assert 0.09 < a.mean() < 0.11
    # the same customer draws the same way whatever the size of the shop
    assert (held_out(ids[:300], "winback", night, 0.1) == a[:300]).all()
    # stable within the quarter, reshuffled across quarters and programs
    assert (held_out(ids, "winback", dt.date(2026, 12, 31), 0.1) == a).all()
    assert (held_out(ids, "winback", dt.date(2027, 1, 1), 0.1) != a).any()
    assert (held_out(ids, "cross_sell", night, 0.1) != a).any()
    assert not held_out(ids, "winback", night, 0.0).any()


def test_holdout_draws_are_uniform() -> None:
    draws = holdout_draw(pd.Series([str(i) for i in range(50_000)]), "p", "2026Q4")
    assert draws.min() >= 0 and draws.max() < 1
    counts, _ = pd.cut(pd.Series(draws), 10, labels=False).value_counts().sort_index(), None
    assert counts.min() > 4_500 and counts.max() < 5_500


@pytest.mark.parametrize(("day", "period"), [(dt.date(2026, 1, 1), "2026Q1"),
                                             (dt.date(2026, 3, 31), "2026Q1"),
                                             (dt.date(2026, 4, 1), "2026Q2"),
                                             (dt.date(2026, 12, 31), "2026Q4")])
def test_holdout_period(day: dt.date, period: str) -> None:
    assert holdout_period(day) == period


def test_fewer_emails_caps_marketing_only_for_those_who_asked() -> None:
    cands = pd.DataFrame({"customer_id": ["C1", "C1", "C2", "C3"],
                          "kind": ["marketing", "service", "marketing", "marketing"]})
    recent = pd.DataFrame({"customer_id": ["C1", "C3"],
                           "messages": [FEWER_EMAILS_MESSAGES, FEWER_EMAILS_MESSAGES - 1]})
    fates = fewer_emails_fates(cands, recent)
    assert fates["fate"].tolist() == ["capped:fewer_emails", None, None, None]
    assert "asked for fewer emails" in fates.loc[0, "why"]
