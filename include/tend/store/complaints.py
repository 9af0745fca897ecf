"""Complaints: an unhappy customer that staff must answer swiftly.

Opened by a low survey rating or a spam report (``tend serve``); while one is open, marketing to
that customer pauses (:func:`tend.store.suppressions.active` lists it as ``complaint``). Staff
get each new complaint once in a daily digest (``notified_at``) and close it with
``tend complaints resolve``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, insert, select

from tend.store.tables import complaints

#: The columns :func:`open_ones`, :func:`opened_between` and :func:`to_notify` return.
COLUMNS = ("id", "customer_id", "message_id", "source", "rating", "comment", "opened_at",
           "notified_at")


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


def withdraw_unheard(conn: Connection, *, message_id: str, source: str, now: dt.datetime,
                     note: str) -> int:
    """Close the open complaint about ``message_id`` that staff have not been told of yet and
    that carries no comment: the customer changed their low rating to a good one (or a mail
    scanner opened every rating link in turn). Returns how many were closed (0 or 1)."""
    return int(conn.execute(complaints.update().where(
        complaints.c.message_id == message_id, complaints.c.source == source,
        complaints.c.resolved_at.is_(None), complaints.c.notified_at.is_(None),
        complaints.c.comment.is_(None),
    ).values(resolved_at=now, note=note)).rowcount)


def resolve(conn: Connection, complaint_id: int, *, note: str, now: dt.datetime) -> bool:
    """Close an open complaint with staff's note; False when there is no open one by that id."""
    return bool(conn.execute(complaints.update().where(
        complaints.c.id == complaint_id, complaints.c.resolved_at.is_(None),
    ).values(resolved_at=now, note=note)).rowcount)


def _rows(conn: Connection, *where: Any) -> list[dict[str, Any]]:
    q = select(*(complaints.c[c] for c in COLUMNS)).where(*where).order_by(complaints.c.id)
    return [dict(r) for r in conn.execute(q).mappings()]


def open_ones(conn: Connection, customer_id: str | None = None) -> list[dict[str, Any]]:
    """The open complaints (of one customer, or all), oldest first."""
    where = [complaints.c.resolved_at.is_(None)]
    if customer_id is not None:
        where.append(complaints.c.customer_id == customer_id)
    return _rows(conn, *where)


def opened_between(conn: Connection, start: dt.datetime, end: dt.datetime
                   ) -> list[dict[str, Any]]:
    """Complaints opened in ``[start, end)`` and still open (the night's summary warns of them)."""
    return _rows(conn, complaints.c.opened_at >= start, complaints.c.opened_at < end,
                 complaints.c.resolved_at.is_(None))


def to_notify(conn: Connection) -> list[dict[str, Any]]:
    """Open complaints staff have not had in a digest yet."""
    return _rows(conn, complaints.c.resolved_at.is_(None), complaints.c.notified_at.is_(None))


def mark_notified(conn: Connection, ids: Sequence[int], *, now: dt.datetime) -> None:
    """Record that these complaints went out in a digest, so no digest repeats them."""
    if ids:
        conn.execute(complaints.update().where(complaints.c.id.in_(list(ids)),
                                               complaints.c.notified_at.is_(None))
                     .values(notified_at=now))
