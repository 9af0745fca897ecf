"""A customer's own choices from the preferences page (pause, fewer emails, no offers, language).

Written by ``tend serve``; read by planning (every choice is honoured) and ``tend why``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from sqlalchemy import Connection, func, select

from tend.store import bulk
from tend.store.tables import contact_ledger, preferences

COLUMNS = ("customer_id", "paused_until", "fewer_emails", "offers_opt_out", "locale")


@dataclass(frozen=True)
class Preferences:
    """One customer's choices; the defaults are what a customer who never chose gets."""

    paused_until: dt.date | None = None
    fewer_emails: bool = False
    offers_opt_out: bool = False
    locale: str | None = None


def load(conn: Connection, customer_id: str) -> Preferences:
    row = conn.execute(select(*(preferences.c[c] for c in COLUMNS[1:]))
                       .where(preferences.c.customer_id == customer_id)).first()
    if row is None:
        return Preferences()
    return Preferences(row.paused_until, bool(row.fewer_emails), bool(row.offers_opt_out),
                       row.locale)


def save(conn: Connection, customer_id: str, prefs: Preferences, *, now: dt.datetime) -> None:
    """Replace the customer's choices with ``prefs``."""
    values = {"paused_until": prefs.paused_until, "fewer_emails": prefs.fewer_emails,
              "offers_opt_out": prefs.offers_opt_out, "locale": prefs.locale, "updated_at": now}
    bulk.upsert(conn, preferences, {"customer_id": customer_id, **values}, key=["customer_id"])


def all_chosen(conn: Connection, customer_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Every customer who chose something (or, given ``customer_ids``, those of them who did:
    the send stage's last look): one row each, columns :data:`COLUMNS`."""
    q = select(*(preferences.c[c] for c in COLUMNS))
    if customer_ids is None:
        rows = conn.execute(q).all()
    else:
        rows = [r for i in range(0, len(customer_ids), 500) for r in conn.execute(
            q.where(preferences.c.customer_id.in_(list(customer_ids[i : i + 500]))))]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def recent_marketing_of_fewer(conn: Connection, as_of: dt.date, days: int,
                              counted: tuple[str, ...]) -> pd.DataFrame:
    """``customer_id``, ``messages``: marketing messages in the ledger within ``days`` of
    ``as_of`` (either side, not counting the night itself, so a replayed night decides as it
    did) for each customer who asked for fewer emails and had any.

    One query joined on the small preferences table: the ledger has no index by customer, and
    its night index serves the window.
    """
    lo = as_of - dt.timedelta(days=days)
    hi = as_of + dt.timedelta(days=days)
    L = contact_ledger
    rows = conn.execute(
        select(L.c.customer_id, func.count().label("messages"))
        .join(preferences, preferences.c.customer_id == L.c.customer_id)
        .where(preferences.c.fewer_emails.is_(True), L.c.kind == "marketing",
               L.c.status.in_(counted), L.c.as_of > lo, L.c.as_of < hi, L.c.as_of != as_of)
        .group_by(L.c.customer_id)).all()
    return pd.DataFrame(rows, columns=["customer_id", "messages"])
