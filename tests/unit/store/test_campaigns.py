"""The campaigns table and uploaded audiences (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt

import pytest

from tend.store import campaigns
from tend.store.db import connect

NOW = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)
DAY = dt.date(2026, 11, 20)


def save(store_url: str, *, dry_run: bool, status: str, report: dict) -> None:
    with connect(store_url).begin() as conn:
        campaigns.save_run(conn, name="spring", template="newsletter", audience="all",
                           status=status, as_of=DAY, run_id="r1", params={"name": "spring"},
                           report=report, dry_run=dry_run, now=NOW)


def test_a_dry_run_then_a_real_run_keep_both_reports(store_url: str) -> None:
    save(store_url, dry_run=True, status="dry_run", report={"claimed": 3})
    save(store_url, dry_run=False, status="planned", report={"claimed": 2})
    save(store_url, dry_run=True, status="dry_run", report={"claimed": 1})
    with connect(store_url).begin() as conn:
        row = campaigns.read(conn, "spring")
        assert row is not None
        assert (row["status"], row["dry_run_report"], row["report"]) == (
            "planned", {"claimed": 1}, {"claimed": 2})  # a rehearsal keeps the real run's
        assert row["params"] == {"name": "spring"} and row["as_of"] == DAY
        campaigns.set_status(conn, "spring", "sent", now=NOW, report={"ledger": {"sent": 2}})
        assert campaigns.read(conn, "spring")["report"] == {"ledger": {"sent": 2}}
        with pytest.raises(ValueError, match="not one of"):
            campaigns.set_status(conn, "spring", "done", now=NOW)
        assert campaigns.names(conn) == ["spring"]
        assert campaigns.read(conn, "autumn") is None


def test_an_uploaded_audience_is_replaced_whole(store_url: str) -> None:
    with connect(store_url).begin() as conn:
        assert campaigns.replace_audience(conn, "vip", ["C2", "C1", "C1"], now=NOW) == 2
        campaigns.replace_audience(conn, "other", ["C9"], now=NOW)
        assert campaigns.replace_audience(conn, "vip", ["C3"], now=NOW) == 1
        assert campaigns.audience_ids(conn, "vip") == ["C3"]
        assert campaigns.audiences(conn) == {"other": 1, "vip": 1}
