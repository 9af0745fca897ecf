"""The ``kpi`` table: the nightly results per month and program, for the Tend page."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import numpy as np
import pandas as pd
from sqlalchemy import Connection, delete, insert, select

from tend.store.tables import kpi

#: The figures a row holds (every column but the keys' bookkeeping).
FIGURES = tuple(c.name for c in kpi.columns if c.name not in ("as_of", "computed_at"))


def replace_months(conn: Connection, rows: pd.DataFrame, months: Iterable[str], *,
                   as_of: dt.date, computed_at: dt.datetime) -> int:
    """Replace every row of ``months`` with ``rows`` (month, program and the figures); the
    number of rows written. A program with no exposure left in a month loses its row."""
    months = sorted(set(months))
    if months:
        conn.execute(delete(kpi).where(kpi.c.month.in_(months)))
    if rows.empty:
        return 0
    frame = rows.reindex(columns=list(FIGURES))
    records = [{k: _plain(v) for k, v in r.items()} for r in frame.to_dict("records")]
    for r in records:
        r.update(as_of=as_of, computed_at=computed_at, note=r["note"] or "")
        for col in ("responses", "holdout_responses", "direct_responses", "messages",
                    "open_windows", "contacted", "held_out"):
            r[col] = int(r[col] or 0)
    conn.execute(insert(kpi), records)
    return len(records)


def read(conn: Connection, months: Iterable[str] | None = None) -> pd.DataFrame:
    """The stored rows (of ``months``), by month then program."""
    q = select(kpi).order_by(kpi.c.month, kpi.c.program)
    if months is not None:
        q = q.where(kpi.c.month.in_(sorted(set(months))))
    rows = conn.execute(q).mappings().all()
    return pd.DataFrame(rows, columns=[c.name for c in kpi.columns])


def _plain(value: object) -> object:
    """NumPy scalars as Python values, NaN as NULL."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value
