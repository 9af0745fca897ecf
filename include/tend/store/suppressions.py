"""Suppressions: addresses Tend must not write to (unsubscribed, invalid, complained), until a
suppression is resolved."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import pandas as pd
from sqlalchemy import Connection, literal, select, union

from tend.store import bulk
from tend.store.tables import complaints, message_events, suppressions


def active(conn: Connection) -> pd.DataFrame:
    """The unresolved suppressions: ``customer_id``, ``reason``; a customer with an open
    complaint (the ``complaints`` table) appears once with reason ``complaint``."""
    listed = select(suppressions.c.customer_id, suppressions.c.reason).where(
        suppressions.c.resolved_at.is_(None))
    complained = select(complaints.c.customer_id, literal("complaint").label("reason")).where(
        complaints.c.resolved_at.is_(None)).distinct()
    return pd.DataFrame(
        conn.execute(union(listed, complained)).all(), columns=["customer_id", "reason"],
    )


def add(conn: Connection, customer_ids: Iterable[str], *, reason: str, source: str,
        created_at: dt.datetime) -> None:
    """Suppress these customers; one already suppressed for the same reason stays as it was."""
    bulk.insert_ignore(conn, suppressions, [
        {"customer_id": c, "email": None, "reason": reason, "source": source,
         "created_at": created_at} for c in customer_ids
    ])


#: Suppression reasons that mean the customer asked for less mail (tend.results counts them).
OPT_OUT_REASONS = ("unsubscribed", "spam_report")
#: SendGrid events that mean the same.
OPT_OUT_EVENTS = ("unsubscribe", "group_unsubscribe", "spamreport")


def opt_outs(conn: Connection, since: dt.datetime) -> pd.DataFrame:
    """Unsubscribes and complaints recorded at or after ``since``, from the suppressions,
    complaints and message_events tables: customer_id, message_id (None when unknown), kind
    (``unsubscribe`` or ``complaint``), at. A customer may appear in several tables for one act
    (an unsubscribe click and its SendGrid event): counting is per customer, never per row."""
    sup = select(suppressions.c.customer_id, literal(None).label("message_id"),
                 suppressions.c.reason, suppressions.c.created_at).where(
        suppressions.c.reason.in_(OPT_OUT_REASONS), suppressions.c.created_at >= since)
    comp = select(complaints.c.customer_id, complaints.c.message_id,
                  literal("complaint").label("reason"), complaints.c.opened_at).where(
        complaints.c.opened_at >= since)
    ev = select(message_events.c.customer_id, message_events.c.message_id,
                message_events.c.event, message_events.c.occurred_at).where(
        message_events.c.event.in_(OPT_OUT_EVENTS), message_events.c.occurred_at >= since)
    cols = ["customer_id", "message_id", "reason", "at"]
    frame = pd.DataFrame([r for q in (sup, comp, ev) for r in conn.execute(q).all()],
                         columns=cols)
    frame["kind"] = frame["reason"].map(
        lambda r: "complaint" if r in ("complaint", "spam_report", "spamreport")
        else "unsubscribe")
    frame["at"] = pd.to_datetime(frame["at"], utc=True, format="mixed")
    frame["message_id"] = frame["message_id"].astype(object).where(frame["message_id"].notna(),
                                                                   None)
    return frame[["customer_id", "message_id", "kind", "at"]]
