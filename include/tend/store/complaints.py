"""Complaints: an unhappy customer that staff must answer swiftly.

Opened by a low survey rating or a spam report (``tend serve``); while one is open, marketing to
that customer pauses (:func:`tend.store.suppressions.active` lists it as ``complaint``).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Connection, insert, select

from tend.store.tables import complaints


def open_complaint(conn: Connection, *, customer_id: str, source: str, now: dt.datetime,
                   message_id: str | None = None, rating: int | None = None,
                   comment: str | None = None) -> int:
    """Open a complaint, or update the customer's open one from the same message (a changed
    rating or an added comment is the same complaint); returns its id."""
    if message_id is not None:
        existing = conn.execute(
            select(complaints.c.id).where(complaints.c.customer_id == customer_id,
                                          complaints.c.message_id == message_id,
                                          complaints.c.resolved_at.is_(None))).scalar()
        if existing is not None:
            updates = {k: v for k, v in (("rating", rating), ("comment", comment))
                       if v is not None}
            if updates:
                conn.execute(complaints.update().where(complaints.c.id == existing)
                             .values(**updates))
            return int(existing)
    return int(conn.execute(insert(complaints).values(
        customer_id=customer_id, message_id=message_id, source=source, rating=rating,
        comment=comment, opened_at=now).returning(complaints.c.id)).scalar_one())
