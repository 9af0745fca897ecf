"""What a night did, told to people: the night's totals and the story of one customer.

Reads the decision log, the contact ledger and the quarantine (``tend.store``); called by
tend_programs' ``summary`` task and by ``tend summary`` / ``tend why``.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter

from sqlalchemy import func, select

from tend.logs import table
from tend.store import ledger
from tend.store.db import connect
from tend.store.tables import contact_ledger, decision_log, quarantine


def summary_lines(store_url: str, as_of: dt.date) -> list[str]:
    """The night's totals: candidates, claims and delivery outcomes, per program and per
    reason a candidate was skipped, and what the ingest quarantined."""
    with connect(store_url).connect() as conn:
        fates = conn.execute(
            select(decision_log.c.program, decision_log.c.fate, func.count())
            .where(decision_log.c.as_of == as_of)
            .group_by(decision_log.c.program, decision_log.c.fate)
        ).all()
        statuses = ledger.status_counts(conn, as_of)
        quarantined = conn.execute(
            select(quarantine.c.reason, func.count()).where(quarantine.c.as_of == as_of)
            .group_by(quarantine.c.reason)).all()
    candidates = sum(n for _, _, n in fates)
    skipped = Counter()
    for _, fate, n in fates:
        if fate != "claimed":
            skipped[fate] += n
    out = [f"Tend night {as_of}",
           f"  candidates  {candidates:,}",
           f"  claimed     {sum(n for _, f, n in fates if f == 'claimed'):,}",
           f"  sent        {statuses.get('sent', 0):,}",
           f"  failed      {statuses.get('failed', 0):,}",
           f"  unknown     {statuses.get('unknown', 0):,}",
           f"  waiting     {statuses.get('claimed', 0) + statuses.get('sending', 0):,}",
           f"  skipped     {sum(skipped.values()):,}"]
    by_program: dict[str, Counter[str]] = {}
    for program, fate, n in fates:
        by_program.setdefault(program, Counter())["claimed" if fate == "claimed" else
                                                  "skipped"] += n
    out += ["", *table(["program", "claimed", "skipped"],
                       [(p, c["claimed"], c["skipped"]) for p, c in sorted(by_program.items())])]
    out += ["", *table(["skipped because", "customers"], sorted(skipped.items(),
                                                                key=lambda kv: -kv[1]))]
    if quarantined:
        out += ["", *table(["quarantined because", "rows"], [tuple(r) for r in quarantined])]
    if statuses.get("unknown"):  # first, so the operator reading the log at 7 am sees it
        out = [*ledger.unknown_warning_lines(as_of, statuses["unknown"]), "", *out]
    return out


def why_lines(store_url: str, customer_id: str, as_of: dt.date | None = None) -> list[str]:
    """The story of one customer: every decision and message, newest night first."""
    with connect(store_url).connect() as conn:
        q = select(decision_log).where(decision_log.c.customer_id == customer_id)
        if as_of is not None:
            q = q.where(decision_log.c.as_of == as_of)
        decisions = conn.execute(q.order_by(decision_log.c.as_of.desc())).mappings().all()
        # By primary key: the ledger has no index by customer (each would cost every claim).
        ids = sorted({d["message_id"] for d in decisions if d["message_id"]})
        msgs = {m["message_id"]: m for i in range(0, len(ids), 500) for m in conn.execute(
            select(contact_ledger).where(contact_ledger.c.message_id.in_(ids[i : i + 500]))
        ).mappings()}
    if not decisions:
        when = f" on {as_of}" if as_of else ""
        return [f"customer {customer_id}: no decisions recorded{when} "
                "(no signal fired for them, or the night has not run)"]
    out = [f"customer {customer_id}"]
    for d in decisions:
        line = f"  {d['as_of']}  {d['program']:<12} {d['fate']:<28} {d['reason']}"
        m = msgs.get(d["message_id"]) if d["message_id"] else None
        if m:
            line += f"\n{'':16}message {m['message_id']}: {m['status']}"
            if m["provider_id"]:
                line += f" ({m['provider_id']})"
            if m["error"]:
                line += f" — {m['error']}"
        out.append(line)
    return out
