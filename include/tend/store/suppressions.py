"""Suppressions: addresses Tend must not write to (unsubscribed, invalid, complained), until a
suppression is resolved.

Written by the nightly planning (invalid addresses), ``tend serve`` (unsubscribes, SendGrid's
bounces and spam reports) and the daily pull of SendGrid's suppression lists; read by the
planning, by the send stage just before each chunk leaves, and by ``tend suppressions export``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
from sqlalchemy import Connection, literal, null, select, union

from tend.store import bulk
from tend.store.tables import complaints, message_events, suppressions

__all__ = ["active", "add", "add_rows", "blocked", "listed"]


def active(conn: Connection) -> pd.DataFrame:
    """The unresolved suppressions: ``customer_id``, ``reason``, ``email`` (the address it was
    filed for, when known: SendGrid's events and lists carry it, a click on Tend's own pages
    does not); a customer with an open complaint (the ``complaints`` table) appears once
    with reason ``complaint``."""
    return pd.DataFrame(conn.execute(_active_query()).all(),
                        columns=["customer_id", "reason", "email"])


def _active_query(customer_ids: Sequence[str] | None = None) -> Any:
    listed_q = select(suppressions.c.customer_id, suppressions.c.reason,
                      suppressions.c.email).where(suppressions.c.resolved_at.is_(None))
    complained = select(complaints.c.customer_id, literal("complaint").label("reason"),
                        null().label("email")).where(complaints.c.resolved_at.is_(None))
    if customer_ids is not None:
        listed_q = listed_q.where(suppressions.c.customer_id.in_(list(customer_ids)))
        complained = complained.where(complaints.c.customer_id.in_(list(customer_ids)))
    return union(listed_q, complained)


def add(conn: Connection, customer_ids: Iterable[str], *, reason: str, source: str,
        created_at: dt.datetime) -> None:
    """Suppress these customers; one already suppressed for the same reason stays as it was."""
    add_rows(conn, [{"customer_id": c, "email": None, "reason": reason, "source": source,
                     "created_at": created_at} for c in customer_ids])


# -- the customer's own unsubscribe (tend serve's unsubscribe page) ---------------------------


def unsubscribe(conn: Connection, customer_id: str, *, source: str,
                now: dt.datetime) -> None:
    """Suppress ``customer_id`` as unsubscribed; an undone unsubscribe (resolved) is reopened,
    one still in force keeps its first date (a second click changes nothing)."""
    reopened = conn.execute(suppressions.update().where(
        suppressions.c.customer_id == customer_id, suppressions.c.reason == "unsubscribed",
        suppressions.c.resolved_at.is_not(None),
    ).values(resolved_at=None, created_at=now, source=source)).rowcount
    if not reopened:
        add(conn, [customer_id], reason="unsubscribed", source=source, created_at=now)


def resubscribe(conn: Connection, customer_id: str, *, now: dt.datetime) -> None:
    """Undo the customer's own unsubscribe (the page's "undo"). Other reasons (a bounce, a
    spam report) are not the customer's to undo here and stay."""
    conn.execute(suppressions.update().where(
        suppressions.c.customer_id == customer_id, suppressions.c.reason == "unsubscribed",
        suppressions.c.resolved_at.is_(None),
    ).values(resolved_at=now))


def unsubscribed_since(conn: Connection, customer_id: str) -> dt.datetime | None:
    """When the customer's unsubscribe in force was recorded, None when there is none."""
    return conn.execute(select(suppressions.c.created_at).where(
        suppressions.c.customer_id == customer_id, suppressions.c.reason == "unsubscribed",
        suppressions.c.resolved_at.is_(None))).scalar()


def add_rows(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert-or-ignore rows of (customer_id, email, reason, source, created_at)."""
    bulk.insert_ignore(conn, suppressions, rows)


def blocked(conn: Connection, messages: Sequence[tuple[str, str, str]]) -> dict[str, str]:
    """Of ``(message_id, customer_id, kind)``, the messages an active suppression now forbids,
    with the reason: the send stage's last look before a chunk leaves, so an unsubscribe or a
    bounce that arrived after tonight's planning still stops the message."""
    from tend.programs.consent import SUPPRESSION_SCOPE

    if not messages:
        return {}
    held: dict[str, set[str]] = {}
    customers = sorted({c for _, c, _ in messages})
    for i in range(0, len(customers), 500):
        for customer_id, reason, _ in conn.execute(_active_query(customers[i : i + 500])):
            held.setdefault(str(customer_id), set()).add(str(reason))
    out: dict[str, str] = {}
    for message_id, customer_id, kind in messages:
        for reason, kinds in SUPPRESSION_SCOPE.items():
            if kind in kinds and reason in held.get(customer_id, ()):
                out[message_id] = reason
                break
    return out


def listed(conn: Connection) -> pd.DataFrame:
    """The active suppression list as the shop mirrors it: ``customer_id``, ``email``,
    ``reason``, ``since`` (the earliest time each customer was suppressed for that reason).
    Open complaints are not listed: they pause marketing only until staff answer."""
    s = suppressions
    rows = conn.execute(select(s.c.customer_id, s.c.email, s.c.reason, s.c.created_at)
                        .where(s.c.resolved_at.is_(None), s.c.reason != "complaint")
                        .order_by(s.c.customer_id, s.c.reason)).all()
    return pd.DataFrame(rows, columns=["customer_id", "email", "reason", "since"])


#: Suppression reasons that mean the customer asked for less mail (tend.results counts them).
OPT_OUT_REASONS = ("unsubscribed", "spam_report")
#: SendGrid events that mean the same.
OPT_OUT_EVENTS = ("unsubscribe", "group_unsubscribe", "spamreport")


def opt_outs(conn: Connection, since: dt.datetime) -> pd.DataFrame:
    """Unsubscribes and complaints recorded at or after ``since``, from the suppressions,
    complaints and message_events tables: customer_id, message_id (None when unknown), kind
    (``unsubscribe`` or ``complaint``), at. A customer may appear in several tables for one act
    (an unsubscribe click and its SendGrid event): counting is per customer, never per row."""
    sup = select(suppressions.c.customer_id, literal(None).label("message_id"),
                 suppressions.c.reason, suppressions.c.created_at).where(
        suppressions.c.reason.in_(OPT_OUT_REASONS), suppressions.c.created_at >= since)
    comp = select(complaints.c.customer_id, complaints.c.message_id,
                  literal("complaint").label("reason"), complaints.c.opened_at).where(
        complaints.c.opened_at >= since)
    ev = select(message_events.c.customer_id, message_events.c.message_id,
                message_events.c.event, message_events.c.occurred_at).where(
        message_events.c.event.in_(OPT_OUT_EVENTS), message_events.c.occurred_at >= since)
    cols = ["customer_id", "message_id", "reason", "at"]
    frame = pd.DataFrame([r for q in (sup, comp, ev) for r in conn.execute(q).all()],
                         columns=cols)
    frame["kind"] = frame["reason"].map(
        lambda r: "complaint" if r in ("complaint", "spam_report", "spamreport")
        else "unsubscribe")
    frame["at"] = pd.to_datetime(frame["at"], utc=True, format="mixed")
    frame["message_id"] = frame["message_id"].astype(object).where(frame["message_id"].notna(),
                                                                   None)
    return frame[["customer_id", "message_id", "kind", "at"]]


# -- erased customers (tend.store.erasure) ------------------------------------------------------

#: The reason of a suppression that holds only a keyed hash of an erased customer's address.
ERASED = "erased"
ERASED_PREFIX = "hmac-sha256:"


def email_key(email: str, secret: str) -> str:
    """A keyed hash of an address (case and surrounding space ignored): recognises it again
    without keeping it, and cannot be reversed or recomputed without the secret."""
    import hashlib
    import hmac

    digest = hmac.new(secret.encode(), email.strip().lower().encode(), hashlib.sha256)
    return ERASED_PREFIX + digest.hexdigest()


def pseudonym(customer_id: str, secret: str) -> str:
    """What replaces an erased customer's id in the rows kept for the night's totals."""
    import hashlib
    import hmac

    return "erased:" + hmac.new(secret.encode(), customer_id.encode(),
                                hashlib.sha256).hexdigest()[:40]


def add_erased(conn: Connection, emails: Iterable[str], *, secret: str,
               created_at: dt.datetime) -> int:
    """Suppress these addresses by their keyed hash only; how many are held."""
    keys = sorted({email_key(e, secret) for e in emails if e and e.strip()})
    bulk.insert_ignore(conn, suppressions, [
        {"customer_id": "erased:" + k[len(ERASED_PREFIX):][:40], "email": k, "reason": ERASED,
         "source": "tend forget", "created_at": created_at} for k in keys])
    return len(keys)


def erased(conn: Connection, customers: pd.DataFrame, secret: str) -> pd.DataFrame:
    """``customer_id``, ``reason`` ("erased") for the shop's customers whose address was
    erased (``customers``: customer_id, email): they are never contacted again."""
    keys = set(conn.execute(select(suppressions.c.email).where(
        suppressions.c.reason == ERASED)).scalars())
    if not keys or customers.empty:
        return pd.DataFrame(columns=["customer_id", "reason"])
    hit = customers["email"].map(lambda e: isinstance(e, str) and email_key(e, secret) in keys)
    ids = customers.loc[hit.astype(bool), "customer_id"].drop_duplicates()
    return pd.DataFrame({"customer_id": ids.to_numpy(), "reason": ERASED})
