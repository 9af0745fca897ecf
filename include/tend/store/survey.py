"""Survey answers: one rating (and an optional comment) per survey message.

Written by ``tend serve`` (the survey's rating links and comment box); read per program and per
product for the results page.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
from sqlalchemy import Connection, func, select

from tend.store import bulk
from tend.store.tables import survey_answers


def answer(conn: Connection, *, message_id: str, customer_id: str, program: str,
           sku: str | None, rating: int, comment: str | None, now: dt.datetime) -> None:
    """Record the answer to ``message_id``: a later click changes the rating; a rating-only
    click keeps a comment given before."""
    bulk.insert_ignore(conn, survey_answers, [{
        "message_id": message_id, "customer_id": customer_id, "program": program, "sku": sku,
        "rating": rating, "comment": comment, "answered_at": now, "updated_at": now}])
    conn.execute(survey_answers.update().where(survey_answers.c.message_id == message_id)
                 .values(rating=rating, updated_at=now,
                         **({"comment": comment} if comment is not None else {})))

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
