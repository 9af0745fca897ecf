"""Message events: what SendGrid reported about each message (``tend serve``'s Event Webhook).

Keyed by SendGrid's ``sg_event_id``: SendGrid retries a delivery it did not see answered, so the
same event can arrive several times, and only its first arrival may have effects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, func, select, text
from sqlalchemy.dialects import sqlite

from tend.errors import LedgerError
from tend.store.tables import message_events

__all__ = ["add_new", "counts_of"]


def add_new(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> set[str]:
    """Insert the events not stored yet, in one statement; return the ``event_id`` of those
    that were new (a concurrent or retried delivery of the same event gets nothing back)."""
    if not rows:
        return set()
    # Duplicates inside one batch: only the first row of an id can be new.
    unique = list({r["event_id"]: r for r in reversed(rows)}.values())
    dialect = conn.dialect.name
    if dialect == "postgresql":
        # One statement over arrays: a webhook batch is ~1,000 rows, and row-by-row parameter
        # processing would cost more than the database's work.
        result = conn.execute(_PG_INSERT, {c: [r[c] for r in unique] for c in _COLUMNS})
    elif dialect == "sqlite":
        stmt = sqlite.insert(message_events).on_conflict_do_nothing()
        result = conn.execute(stmt.returning(message_events.c.event_id), unique)
    else:  # pragma: no cover - the store supports PostgreSQL and SQLite only
        raise LedgerError(f"the contact store does not support {dialect}; use PostgreSQL or SQLite")
    return {str(e) for e in result.scalars()}


_COLUMNS = ("event_id", "message_id", "customer_id", "event", "occurred_at", "received_at",
            "detail")
_PG_INSERT = text(
    "INSERT INTO message_events (" + ", ".join(_COLUMNS) + ") "
    "SELECT * FROM unnest(CAST(:event_id AS text[]), CAST(CAST(:message_id AS text[]) AS uuid[]),"
    " CAST(:customer_id AS text[]), CAST(:event AS text[]), CAST(:occurred_at AS timestamptz[]),"
    " CAST(:received_at AS timestamptz[]), CAST(:detail AS text[])) "
    "ON CONFLICT DO NOTHING RETURNING event_id")


def counts_of(conn: Connection, message_id: str) -> dict[str, int]:
    """How many events of each kind a message has (``tend why``, tests)."""
    q = (select(message_events.c.event, func.count()).where(
        message_events.c.message_id == message_id).group_by(message_events.c.event))
    return {str(e): int(n) for e, n in conn.execute(q)}

