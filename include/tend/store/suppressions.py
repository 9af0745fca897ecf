"""Suppressions: addresses Tend must not write to (unsubscribed, invalid, complained), until a
suppression is resolved."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import pandas as pd
from sqlalchemy import Connection, literal, select, union

from tend.store import bulk
from tend.store.tables import complaints, suppressions


def active(conn: Connection) -> pd.DataFrame:
    """The unresolved suppressions: ``customer_id``, ``reason``; a customer with an open
    complaint (the ``complaints`` table) appears once with reason ``complaint``."""
    listed = select(suppressions.c.customer_id, suppressions.c.reason).where(
        suppressions.c.resolved_at.is_(None))
    complained = select(complaints.c.customer_id, literal("complaint").label("reason")).where(
        complaints.c.resolved_at.is_(None)).distinct()
    return pd.DataFrame(
        conn.execute(union(listed, complained)).all(), columns=["customer_id", "reason"],
    )


def add(conn: Connection, customer_ids: Iterable[str], *, reason: str, source: str,
        created_at: dt.datetime) -> None:
    """Suppress these customers; one already suppressed for the same reason stays as it was."""
    bulk.insert_ignore(conn, suppressions, [
        {"customer_id": c, "email": None, "reason": reason, "source": source,
         "created_at": created_at} for c in customer_ids
    ])


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
