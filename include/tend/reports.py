"""What a night did, told to people: the night's totals and the story of one customer, and the
daily digest of new complaints to the shop's staff.

Reads the decision log, the contact ledger, the quarantine, the customers' own choices and the
complaints (``tend.store``); called by tend_programs' ``summary`` and ``complaints_digest``
tasks and by ``tend summary`` / ``tend why`` / ``tend complaints digest``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from tend.logs import HIDDEN, table
from tend.store import complaints, ledger
from tend.store import preferences as chosen
from tend.store import suppressions as suppressed
from tend.store.db import connect
from tend.store.tables import contact_ledger, decision_log, ingest_state, quarantine


def nights(store_url: str, limit: int = 5) -> list[dt.date]:
    """The latest nights the store knows of (planned, sent or ingested), newest first."""
    with connect(store_url).connect() as conn:
        found: set[dt.date] = set()
        for t in (decision_log, contact_ledger, quarantine, ingest_state):
            found.update(d for (d,) in conn.execute(
                select(t.c.as_of).distinct().order_by(t.c.as_of.desc()).limit(limit)))
    return sorted(found, reverse=True)[:limit]


def night_known(store_url: str, as_of: dt.date) -> bool:
    """Whether night ``as_of`` left anything in the store (a decision, a message, a
    quarantined row, or the latest ingest)."""
    with connect(store_url).connect() as conn:
        return any(conn.execute(select(t.c.as_of).where(t.c.as_of == as_of).limit(1)).first()
                   for t in (decision_log, contact_ledger, quarantine, ingest_state))

if TYPE_CHECKING:
    from tend.config import ShopSettings
    from tend.delivery.base import DeliveryBackend


def summary_lines(store_url: str, as_of: dt.date, run_id: str | None = None, *,
                  rehearsal: bool = False) -> list[str]:
    """The night's totals: candidates, claims and delivery outcomes, per program and per
    reason a candidate was skipped, and what the ingest quarantined.

    What needs a person comes first, as WARNING lines (unknown sends and the commands that
    settle them, then failed or still waiting ones, templates that failed, bounces and spam
    reports over their thresholds, new complaints). ``run_id``: the run printing it, so a
    replay says what it did itself (usually nothing new) rather than repeat the night's totals
    as if it had sent them. ``rehearsal``: the run went through SendGrid's sandbox, which puts
    every message back to 'claimed', so its waiting messages are said to be that rather than a
    failed send task. The first warnings are the older nights that were ingested, then
    overtaken by this night's ingest before any run planned them (``tend.store.nights``;
    tend_programs plans only the night the store's features are at: docs/operations.md).
    """
    from tend import dashboard
    from tend.store.nights import unplanned, unplanned_warning

    with connect(store_url).connect() as conn:
        fates = conn.execute(
            select(decision_log.c.program, decision_log.c.fate, func.count())
            .where(decision_log.c.as_of == as_of)
            .group_by(decision_log.c.program, decision_log.c.fate)
        ).all()
        statuses = ledger.status_counts(conn, as_of)
        mine = _run_claims(conn, as_of, run_id) if run_id else None
        template_errors = _template_failures(conn, as_of)
        quarantined = conn.execute(
            select(quarantine.c.reason, func.count()).where(quarantine.c.as_of == as_of)
            .group_by(quarantine.c.reason)).all()
        start = dt.datetime.combine(as_of - dt.timedelta(days=1), dt.time(), dt.UTC)
        new_complaints = complaints.opened_between(conn, start, start + dt.timedelta(days=2))
        missed = [r["as_of"] for r in unplanned(conn, overtaken_by=as_of)]
        week = dashboard.rates(conn, as_of - dt.timedelta(days=6), as_of)
        before = dashboard.rates(conn, as_of - dt.timedelta(days=13), as_of - dt.timedelta(days=7))
    candidates = sum(n for _, _, n in fates)
    skipped = Counter()
    for _, fate, n in fates:
        if fate != "claimed":
            skipped[fate] += n
    waiting = statuses.get("claimed", 0) + statuses.get("sending", 0)
    warnings = _warnings(statuses, waiting, template_errors, week, before, len(new_complaints),
                         rehearsal=rehearsal)
    warnings = [*(unplanned_warning(night, as_of) for night in missed), *warnings]
    out = [*(f"WARNING: {w}" for w in warnings), *([""] if warnings else [])]
    out += [f"Tend night {as_of}" + (" (rehearsal: SendGrid sandbox, nothing delivered)"
                                     if rehearsal else "")]
    if mine is not None:
        claimed_here = sum(mine.values())
        if claimed_here:
            out.append(f"  this run ({run_id}) claimed {claimed_here:,} message(s) ("
                       + ", ".join(f"{n:,} {s}" for s, n in sorted(mine.items())) + ")")
        else:
            out.append(f"  this run ({run_id}) claimed nothing new: the night was planned "
                       "before (a replay sends only what is still waiting); the totals below "
                       "are the night's, over all its runs")
    out += [f"  candidates  {candidates:,}",
            f"  claimed     {sum(n for _, f, n in fates if f == 'claimed'):,}",
            f"  sent        {statuses.get('sent', 0):,}",
            f"  failed      {statuses.get('failed', 0):,}",
            f"  unknown     {statuses.get('unknown', 0):,}",
            f"  waiting     {waiting:,}",
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
    if new_complaints:
        out += ["", f"WARNING: {len(new_complaints)} new complaint(s), still open; marketing to "
                    "these customers is paused until staff resolve them "
                    "(tend complaints resolve ID --note ...)",
                *complaint_table(new_complaints)]
    if statuses.get("unknown"):  # first, so the operator reading the log at 7 am sees it
        out = [*ledger.unknown_warning_lines(as_of, statuses["unknown"]), "", *out]
    return out


def _run_claims(conn: Any, as_of: dt.date, run_id: str) -> Counter[str]:
    """The night's messages claimed by run ``run_id``, by status."""
    L = contact_ledger.c
    return Counter({s: int(n) for s, n in conn.execute(
        select(L.status, func.count()).where(L.as_of == as_of, L.run_id == run_id)
        .group_by(L.status))})


def _template_failures(conn: Any, as_of: dt.date) -> list[tuple[str, int]]:
    """Programs whose messages failed tonight because their template did not render."""
    L = contact_ledger.c
    return [(p, int(n)) for p, n in conn.execute(
        select(L.program, func.count()).where(
            L.as_of == as_of, L.status == "failed",
            func.lower(L.error).like("%template%")).group_by(L.program))]


def _warnings(statuses: Mapping[str, int], waiting: int, template_errors: list[tuple[str, int]],
              week: Any, before: Any, new_complaints: int, *,
              rehearsal: bool = False) -> list[str]:
    from tend.dashboard import BOUNCE_WARNING, SPAM_LIMIT, SPAM_TARGET

    out = []
    if statuses.get("failed", 0):
        out.append(f"{statuses['failed']:,} message(s) failed; `tend why CUSTOMER` shows each "
                   "error")
    # 'unknown' messages lead the summary with their own warning (ledger.unknown_warning_lines)
    if waiting and rehearsal:
        out.append(f"{waiting:,} message(s) not sent: this run was a rehearsal (SendGrid "
                   "sandbox), which delivers nothing and puts every message back to "
                   "'claimed'; a real run of this night sends them (docs/operations.md)")
    elif waiting:
        out.append(f"{waiting:,} message(s) still waiting to be sent: a send task failed or "
                   "has not run; clear it in Airflow to send them")
    for program, n in template_errors:
        out.append(f"template of {program} failed for {n:,} message(s): run "
                   "`tend templates check`")
    if week.spam_rate >= SPAM_TARGET:
        trend = "rising" if week.spam_rate > before.spam_rate else "steady"
        limit = SPAM_LIMIT if week.spam_rate >= SPAM_LIMIT else SPAM_TARGET
        out.append(f"spam reports at {week.spam_rate:.2%} of delivered mail over 7 days "
                   f"({trend}; {before.spam_rate:.2%} the week before), over the {limit:.1%} "
                   "threshold mailbox providers watch")
    if week.bounce_rate >= BOUNCE_WARNING:
        out.append(f"bounces at {week.bounce_rate:.1%} of sent mail over 7 days "
                   f"({week.bounces:,}): the address list needs cleaning")
    if new_complaints:
        out.append(f"{new_complaints} new complaint(s) (listed below)")
    return out


def night_problems(store_url: str, as_of: dt.date) -> list[str]:
    """Why the night's run must not show green: its own messages that failed, are unknown or
    still wait to be sent (a campaign's are its own run's business). A message the send
    stage stopped because the customer opted out after planning is no problem."""
    L = contact_ledger.c
    with connect(store_url).connect() as conn:
        counts = dict(conn.execute(
            select(L.status, func.count()).where(
                L.as_of == as_of, ledger.owned_by(None),
                L.status.in_(("failed", "unknown", "claimed", "sending")),
                ~((L.status == "failed") & ledger.stopped_after_planning(L.error)))
            .group_by(L.status)).all())
    waiting = counts.get("claimed", 0) + counts.get("sending", 0)
    return [f"{n:,} {what}" for n, what in (
        (counts.get("failed", 0), "failed"), (counts.get("unknown", 0), "unknown"),
        (waiting, "still waiting to be sent")) if n]


def complaint_table(rows: list[Mapping[str, Any]]) -> list[str]:
    """Complaints as a plain table (no email address: staff look the customer up by id)."""
    return table(["id", "opened", "customer", "source", "rating", "comment"], [
        (r["id"], _stamp(r["opened_at"]), r["customer_id"], r["source"],
         "" if r["rating"] is None else r["rating"], _short(r["comment"]))
        for r in rows])


def _stamp(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return str(value)[:16]


def visible(text: str) -> str:
    """``text`` with its hidden characters (``tend.logs.HIDDEN``) written out as
    ``\\x1b``-style escapes: a customer's comment is printed on staff's terminals and in their
    mail, where an escape sequence could rewrite or hide other lines."""
    return HIDDEN.sub(lambda m: _escaped(m.group()), text)


def _escaped(ch: str) -> str:
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"


def _short(text: str | None, limit: int = 60) -> str:
    if not text:
        return ""
    flat = visible(" ".join(text.split()))
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def choices_lines(conn: Any, customer_id: str) -> list[str]:
    """What the customer chose or caused that planning honours: their preferences, their own
    unsubscribe, their open complaints."""
    out = []
    prefs = chosen.load(conn, customer_id)
    picked = [text for on, text in (
        (prefs.paused_until is not None, f"marketing paused until {prefs.paused_until}"),
        (prefs.fewer_emails, "fewer emails"),
        (prefs.offers_opt_out, "no offers, reminders only"),
        (prefs.locale is not None, f"language {prefs.locale}")) if on]
    if picked:
        out.append(f"  preferences page: {', '.join(picked)}")
    since = suppressed.unsubscribed_since(conn, customer_id)
    if since is not None:
        out.append(f"  unsubscribed on {_stamp(since)}")
    for c in complaints.open_ones(conn, customer_id):
        out.append(f"  open complaint #{c['id']} since {_stamp(c['opened_at'])} "
                   f"({c['source']}): marketing paused")
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
        choices = choices_lines(conn, customer_id)
    if not decisions:
        when = f" on {as_of}" if as_of else ""
        return [f"customer {customer_id}: no decisions recorded{when} "
                "(no signal fired for them, or the night has not run)", *choices]
    out = [f"customer {customer_id}", *choices]
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


def send_complaint_digest(store_url: str, *, backend: DeliveryBackend, settings: ShopSettings,
                          staff_email: str, now: dt.datetime | None = None) -> int:
    """Email the staff every open complaint no digest has carried yet; returns how many.

    Sends first, then records ``notified_at``: a crash in between repeats a digest rather than
    losing a complaint (staff can read a second copy; an unhappy customer left unanswered is
    the worse failure). A refused digest raises and marks nothing, so the next run retries.
    """
    from tend.delivery.base import DeliveryStatus, OutgoingMessage
    from tend.errors import DeliveryError

    now = now or dt.datetime.now(dt.UTC)
    engine = connect(store_url)
    with engine.connect() as conn:
        pending = complaints.to_notify(conn)
    if not pending:
        return 0
    ids = [int(r["id"]) for r in pending]
    n = len(pending)
    subject = f"{settings.name}: {n} new customer complaint{'s' if n > 1 else ''}"
    intro = (f"{n} customer complaint{'s' if n > 1 else ''} opened since the last digest. "
             "Marketing to these customers is paused until you resolve the complaint:\n"
             "    tend complaints resolve ID --note \"what you did\"")
    text = "\n".join([intro, "", *complaint_table(pending), "", *(
        f"#{r['id']} ({r['customer_id']}): {visible(r['comment'])}" for r in pending
        if r["comment"])])
    body = "".join(
        f"<tr><td>#{r['id']}</td><td>{html.escape(_stamp(r['opened_at']))}</td>"
        f"<td>{html.escape(str(r['customer_id']))}</td><td>{html.escape(r['source'])}</td>"
        f"<td>{'' if r['rating'] is None else r['rating']}</td>"
        f"<td>{html.escape(r['comment'] or '')}</td></tr>" for r in pending)
    markup = (f"<p>{html.escape(intro).replace(chr(10), '<br>')}</p><table border=\"1\" "
              "cellpadding=\"4\"><tr><th>id</th><th>opened</th><th>customer</th>"
              f"<th>source</th><th>rating</th><th>comment</th></tr>{body}</table>")
    digest_id = "complaints-" + hashlib.sha256(
        ",".join(map(str, ids)).encode()).hexdigest()[:24]
    (result,) = backend.send([OutgoingMessage(
        message_id=digest_id, to_email=staff_email, to_name=None,
        from_email=settings.from_email, from_name=settings.from_name, reply_to=None,
        subject=subject, text=text, html=markup, headers={},
        categories=("complaints_digest",), custom_args={"tend_message_id": digest_id})])
    if result.status == DeliveryStatus.FAILED:
        raise DeliveryError(f"the complaints digest to {staff_email} was refused by the "
                            f"{backend.name} backend: {result.error}; fix the delivery "
                            "settings or TEND_STAFF_EMAIL and run `tend complaints digest` again")
    with engine.begin() as conn:
        complaints.mark_notified(conn, ids, now=now)
    return n
