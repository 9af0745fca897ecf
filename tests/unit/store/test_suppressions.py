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


def test_the_customers_own_unsubscribe_undo_and_again(store_url: str) -> None:
    engine = connect(store_url)
    first = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    with engine.begin() as conn:
        suppressed.add(conn, ["C1"], reason="hard_bounce", source="sendgrid", created_at=first)
        suppressed.unsubscribe(conn, "C1", source="one_click", now=first)
        suppressed.unsubscribe(conn, "C1", source="one_click",
                               now=first + dt.timedelta(hours=1))  # a second click
    with engine.connect() as conn:
        since = suppressed.unsubscribed_since(conn, "C1")
        assert since is not None and since.replace(tzinfo=dt.UTC) == first
    with engine.begin() as conn:
        suppressed.resubscribe(conn, "C1", now=first + dt.timedelta(days=1))
    with engine.connect() as conn:
        # the undo lifts the customer's own unsubscribe, never a bounce
        assert set(suppressed.active(conn)["reason"]) == {"hard_bounce"}
        assert suppressed.unsubscribed_since(conn, "C1") is None
    with engine.begin() as conn:
        suppressed.unsubscribe(conn, "C1", source="one_click", now=first + dt.timedelta(days=2))
    with engine.connect() as conn:
        assert set(suppressed.active(conn)["reason"]) == {"hard_bounce", "unsubscribed"}


def test_opt_outs_from_suppressions_complaints_and_events(store_url: str) -> None:
    from tend.store import complaints
    from tend.store.tables import message_events

    engine = connect(store_url)
    old = dt.datetime(2026, 9, 1, tzinfo=dt.UTC)
    stamp = dt.datetime(2026, 12, 1, 10, tzinfo=dt.UTC)
    mid = "a" * 32
    with engine.begin() as conn:
        suppressed.add(conn, ["C1"], reason="unsubscribed", source="link", created_at=stamp)
        suppressed.add(conn, ["C2"], reason="hard_bounce", source="sendgrid", created_at=stamp)
        suppressed.add(conn, ["C3"], reason="unsubscribed", source="link", created_at=old)
        complaints.open_complaint(conn, customer_id="C4", source="survey", now=stamp,
                                  message_id=mid, rating=1)
        conn.execute(message_events.insert(), [
            {"event_id": "e1", "message_id": mid, "customer_id": "C5", "event": "spamreport",
             "occurred_at": stamp, "received_at": stamp},
            {"event_id": "e2", "message_id": mid, "customer_id": "C6", "event": "open",
             "occurred_at": stamp, "received_at": stamp}])
    with engine.connect() as conn:
        outs = suppressed.opt_outs(conn, dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
    got = sorted((r.customer_id, r.kind, r.message_id) for r in outs.itertuples())
    assert got == [("C1", "unsubscribe", None), ("C4", "complaint", mid),
                   ("C5", "complaint", mid)]
    assert (outs["at"] == stamp).all()
