"""Suppressions: addresses Tend must not write to (unsubscribed, invalid, complained), until a
suppression is resolved."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import pandas as pd
from sqlalchemy import Connection, literal, select, union

from tend.store import bulk
from tend.store.tables import complaints, suppressions


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


# -- the customer's own unsubscribe (tend serve's unsubscribe page) ---------------------------


def unsubscribe(conn: Connection, customer_id: str, *, source: str,
                now: dt.datetime) -> None:
    """Suppress ``customer_id`` as unsubscribed; an undone unsubscribe (resolved) is reopened,
    one still in force keeps its first date (a second click changes nothing)."""
    reopened = conn.execute(suppressions.update().where(
        suppressions.c.customer_id == customer_id, suppressions.c.reason == "unsubscribed",
        suppressions.c.resolved_at.is_not(None),
    ).values(resolved_at=None, created_at=now, source=source)).rowcount
    if not reopened:
        add(conn, [customer_id], reason="unsubscribed", source=source, created_at=now)


def resubscribe(conn: Connection, customer_id: str, *, now: dt.datetime) -> None:
    """Undo the customer's own unsubscribe (the page's "undo"). Other reasons (a bounce, a
    spam report) are not the customer's to undo here and stay."""
    conn.execute(suppressions.update().where(
        suppressions.c.customer_id == customer_id, suppressions.c.reason == "unsubscribed",
        suppressions.c.resolved_at.is_(None),
    ).values(resolved_at=now))


def unsubscribed_since(conn: Connection, customer_id: str) -> dt.datetime | None:
    """When the customer's unsubscribe in force was recorded, None when there is none."""
    return conn.execute(select(suppressions.c.created_at).where(
        suppressions.c.customer_id == customer_id, suppressions.c.reason == "unsubscribed",
        suppressions.c.resolved_at.is_(None))).scalar()
