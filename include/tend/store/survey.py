"""Survey answers: one rating (and an optional comment) per survey message.

Written by ``tend serve`` (the survey's rating links and comment box); read per program and per
product for the results page.
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

import pandas as pd
from sqlalchemy import Connection, func, select

from tend.store import bulk
from tend.store.tables import survey_answers


class Previous(NamedTuple):
    """The rating an answer replaced, and when the message was last answered."""

    rating: int
    at: dt.datetime


def answer(conn: Connection, *, message_id: str, customer_id: str, program: str,
           sku: str | None, rating: int, comment: str | None, now: dt.datetime
           ) -> Previous | None:
    """Record the answer to ``message_id``: a later click changes the rating; a rating-only
    click keeps a comment given before.

    Returns what this answer replaced (None for the message's first answer). The answer's row
    stays locked until the caller's transaction ends, so answers to one message that arrive
    together (a mail scanner fetching every rating link at once) are applied one after the
    other, each seeing the one before it: what the caller decides from the return value holds.
    """
    if bulk.insert_new(conn, survey_answers, {
            "message_id": message_id, "customer_id": customer_id, "program": program,
            "sku": sku, "rating": rating, "comment": comment, "answered_at": now,
            "updated_at": now}):
        return None
    # FOR UPDATE: read the answer as the last writer left it and hold it until this
    # transaction ends, whatever the insert above did or did not wait for (on SQLite,
    # BEGIN IMMEDIATE already runs one writer at a time).
    before = conn.execute(
        select(survey_answers.c.rating, survey_answers.c.updated_at)
        .where(survey_answers.c.message_id == message_id).with_for_update()).one()
    conn.execute(survey_answers.update().where(survey_answers.c.message_id == message_id)
                 .values(rating=rating, updated_at=now,
                         **({"comment": comment} if comment is not None else {})))
    at = before.updated_at
    # SQLite keeps UTC timestamps without their offset.
    return Previous(int(before.rating), at if at.tzinfo else at.replace(tzinfo=dt.UTC))


def get(conn: Connection, message_id: str) -> dict[str, object] | None:
    row = conn.execute(select(survey_answers).where(
        survey_answers.c.message_id == message_id)).mappings().first()
    return dict(row) if row else None


def ratings(conn: Connection, by: str = "program") -> pd.DataFrame:
    """Answers, mean rating and low ratings (1-2) per ``program`` or per ``sku``."""
    col = survey_answers.c[by]
    low = func.sum((survey_answers.c.rating <= 2).cast(survey_answers.c.rating.type))
    rows = conn.execute(select(col, func.count(), func.avg(survey_answers.c.rating), low)
                        .group_by(col).order_by(col)).all()
    return pd.DataFrame(rows, columns=[by, "answers", "mean_rating", "low_ratings"])
