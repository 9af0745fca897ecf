"""What goes back to the shop: its customers' opt-outs and tonight's vouchers, as CSV files.

The shop's own platform sends mail too (receipts, its newsletters) and must honour the same
opt-outs: ``suppressions_csv`` lists them. A voucher in an email is a promise the checkout must
keep: ``vouchers_csv`` lists the codes in one night's messages, to import as discount codes
(docs/sendgrid-events.md has the Shopify and WooCommerce steps). Called by
``tend suppressions export`` and ``tend vouchers export``.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tend.shop.read import customer_emails
from tend.store import ledger, suppressions
from tend.store.db import connect
from tend.store.tables import contact_ledger

__all__ = ["SUPPRESSION_COLUMNS", "VOUCHER_COLUMNS", "suppressions_csv", "vouchers_csv"]

SUPPRESSION_COLUMNS = ("customer_id", "email", "reason", "since")
VOUCHER_COLUMNS = ("code", "customer_id", "amount", "percent", "currency", "valid_until",
                   "program")
#: Messages whose voucher the customer has, or will have once the night's sending ends (an
#: ``unknown`` one may have arrived): only ``failed`` ones certainly did not.
_VOUCHER_STATUSES = ("claimed", "sending", "sent", "unknown")


def suppressions_csv(store_url: str, shop_url: str, out: Path) -> int:
    """Write the active suppression list (one row per customer, reason and address; the
    addresses from the shop when Tend did not record one, every one the shop holds for the
    customer, empty when it holds none); return the number of rows."""
    with connect(store_url).connect() as conn:
        listed = suppressions.listed(conn)
    missing = listed.loc[listed["email"].isna(), "customer_id"].unique().tolist()
    found = customer_emails(shop_url, missing) if missing else {}

    def rows() -> Iterator[list[str]]:
        for r in listed.itertuples(index=False):
            since = _iso(r.since)
            emails = [r.email] if isinstance(r.email, str) and r.email else \
                found.get(str(r.customer_id)) or [""]
            for email in emails:
                yield [r.customer_id, email, r.reason, since]

    return _write(out, SUPPRESSION_COLUMNS, rows())


def vouchers_csv(store_url: str, as_of: dt.date, out: Path) -> int:
    """Write the vouchers of night ``as_of``'s messages (not those that failed), read from the
    render contexts the claim stored; return the number of rows."""
    q = (select(contact_ledger.c.message_id, contact_ledger.c.customer_id,
                contact_ledger.c.program, contact_ledger.c.batch_id)
         .where(contact_ledger.c.as_of == as_of,
                contact_ledger.c.status.in_(_VOUCHER_STATUSES))
         .order_by(contact_ledger.c.batch_id, contact_ledger.c.message_id))
    rows: list[list[Any]] = []
    with connect(store_url).connect() as conn:
        by_batch: dict[int, list[Any]] = {}
        for r in conn.execute(q):
            by_batch.setdefault(int(r.batch_id), []).append(r)
        for batch_id, messages in by_batch.items():
            contexts = ledger.batch_contexts(conn, as_of, batch_id)
            for m in messages:
                raw = contexts.get(m.message_id)
                offer = json.loads(raw).get("offer") if raw else None
                if not isinstance(offer, dict) or not offer.get("code"):
                    continue
                percent = offer.get("kind") == "percent"
                rows.append([offer["code"], m.customer_id,
                             "" if percent else offer.get("amount"),
                             offer.get("amount") if percent else "",
                             offer.get("currency") or "", offer.get("expires_on") or "",
                             m.program])
    return _write(out, VOUCHER_COLUMNS, rows)


def _iso(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)  # SQLite gives stored UTC times back naive
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _write(out: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Write the CSV next to ``out`` and rename it into place: a reader never sees half a
    file, and a failed export leaves the previous one."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    n = 0
    try:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            for row in rows:
                w.writerow(row)
                n += 1
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return n
