"""What the Tend page shows: the figures of the last weeks, read from the store.

Sends per day by program and campaign, fates by reason, cap pressure, contacts per customer per
month, the deliverability rates against the mailbox providers' spam thresholds, survey ratings,
open complaints and the campaigns' reports. Plain data (lists of tuples and dicts), so the page
(``tend_airflow.page``) only draws it and a test can check every figure on both databases.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, func, inspect, select

from tend.store import complaints as complaint_store
from tend.store import nights as night_log
from tend.store import survey
from tend.store.db import connect
from tend.store.ledger import COUNTED
from tend.store.tables import (
    contact_ledger,
    decision_log,
    message_events,
    suppressions,
)

#: Mailbox providers' guidance (Gmail, Yahoo): keep spam reports under 0.1 % of delivered
#: mail, and never reach 0.3 %.
SPAM_TARGET = 0.001
SPAM_LIMIT = 0.003
#: A bounce rate above this says the list has gone stale (providers start to throttle).
BOUNCE_WARNING = 0.02


@dataclass(frozen=True)
class Rates:
    """Deliverability over the window: counts and rates per sent message."""

    sent: int
    delivered: int
    bounces: int
    unsubscribes: int
    spam_reports: int

    @property
    def bounce_rate(self) -> float:
        return self.bounces / self.sent if self.sent else 0.0

    @property
    def unsubscribe_rate(self) -> float:
        return self.unsubscribes / self.sent if self.sent else 0.0

    @property
    def spam_rate(self) -> float:
        """Spam reports per delivered message (per sent one when no delivery events arrive,
        as with the SMTP and outbox backends)."""
        base = self.delivered or self.sent
        return self.spam_reports / base if base else 0.0


@dataclass
class Dashboard:
    """The figures of the nights ``start``..``end`` (inclusive)."""

    start: dt.date
    end: dt.date
    sends: list[tuple[dt.date, str, int]]  # night, program (campaign:NAME for a campaign), sent
    fates: list[tuple[str, int]]  # fate, candidates (claimed included)
    cap_pressure: list[tuple[str, int, int]]  # cap label, customers at it, one below it
    contacts_per_month: list[tuple[str, int, int]]  # YYYY-MM, messages per customer, customers
    rates: Rates
    ratings: list[dict[str, Any]]  # by (program|sku), name, answers, average, low
    open_complaints: list[dict[str, Any]]
    campaigns: list[dict[str, Any]] = field(default_factory=list)
    #: Each program's results against its holdout for the window's months (the ``kpi``
    #: table tend_programs' ``kpi`` task fills): month, program, contacted, held_out,
    #: response rates, lift and its 95 % interval (in shares, not points).
    results: list[dict[str, Any]] = field(default_factory=list)
    #: Nights of the window ingested but never planned (``tend.store.nights``): as_of,
    #: overtaken_by, run_id, recorded_at.
    unplanned: list[dict[str, Any]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.sends or self.fates)


def latest_night(conn: Connection) -> dt.date | None:
    """The newest night in the decision log or the ledger (None for a new store)."""
    nights = [conn.execute(select(func.max(t.c.as_of))).scalar()
              for t in (decision_log, contact_ledger)]
    found = [_date(n) for n in nights if n is not None]
    return max(found) if found else None


def read_dashboard(store_url: str, *, days: int = 30, end: dt.date | None = None,
                   caps: Sequence[Any] = ()) -> Dashboard:
    """The page's figures over the ``days`` nights up to ``end`` (default: the newest night).

    ``caps``: the registry's caps (``tend.programs.registry.Cap``), for the cap pressure.
    """
    with connect(store_url).connect() as conn:
        end = end or latest_night(conn) or dt.date.today()
        start = end - dt.timedelta(days=days - 1)
        return Dashboard(
            start=start, end=end,
            sends=sends_per_day(conn, start, end),
            fates=fates_by_reason(conn, start, end),
            cap_pressure=cap_pressure(conn, end, caps),
            contacts_per_month=contacts_per_month(conn, start, end),
            rates=rates(conn, start, end),
            ratings=survey_ratings(conn),
            open_complaints=complaint_store.open_ones(conn),
            campaigns=campaign_reports(conn),
            results=program_results(conn, start, end),
            unplanned=night_log.unplanned(conn, since=start),
        )


def sends_per_day(conn: Connection, start: dt.date, end: dt.date
                  ) -> list[tuple[dt.date, str, int]]:
    L = contact_ledger.c
    rows = conn.execute(
        select(L.as_of, L.program, func.count())
        .where(L.as_of.between(start, end), L.status == "sent")
        .group_by(L.as_of, L.program).order_by(L.as_of, L.program)).all()
    return [(_date(d), p, int(n)) for d, p, n in rows]


def fates_by_reason(conn: Connection, start: dt.date, end: dt.date) -> list[tuple[str, int]]:
    D = decision_log.c
    rows = conn.execute(
        select(D.fate, func.count()).where(D.as_of.between(start, end)).group_by(D.fate)).all()
    return sorted(((f, int(n)) for f, n in rows), key=lambda r: (-r[1], r[0]))


def cap_pressure(conn: Connection, end: dt.date, caps: Sequence[Any]
                 ) -> list[tuple[str, int, int]]:
    """For each cap (N marketing messages in D days): customers at it on ``end`` (N or more
    counted messages in the D nights up to it) and customers one message below it."""
    L = contact_ledger.c
    out = []
    for cap in caps:
        since = end - dt.timedelta(days=cap.days - 1)
        per = (select(L.customer_id, func.count().label("n"))
               .where(L.as_of.between(since, end), L.kind == "marketing",
                      L.status.in_(COUNTED))
               .group_by(L.customer_id).subquery())
        counts = Counter({int(n): int(c) for n, c in conn.execute(
            select(per.c.n, func.count()).group_by(per.c.n)).all()})
        at = sum(c for n, c in counts.items() if n >= cap.messages)
        near = counts.get(cap.messages - 1, 0) if cap.messages > 1 else 0
        out.append((f"{cap.messages} in {cap.days} days", at, near))
    return out


def contacts_per_month(conn: Connection, start: dt.date, end: dt.date
                       ) -> list[tuple[str, int, int]]:
    """How many customers got 1, 2, 3... messages in each month of the window."""
    L = contact_ledger.c
    first = start.replace(day=1)
    rows = conn.execute(
        select(L.customer_id, L.as_of)
        .where(L.as_of.between(first, end), L.status.in_(("sent", "unknown")))).all()
    per: Counter[tuple[str, str]] = Counter()
    for customer, night in rows:
        per[(_date(night).strftime("%Y-%m"), customer)] += 1
    hist: Counter[tuple[str, int]] = Counter((month, n) for (month, _), n in per.items())
    return sorted((m, n, c) for (m, n), c in hist.items())


def rates(conn: Connection, start: dt.date, end: dt.date) -> Rates:
    """Sent messages of the window and what came back about them: bounces and spam reports
    from the provider's events, unsubscribes from the suppressions (the links and the
    provider's events both land there)."""
    L, E, S = contact_ledger.c, message_events.c, suppressions.c
    sent = int(conn.execute(select(func.count()).where(
        L.as_of.between(start, end), L.status == "sent")).scalar() or 0)
    lo = dt.datetime.combine(start, dt.time(), dt.UTC)
    hi = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), dt.UTC)
    events = dict(conn.execute(
        select(E.event, func.count(func.distinct(E.message_id)))
        .where(E.occurred_at >= lo, E.occurred_at < hi,
               E.event.in_(("delivered", "bounce", "spamreport")))
        .group_by(E.event)).all())
    unsubscribes = int(conn.execute(select(func.count()).where(
        and_(S.reason == "unsubscribed", S.created_at >= lo, S.created_at < hi))).scalar() or 0)
    return Rates(sent=sent, delivered=int(events.get("delivered", 0)),
                 bounces=int(events.get("bounce", 0)), unsubscribes=unsubscribes,
                 spam_reports=int(events.get("spamreport", 0)))


def survey_ratings(conn: Connection) -> list[dict[str, Any]]:
    """Answers, average and low ratings (1-2) per program and per product."""
    out = []
    for by in ("program", "sku"):
        for r in survey.ratings(conn, by=by).itertuples(index=False):
            out.append({"by": by, "name": str(getattr(r, by) or "(none)"),
                        "answers": int(r.answers), "average": float(r.mean_rating),
                        "low": int(r.low_ratings or 0)})
    return out


def campaign_reports(conn: Connection) -> list[dict[str, Any]]:
    """Every campaign's row, newest first, with its form and reports parsed (none before the
    campaigns table exists)."""
    if not inspect(conn).has_table("campaigns"):
        return []
    from tend.store import campaigns

    return [row for name in campaigns.names(conn)
            if (row := campaigns.read(conn, name)) is not None]


def program_results(conn: Connection, start: dt.date, end: dt.date) -> list[dict[str, Any]]:
    """The stored results of the months the window touches (none before any is computed)."""
    from tend.store import kpi

    months = sorted({(start + dt.timedelta(days=i)).strftime("%Y-%m")
                     for i in range((end - start).days + 1)})
    frame = kpi.read(conn, months)
    keep = ["month", "program", "contacted", "held_out", "response_rate",
            "holdout_response_rate", "lift", "lift_low", "lift_high", "note"]
    return [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
            for r in frame[keep].to_dict("records")]


def warnings(d: Dashboard) -> list[str]:
    """What an operator must look at first, as sentences."""
    r = d.rates
    out = [night_log.unplanned_warning(u["as_of"], u["overtaken_by"]) for u in d.unplanned]
    if r.spam_rate >= SPAM_LIMIT:
        out.append(f"spam reports at {r.spam_rate:.2%} of delivered mail: at or over the "
                   f"{SPAM_LIMIT:.1%} limit where mailbox providers block the sender")
    elif r.spam_rate >= SPAM_TARGET:
        out.append(f"spam reports at {r.spam_rate:.2%} of delivered mail: over the "
                   f"{SPAM_TARGET:.1%} target")
    if r.bounce_rate >= BOUNCE_WARNING:
        out.append(f"bounces at {r.bounce_rate:.1%} of sent mail (over {BOUNCE_WARNING:.0%}): "
                   "the address list needs cleaning")
    if d.open_complaints:
        out.append(f"{len(d.open_complaints)} open complaint(s) wait for staff")
    return out


def by_day(sends: Sequence[tuple[dt.date, str, int]]) -> dict[str, dict[dt.date, int]]:
    """program -> night -> sent, for the chart's series."""
    out: dict[str, dict[dt.date, int]] = defaultdict(dict)
    for night, program, n in sends:
        out[program][night] = n
    return dict(out)


def report_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def _date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])
