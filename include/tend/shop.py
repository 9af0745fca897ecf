"""Reading the shop's data (read-only) and quarantining rows that cannot be used.

The shop database is the shop's, not ours: Tend reads it through the four names in
``shop_schema`` and never writes to it. Shops map their own tables onto those names with SQL
views, so we cannot trust types: timestamps are read as text and parsed here, and every row that
cannot be used is returned as a quarantine record with a reason instead of crashing the night.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd
from sqlalchemy import String, and_, cast, inspect, select

from tend import shop_schema as s
from tend.config import mask_url
from tend.errors import DataError
from tend.store.db import connect

#: An order total above this is treated as a data error (a price typed in cents, a test order).
ABSURD_TOTAL = 1_000_000.0
_IN_CHUNK = 900  # stay under SQLite's bound-parameter limit


@dataclass(frozen=True)
class Quarantined:
    source: str
    record_key: str | None
    reason: str
    payload: dict[str, object]


def end_of_day(as_of: dt.date) -> dt.datetime:
    """The exclusive upper bound of night ``as_of``: orders before it exist for the night."""
    return dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def require_schema(url: str) -> None:
    """Fail the night with the fix when the shop database lacks Tend's tables or views."""
    have = set(inspect(connect(url)).get_table_names()) | set(
        inspect(connect(url)).get_view_names())
    missing = [t for t in s.metadata.tables if t not in have]
    if missing:
        raise DataError(
            f"the shop database {mask_url(url)} has no {', '.join(missing)}; create views with "
            "these names over the shop's own tables (README: 'Point Tend at your shop'), or load "
            "CSV exports with `tend load-csv`"
        )


def changed_customer_ids(url: str, since: dt.datetime, as_of: dt.date) -> list[str]:
    """Customers with an order in (since, end of as_of]: the only ones whose features move."""
    o = s.orders
    q = (
        select(o.c.customer_id)
        .where(and_(o.c.ordered_at > since, o.c.ordered_at < end_of_day(as_of)))
        .where(o.c.customer_id.is_not(None))
        .distinct()
    )
    with connect(url).connect() as conn:
        return sorted(str(r[0]) for r in conn.execute(q))


def read_orders(
    url: str, as_of: dt.date, customer_ids: Sequence[str] | None = None
) -> tuple[pd.DataFrame, list[Quarantined]]:
    """Orders that exist on night ``as_of`` (all of them, or those of ``customer_ids``).

    Returns clean orders (customer_id, order_id, ordered_at as UTC timestamps, total) and the
    rows that were set aside with a reason. Orders placed after the night are not bad data,
    they simply do not exist yet for it (a replay), so they are left out without a reason.
    """
    o = s.orders
    base = select(
        o.c.order_id,
        o.c.customer_id,
        cast(o.c.ordered_at, String).label("ordered_at"),
        cast(o.c.total, String).label("total"),
    )
    # No time filter in SQL: a shop's view may hold timestamps that do not compare as
    # timestamps (text in SQLite), and a row we never read is a row silently lost. Orders are
    # filtered after parsing, where an unparseable one can be quarantined.
    frames: list[pd.DataFrame] = []
    with connect(url).connect() as conn:
        if customer_ids is None:
            frames.append(pd.DataFrame(conn.execute(base).all(), columns=_ORDER_COLS))
        else:
            for chunk in _chunks(customer_ids, _IN_CHUNK):
                rows = conn.execute(base.where(o.c.customer_id.in_(chunk))).all()
                frames.append(pd.DataFrame(rows, columns=_ORDER_COLS))
        known = _known_customers(conn, customer_ids)
    raw = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=_ORDER_COLS)
    return validate_orders(raw, known, as_of)


_ORDER_COLS = ["order_id", "customer_id", "ordered_at", "total"]


def _known_customers(conn, customer_ids: Sequence[str] | None) -> set[str]:  # type: ignore[no-untyped-def]
    c = s.customers
    if customer_ids is None:
        return {str(r[0]) for r in conn.execute(select(c.c.customer_id))}
    known: set[str] = set()
    for chunk in _chunks(customer_ids, _IN_CHUNK):
        q = select(c.c.customer_id).where(c.c.customer_id.in_(chunk))
        known.update(str(r[0]) for r in conn.execute(q))
    return known


def validate_orders(
    raw: pd.DataFrame, known_customers: set[str], as_of: dt.date
) -> tuple[pd.DataFrame, list[Quarantined]]:
    """Split raw order rows into usable orders and quarantined ones (vectorised)."""
    df = raw.copy()
    df["order_id"] = df["order_id"].astype("string")
    df["customer_id"] = df["customer_id"].astype("string")
    ts = pd.to_datetime(df["ordered_at"], utc=True, errors="coerce", format="mixed")
    total = pd.to_numeric(df["total"], errors="coerce")
    end = pd.Timestamp(end_of_day(as_of))

    reasons = pd.Series(pd.NA, index=df.index, dtype="string")

    def flag(mask: pd.Series, reason: str) -> None:
        reasons.loc[mask.fillna(False).astype(bool) & reasons.isna()] = reason

    flag(df["order_id"].isna() | (df["order_id"].str.strip() == ""), "order without an order_id")
    flag(df["customer_id"].isna() | (df["customer_id"].str.strip() == ""),
         "order without a customer")
    flag(~df["customer_id"].isin(list(known_customers)), "order for an unknown customer")
    flag(ts.isna(), "unparseable ordered_at timestamp")
    flag(total.isna(), "total is not a number")
    flag(total < 0, "negative order total")
    flag(total > ABSURD_TOTAL, f"order total above {ABSURD_TOTAL:,.0f} (absurd amount)")
    dup = df["order_id"].duplicated(keep="first") & reasons.isna()
    flag(dup, "duplicate order_id (the first occurrence was kept)")

    bad = reasons.notna()
    later = (ts >= end).fillna(False) & ~bad
    quarantined = [
        Quarantined(
            source="orders",
            record_key=None if pd.isna(row.order_id) else str(row.order_id),
            reason=str(reason),
            payload={k: (None if pd.isna(v) else str(v)) for k, v in row._asdict().items()
                     if k != "Index"},
        )
        for row, reason in zip(
            df.loc[bad].itertuples(), reasons.loc[bad], strict=True
        )
    ]
    keep = ~bad & ~later
    clean = pd.DataFrame(
        {
            "customer_id": df.loc[keep, "customer_id"].astype(str),
            "order_id": df.loc[keep, "order_id"].astype(str),
            "ordered_at": ts.loc[keep],
            "total": total.loc[keep].astype(float),
        }
    ).reset_index(drop=True)
    return clean, quarantined


def read_customers(url: str, customer_ids: Iterable[str]) -> pd.DataFrame:
    """Contact details and consent of the given customers (the shop's current view of them)."""
    c = s.customers
    cols = [
        c.c.customer_id, c.c.email, c.c.first_name, c.c.last_name, c.c.locale, c.c.timezone,
        c.c.marketing_consent, cast(c.c.consent_at, String).label("consent_at"),
        cast(c.c.unsubscribed_at, String).label("unsubscribed_at"),
    ]
    names = [col.name for col in cols]
    frames = []
    with connect(url).connect() as conn:
        for chunk in _chunks(list(customer_ids), _IN_CHUNK):
            rows = conn.execute(select(*cols).where(c.c.customer_id.in_(chunk))).all()
            frames.append(pd.DataFrame(rows, columns=names))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=names)
    df["customer_id"] = df["customer_id"].astype(str)
    for col in ("consent_at", "unsubscribed_at"):
        df[col] = pd.to_datetime(df[col], utc=True, errors="coerce", format="mixed")
    return df


def _chunks(items: Sequence[str], size: int) -> Iterable[list[str]]:
    items = list(items)
    for i in range(0, len(items), size):
        yield items[i : i + size]
