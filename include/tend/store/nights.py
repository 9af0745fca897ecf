"""Nights that were ingested but never planned (the ``unplanned_nights`` table).

tend_programs plans the night the store's features are at. When its asset events name an
older night that no run planned (a later ingest overtook it first: a catch-up run after
unpausing, a leftover event), the run records it here; the night's summary and the Tend page
read it, so the gap is stated where people look, not only in a task log. A night planned later
(a replay: tend_ingest then tend_programs for it) drops out of ``unplanned``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, exists, select

from tend.store.tables import decision_log, unplanned_nights


def record(conn: Connection, nights: Iterable[dt.date], *, overtaken_by: dt.date,
           run_id: str, at: dt.datetime) -> int:
    """Record ``nights`` as overtaken by ``overtaken_by`` (a night already recorded keeps its
    first record); how many were new."""
    wanted = sorted(set(nights))
    if not wanted:
        return 0
    known = set(_dates(conn.execute(select(unplanned_nights.c.as_of).where(
        unplanned_nights.c.as_of.in_(wanted))).scalars()))
    new = [d for d in wanted if d not in known]
    if new:
        conn.execute(unplanned_nights.insert(), [
            {"as_of": d, "overtaken_by": overtaken_by, "run_id": run_id, "recorded_at": at}
            for d in new])
    return len(new)


def unplanned(conn: Connection, *, overtaken_by: dt.date | None = None,
              since: dt.date | None = None) -> list[dict[str, Any]]:
    """The recorded nights that are still unplanned (no decision of theirs in the log), oldest
    first: as_of, overtaken_by, run_id, recorded_at. ``overtaken_by``: only those that night's
    run found; ``since``: only nights from that day on."""
    t = unplanned_nights
    q = (select(t.c.as_of, t.c.overtaken_by, t.c.run_id, t.c.recorded_at)
         .where(~exists().where(decision_log.c.as_of == t.c.as_of))
         .order_by(t.c.as_of))
    if overtaken_by is not None:
        q = q.where(t.c.overtaken_by == overtaken_by)
    if since is not None:
        q = q.where(t.c.as_of >= since)
    rows = [dict(r._mapping) for r in conn.execute(q)]
    for r in rows:
        r["as_of"], r["overtaken_by"] = _dates([r["as_of"], r["overtaken_by"]])
    return rows


def unplanned_warning(night: dt.date, overtaken_by: dt.date) -> str:
    """What a night that was never planned means, and how to offer the rest of it."""
    return (f"night {night} was never planned: the ingest of {overtaken_by} overtook it "
            f"first. The plan of {overtaken_by} offered what is still due (most of its "
            "messages); what only that night would have sent (a window that closed since) was "
            "not offered. To offer it, replay the night: tend_ingest then tend_programs with "
            f"as_of {night}")


def _dates(values: Iterable[Any]) -> list[dt.date]:
    return [v if isinstance(v, dt.date) else dt.date.fromisoformat(str(v)[:10]) for v in values]
