"""The suppressions table's own operations, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

from tend.store import connect
from tend.store import suppressions as suppressed


def test_suppressions_are_added_once_and_read_while_unresolved(store_url: str) -> None:
    engine = connect(store_url)
    stamp = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    with engine.begin() as conn:
        suppressed.add(conn, ["C1", "C2"], reason="invalid_address", source="validation",
                       created_at=stamp)
        suppressed.add(conn, ["C1"], reason="invalid_address", source="validation",
                       created_at=stamp)  # a rerun of the night changes nothing
        suppressed.add(conn, [], reason="invalid_address", source="validation",
                       created_at=stamp)
    with engine.connect() as conn:
        active = suppressed.active(conn)
    assert sorted(active["customer_id"]) == ["C1", "C2"]
    assert set(active["reason"]) == {"invalid_address"}
