"""The campaigns table and the uploaded audiences (migration 0013).

Written by the tend_campaign DAG (``tend.campaigns``) and ``tend campaign upload-audience``;
read by the campaign's own tasks and the Tend page. Reports are JSON text, so the page reads
exactly what the task log printed.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, delete, func, select, update

from tend.store import bulk
from tend.store.tables import campaign_audiences, campaigns

#: A campaign's status: ``dry_run`` (only rehearsed), ``planned`` (claimed), ``sending``,
#: then ``sent``, ``partly_sent`` (some failed or unknown), ``failed`` (none sent) or
#: ``nothing_to_send`` (a real run that claimed no message).
STATUSES = ("dry_run", "planned", "sending", "sent", "partly_sent", "failed", "nothing_to_send")


def save_run(conn: Connection, *, name: str, template: str, audience: str, status: str,
             as_of: dt.date, run_id: str, params: Mapping[str, Any],
             report: Mapping[str, Any], dry_run: bool, now: dt.datetime) -> None:
    """Record a run of campaign ``name``: its form, status and report.

    A dry run's report goes to ``dry_run_report``. Once the campaign has had a real run, a
    dry run changes nothing else: the status, form, day and run id stay the real run's, which
    its finish, the results (the voucher prefix comes from the stored form) and the Tend page
    read."""
    existing = conn.execute(select(campaigns.c.status, campaigns.c.report)
                            .where(campaigns.c.name == name)).first()
    values: dict[str, Any] = {
        "template": template, "audience": audience, "status": status, "as_of": as_of,
        "run_id": run_id, "params": json.dumps(params, sort_keys=True, default=str),
        "dry_run_report" if dry_run else "report": json.dumps(report, default=str),
        "updated_at": now,
    }
    if existing is None:
        conn.execute(campaigns.insert().values(name=name, created_at=now, **values))
        return
    if dry_run and (existing.report is not None or existing.status != "dry_run"):
        values = {"dry_run_report": values["dry_run_report"], "updated_at": now}
    conn.execute(update(campaigns).where(campaigns.c.name == name).values(**values))


def set_status(conn: Connection, name: str, status: str, *, now: dt.datetime,
               report: Mapping[str, Any] | None = None) -> None:
    if status not in STATUSES:
        raise ValueError(f"campaign status {status!r} is not one of {', '.join(STATUSES)}")
    values: dict[str, Any] = {"status": status, "updated_at": now}
    if report is not None:
        values["report"] = json.dumps(report, default=str)
    conn.execute(update(campaigns).where(campaigns.c.name == name).values(**values))


def read(conn: Connection, name: str) -> dict[str, Any] | None:
    """The campaign's row with ``params`` and the reports parsed, or None."""
    row = conn.execute(select(campaigns).where(campaigns.c.name == name)).mappings().first()
    if row is None:
        return None
    out = dict(row)
    for key in ("params", "dry_run_report", "report"):
        out[key] = json.loads(out[key]) if out[key] else None
    return out


def names(conn: Connection) -> list[str]:
    """Every campaign, newest first."""
    return list(conn.execute(select(campaigns.c.name)
                             .order_by(campaigns.c.updated_at.desc())).scalars())


def replace_audience(conn: Connection, audience: str, customer_ids: Iterable[str], *,
                     now: dt.datetime) -> int:
    """The uploaded audience ``audience`` becomes exactly ``customer_ids``; how many."""
    ids = sorted(set(customer_ids))
    conn.execute(delete(campaign_audiences).where(campaign_audiences.c.audience == audience))
    bulk.insert_ignore(conn, campaign_audiences, [
        {"audience": audience, "customer_id": c, "uploaded_at": now} for c in ids])
    return len(ids)


def audience_ids(conn: Connection, audience: str) -> list[str]:
    return list(conn.execute(select(campaign_audiences.c.customer_id)
                             .where(campaign_audiences.c.audience == audience)
                             .order_by(campaign_audiences.c.customer_id)).scalars())


def audiences(conn: Connection) -> dict[str, int]:
    """Uploaded audiences and their sizes."""
    q = (select(campaign_audiences.c.audience, func.count())
         .group_by(campaign_audiences.c.audience).order_by(campaign_audiences.c.audience))
    return {a: int(n) for a, n in conn.execute(q)}
