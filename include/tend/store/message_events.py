"""Message events: what SendGrid reported about each message (``tend serve``'s Event Webhook).

Keyed by SendGrid's ``sg_event_id``: SendGrid retries a delivery it did not see answered, so the
same event can arrive several times, and only its first arrival may have effects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.dialects import postgresql, sqlite

from tend.errors import LedgerError
from tend.store.tables import message_events

__all__ = ["add_new", "counts_of"]


def add_new(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> set[str]:
    """Insert the events not stored yet, in one statement; return the ``event_id`` of those
    that were new (a concurrent or retried delivery of the same event gets nothing back)."""
    if not rows:
        return set()
    dialect = conn.dialect.name
    if dialect == "postgresql":
        stmt = postgresql.insert(message_events).on_conflict_do_nothing()
    elif dialect == "sqlite":
        stmt = sqlite.insert(message_events).on_conflict_do_nothing()
    else:  # pragma: no cover - the store supports PostgreSQL and SQLite only
        raise LedgerError(f"the contact store does not support {dialect}; use PostgreSQL or SQLite")
    # Duplicates inside one batch: only the first row of an id can be new.
    unique = list({r["event_id"]: r for r in reversed(rows)}.values())
    result = conn.execute(stmt.returning(message_events.c.event_id), unique)
    return {str(e) for e in result.scalars()}


def counts_of(conn: Connection, message_id: str) -> dict[str, int]:
    """How many events of each kind a message has (``tend why``, tests)."""
    q = (select(message_events.c.event, func.count()).where(
        message_events.c.message_id == message_id).group_by(message_events.c.event))
    return {str(e): int(n) for e, n in conn.execute(q)}

