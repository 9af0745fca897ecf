"""Reading the shop's data (read-only) and quarantining rows that cannot be used.

The shop database is the shop's, not ours: Tend reads it through the four names in
``tend.shop.schema`` and never writes to it. Shops map their own tables onto those names with
SQL views, so we cannot trust types: timestamps are read as text and parsed by ``columns``, and
every row that cannot be used is returned as a quarantine record with a reason instead of
crashing the night.
The checks are ``screen``'s; a SQLite shop is read by the fast path of ``sqlite_fast``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from sqlalchemy import Engine, String, and_, cast, func, inspect, select

from tend.config import mask_url, sqlite_file
from tend.errors import ConfigError, DataError
from tend.shop import rules
from tend.shop import schema as s
from tend.shop.columns import _NAT, _arrow_text, _missing, _parse_ms, _parse_number
from tend.shop.screen import (
    _ORDER_COLS,
    History,
    Quarantined,
    _Checks,
    _empty_lines,
    _line_part,
    _LineMatcher,
    _screen_order_part,
    _screen_orders,
    _Screened,
    end_of_day,
    quarantine_records,
    usable_ids,
)
from tend.shop.sqlite_fast import _read_sqlite_fast
from tend.store.db import connect, decode_lenient


def _shop_engine(url: str) -> Engine:
    """The shop's engine: text that is not valid UTF-8 in a SQLite shop reads with U+FFFD in
    place of the bad bytes (then fails the rules like any odd text) instead of failing the
    night. A SQLite shop that is not there is an error, not a new empty file left behind."""
    path = sqlite_file(url)
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"no shop database at {path}: fix the path (--db or TEND_SHOP_URL), "
                          "or make the demo shop with `tend demo-data`")
    return connect(url, lenient_text=path is not None)


_IN_CHUNK = 900  # stay under SQLite's bound-parameter limit
_log = logging.getLogger("tend")


def require_schema(url: str) -> None:
    """Fail the night with the fix when the shop database lacks Tend's tables or views."""
    have = set(inspect(_shop_engine(url)).get_table_names()) | set(
        inspect(_shop_engine(url)).get_view_names())
    missing = [t for t in s.metadata.tables if t not in have]
    if missing:
        raise DataError(
            f"the shop database {mask_url(url)} has no {', '.join(missing)}; create views with "
            "these names over the shop's own tables (docs/shop-data.md, 'Point Tend at your "
            "shop'), or load CSV exports with `tend load-csv`"
        )


def changed_customer_ids(url: str, since: dt.datetime, as_of: dt.date) -> list[str]:
    """Customers with an order in (since, end of as_of]: the only ones whose features move.

    A SQLite shop is asked the same statement through a read-only connection of its own: the
    engine's connection would take the shop's write lock (BEGIN IMMEDIATE) and costs more to
    set up than the query (the ordered_at index, a table lookup per order) takes.
    """
    o = s.orders
    q = (
        select(o.c.customer_id)
        .where(and_(o.c.ordered_at > since, o.c.ordered_at < end_of_day(as_of)))
        .where(o.c.customer_id.is_not(None))
        .distinct()
    )
    path = sqlite_file(url)
    if path is not None:
        import sqlite3

        from sqlalchemy.dialects import sqlite

        # the bounds written as SQLAlchemy stores them (its literal is its bound value)
        sql = str(q.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
        try:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            con.text_factory = decode_lenient
            try:
                con.execute("PRAGMA busy_timeout = 60000")
                return sorted(str(r[0]) for r in con.execute(sql))
            finally:
                con.close()
        except sqlite3.Error as exc:
            _log.warning("read-only SQLite query failed (%s); asking through the engine", exc)
    with _shop_engine(url).connect() as conn:
        return sorted(str(r[0]) for r in conn.execute(q))


def read_orders(
    url: str, as_of: dt.date, customer_ids: Sequence[str] | None = None,
    *, now: dt.datetime | None = None,
) -> tuple[pd.DataFrame, list[Quarantined]]:
    """Orders that exist on night ``as_of`` (all of them, or those of ``customer_ids``).

    Returns clean orders (customer_id, order_id, ordered_at as UTC timestamps, total) and the
    rows that were set aside with a reason. Orders placed after the night are not bad data,
    they simply do not exist yet for it (a replay), so they are left out without a reason;
    orders dated after the run's own date (wall clock) are quarantined.
    """
    h = read_history(url, as_of, customer_ids, now=now, lines=False)
    return h.orders, h.quarantined


def read_history(
    url: str, as_of: dt.date, customer_ids: Sequence[str] | None = None,
    *, now: dt.datetime | None = None, lines: bool = True,
) -> History:
    """Orders and order lines of night ``as_of``, validated (see ``read_orders``).

    A SQLite shop takes a columnar fast path (ADBC into Arrow, in two threads) that returns
    exactly what the generic SQLAlchemy path returns: both hand the same Arrow columns to the
    same checks (``_screen_order_part``, ``_screen_orders``, ``_line_part``, ``_LineMatcher``),
    and rows the fast path cannot type are re-read as text and parsed like the generic path
    parses everything.
    """
    if sqlite_file(url) is not None:
        try:
            return _read_sqlite_fast(url, as_of, now=now, lines=lines, customer_ids=customer_ids)
        except ImportError:
            pass
        except Exception as exc:  # any driver surprise: take the generic path
            _log.warning("fast SQLite read failed (%s: %s); reading row by row",
                         exc.__class__.__name__, exc)
    return _read_generic(url, as_of, customer_ids, now=now, lines=lines)


_LINE_COLS = ["order_id", "sku", "quantity"]


def _read_generic(url: str, as_of: dt.date, customer_ids: Sequence[str] | None, *,
                  now: dt.datetime | None, lines: bool) -> History:
    o, ln = s.orders, s.order_lines
    # Every column as text, as the fast path reads them (a shop's view may hold any type).
    base = select(
        cast(o.c.order_id, String).label("order_id"),
        cast(o.c.customer_id, String).label("customer_id"),
        cast(o.c.ordered_at, String).label("ordered_at"),
        cast(o.c.total, String).label("total"),
    )
    line_q = select(cast(ln.c.order_id, String).label("order_id"),
                    cast(ln.c.sku, String).label("sku"),
                    cast(ln.c.quantity, String).label("quantity"))
    # No time filter in SQL: a shop's view may hold timestamps that do not compare as
    # timestamps (text in SQLite), and a row we never read is a row silently lost. Orders are
    # filtered after parsing, where an unparseable one can be quarantined.
    frames: list[pd.DataFrame] = []
    line_frames: list[pd.DataFrame] = []
    with _shop_engine(url).connect() as conn:
        if customer_ids is None:
            frames.append(pd.DataFrame(conn.execute(base).all(), columns=_ORDER_COLS))
            if lines:
                line_frames.append(pd.DataFrame(conn.execute(line_q).all(), columns=_LINE_COLS))
        else:
            for chunk in _chunks(customer_ids, _IN_CHUNK):
                rows = conn.execute(base.where(o.c.customer_id.in_(chunk))).all()
                frames.append(pd.DataFrame(rows, columns=_ORDER_COLS))
                if lines:
                    q = line_q.join_from(ln, o, o.c.order_id == ln.c.order_id).where(
                        o.c.customer_id.in_(chunk))
                    line_frames.append(pd.DataFrame(conn.execute(q).all(), columns=_LINE_COLS))
        known = _known_customers(conn, customer_ids)
        skus = [str(r[0]) for r in conn.execute(select(cast(s.products.c.sku, String)))
                if r[0] is not None] if lines else []
    raw = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=_ORDER_COLS)
    screened = _screen_raw_orders(raw, known, as_of, now)
    history = History(screened.orders, _empty_lines(), screened.quarantined, len(raw))
    if lines:
        raw_lines = (pd.concat(line_frames, ignore_index=True) if line_frames
                     else pd.DataFrame(columns=_LINE_COLS))
        known_skus = usable_ids(pa.array(sorted(set(skus)), pa.string()), "products", "sku")
        matcher = _LineMatcher(screened, known_skus)
        matcher.add(_line_part(_arrow_text(raw_lines["order_id"]), _arrow_text(raw_lines["sku"]),
                               _parse_number(raw_lines["quantity"]), known_skus))
        history.lines, bad_lines = matcher.finish()
        history.quarantined += bad_lines
    return history


def order_rows_hint(url: str) -> int:
    """About how many order rows a SQLite shop holds (its largest rowid; no count), 0 when it
    cannot tell cheaply (another database, a view)."""
    path = sqlite_file(url)
    if path is None:
        return 0
    import sqlite3

    try:  # closed at once, not when the garbage collector gets to it (see _read_sqlite_fast)
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
            return int(con.execute("SELECT max(rowid) FROM orders").fetchone()[0] or 0)
    except sqlite3.Error:
        return 0


def _known_customers(conn, customer_ids: Sequence[str] | None) -> set[str]:  # type: ignore[no-untyped-def]
    c = s.customers
    if customer_ids is None:
        return {str(r[0]) for r in conn.execute(select(cast(c.c.customer_id, String)))
                if r[0] is not None}
    known: set[str] = set()
    for chunk in _chunks(customer_ids, _IN_CHUNK):
        q = select(cast(c.c.customer_id, String)).where(c.c.customer_id.in_(chunk))
        known.update(str(r[0]) for r in conn.execute(q) if r[0] is not None)
    return known


def validate_orders(
    raw: pd.DataFrame, known_customers: Iterable[str], as_of: dt.date,
    *, now: dt.datetime | None = None,
) -> tuple[pd.DataFrame, list[Quarantined]]:
    """Split raw order rows (text as read) into usable orders and quarantined ones (vectorised;
    the checks every reading path shares, see ``_screen_order_part``)."""
    screened = _screen_raw_orders(raw, {str(c) for c in known_customers}, as_of, now)
    return screened.orders, screened.quarantined


def _screen_raw_orders(raw: pd.DataFrame, known: set[str], as_of: dt.date,
                       now: dt.datetime | None) -> _Screened:
    """Order rows as read (any Python values) through every order check, as one part."""
    checks = _Checks.of(pa.array(sorted(known), pa.string()), as_of, now)
    ms = _parse_ms(raw["ordered_at"])
    bad = np.flatnonzero(ms == _NAT)
    part = _screen_order_part(_arrow_text(raw["order_id"]), _arrow_text(raw["customer_id"]),
                              ms, _parse_number(raw["total"]), checks,
                              dict(zip(bad.tolist(), raw["ordered_at"].iloc[bad], strict=True)))
    return _screen_orders([part], checks, raw["ordered_at"], raw["total"])


def read_customers(url: str, customer_ids: Iterable[str]) -> pd.DataFrame:
    """Contact details and consent of the given customers (the shop's current view of them),
    one row per customer (see ``_customer_rows``)."""
    df, _ = _customer_rows(url, customer_ids)
    for col in ("consent_at", "unsubscribed_at"):
        raw = df[col]
        ts = pd.to_datetime(raw, utc=True, errors="coerce", format="mixed")
        odd = ~((ts >= rules.EARLIEST) & (ts < rules.LATEST)) & pd.Series(
            [not _missing(v) and bool(str(v).strip()) for v in raw], index=df.index, dtype=bool)
        if odd.any():
            # Outside the rules' range or unparseable: a consent date we cannot read is none;
            # an unsubscribe we cannot date is still an unsubscribe (never mail them).
            ts = ts.where(~odd, pd.Timestamp(rules.EARLIEST) if col == "unsubscribed_at"
                          else pd.NaT)
            _log.warning("%s customer(s) have an unreadable %s (%s): %s", int(odd.sum()), col,
                         "read as unsubscribed" if col == "unsubscribed_at" else "read as none",
                         ", ".join(map(repr, df.loc[odd, "customer_id"].head(5))))
        df[col] = ts
    return df


def _customer_rows(url: str, customer_ids: Iterable[str], *, records: bool = False
                   ) -> tuple[pd.DataFrame, list[Quarantined]]:
    """The given customers' rows as read (text), one per customer_id, and the repeats set aside.

    Text is read as text (a blob in a SQLite shop with U+FFFD for bytes that are not UTF-8): a
    value left as bytes fails the night where a message is encoded. A view that joins addresses
    or translations repeats a customer; the row kept is the one that allows the least mail
    (``_least_mail``), so a copy can neither grant a consent nor lift an unsubscribe that
    another copy records.
    """
    c = s.customers
    cols = [
        c.c.customer_id,
        *(cast(col, String).label(col.name) for col in (
            c.c.email, c.c.first_name, c.c.last_name, c.c.locale, c.c.timezone,
            c.c.marketing_consent, c.c.consent_at, c.c.unsubscribed_at)),
    ]
    names = [col.name for col in cols]
    frames = []
    with _shop_engine(url).connect() as conn:
        # each id asked once: an id in two chunks would come back twice
        for chunk in _chunks(list(dict.fromkeys(customer_ids)), _IN_CHUNK):
            rows = conn.execute(select(*cols).where(c.c.customer_id.in_(chunk))).all()
            frames.append(pd.DataFrame(rows, columns=names))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=names)
    df["customer_id"] = df["customer_id"].astype(str)
    df, differ = _emails_differ(df, records=records)
    kept, repeats = _one_row_per_key(df, "customer_id", "customers", rules.CUSTOMER_DUPLICATE,
                                     prefer=_least_mail, records=records)
    return kept, [*differ, *repeats]


def _emails_differ(df: pd.DataFrame, *, records: bool = False
                   ) -> tuple[pd.DataFrame, list[Quarantined]]:
    """``df`` without the customers whose rows disagree on the email (compared as the address
    is matched: trimmed, case-insensitive), and those rows as quarantine records: such a
    customer is not mailed until the shop says which address is theirs."""
    email = df["email"].where(df["email"].notna(), "").astype(str).str.strip().str.lower()
    differ = email.groupby(df["customer_id"]).transform("nunique").gt(1).to_numpy()
    if not differ.any():
        return df, []
    set_aside = quarantine_records("customers", df, differ,
                                   pd.Series(rules.CUSTOMER_EMAILS_DIFFER, index=df.index),
                                   "customer_id") if records else []
    ids = sorted(df.loc[differ, "customer_id"].unique())
    _log.warning("%s customers row(s) set aside, %s: %s customer(s) not mailed: %s",
                 int(differ.sum()), rules.CUSTOMER_EMAILS_DIFFER, len(ids),
                 ", ".join(repr(i) for i in ids[:5]))
    return df.loc[~differ].reset_index(drop=True), set_aside


#: Consent as ``tend.programs.consent`` reads it (lower-cased), from the least mail allowed;
#: anything else is no consent.
_CONSENT_RANK = {"implied": 1, "express": 2}


def _least_mail(rows: pd.DataFrame) -> pd.DataFrame:
    """Sort keys that put a customer's rows in order from the one that allows the least mail:
    an unsubscribe (any value, as the planner reads it), then the weaker consent."""
    said = rows["unsubscribed_at"]
    unsubscribed = said.notna() & (said.astype(str).str.strip() != "")
    consent = rows["marketing_consent"].where(rows["marketing_consent"].notna(), "")
    rank = consent.astype(str).str.lower().map(_CONSENT_RANK).fillna(0).astype(int)
    return pd.DataFrame({"_unsubscribed": (~unsubscribed).astype(int), "_consent": rank},
                        index=rows.index)


def _one_row_per_key(df: pd.DataFrame, key: str, source: str, reason: str, *,
                     prefer: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
                     records: bool = False) -> tuple[pd.DataFrame, list[Quarantined]]:
    """``df`` (as read, with a unique index) with one row per value of ``key``, and (with
    ``records``) the other rows as quarantine records; their count is logged. Rows without a
    key are left to the reader's own checks.

    The row kept depends on the rows alone, never on the order a shop's view returns them in,
    so every read of a night (signals, messages, a rerun) keeps the same one: the first by
    ``prefer``'s sort keys, then by its values as text (a missing value last). Column-wise: a
    view that joins addresses repeats every customer, and this runs on each read.
    """
    keys = df[key]
    dup = (keys.notna() & keys.duplicated(keep=False)).to_numpy()
    if not dup.any():
        return df, []
    rows = df.loc[dup]
    order = prefer(rows) if prefer is not None else pd.DataFrame(index=rows.index)
    for n, col in enumerate(rows.columns):
        values = rows[col]
        order[f"_missing{n}"] = values.isna()
        order[f"_text{n}"] = values.where(values.notna(), "").astype(str)
    ranked = order.sort_values(list(order.columns), kind="stable").index
    later = rows.loc[ranked, key].duplicated(keep="first")
    drop = later.index[later.to_numpy()]
    bad = df.index.isin(drop)
    set_aside = quarantine_records(source, df, bad, pd.Series(reason, index=df.index), key) \
        if records else []
    repeated = keys[dup].astype(str).unique()
    _log.warning("%s %s row(s) set aside, %s: %s %s(s) repeated, one row kept for each: %s",
                 len(drop), source, reason, len(repeated), key,
                 ", ".join(repr(k) for k in sorted(repeated)[:5]))
    return df.loc[~bad].reset_index(drop=True), set_aside


def customer_emails(url: str, customer_ids: Iterable[str]) -> dict[str, list[str]]:
    """Every address the shop holds for each of these customers, from every row (repeated and
    disagreeing rows included, unlike ``read_customers``): an erasure must hash each of them,
    and an opt-out list must name each."""
    c = s.customers
    out: dict[str, list[str]] = {}
    with _shop_engine(url).connect() as conn:
        for chunk in _chunks(list(dict.fromkeys(map(str, customer_ids))), _IN_CHUNK):
            rows = conn.execute(select(c.c.customer_id, cast(c.c.email, String))
                                .where(c.c.customer_id.in_(chunk)))
            for customer_id, email in rows:
                if email is None or not str(email).strip():
                    continue
                known = out.setdefault(str(customer_id), [])
                if email not in known:
                    known.append(email)
    return out


def duplicated_rows(url: str) -> list[Quarantined]:
    """Every customers and products row the night's reads set aside because its key repeats.

    ``read_customers`` and ``read_products`` only log them (they have no store): these are
    the quarantine records, for a stage that writes the quarantine table.
    """
    c = s.customers
    with _shop_engine(url).connect() as conn:
        repeated = [r[0] for r in conn.execute(
            select(c.c.customer_id).where(c.c.customer_id.is_not(None))
            .group_by(c.c.customer_id).having(func.count() > 1))]
    customers = _customer_rows(url, repeated, records=True)[1] if repeated else []
    return customers + _product_rows(url, records=True)[1]


def _chunks(items: Sequence[str], size: int) -> Iterable[list[str]]:
    items = list(items)
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _product_rows(url: str, *, records: bool = False
                  ) -> tuple[pd.DataFrame, list[Quarantined]]:
    """The products rows as read, every column as text (a blob in a SQLite shop with U+FFFD for
    bytes that are not UTF-8: a name left as bytes fails the night where a message is encoded),
    one per sku (``_one_row_per_key``), and the repeats set aside. The catalogue and the price
    list read these same rows, so both keep the same row of a repeated sku."""
    p = s.products
    cols = [p.c.sku, p.c.name, p.c.category, p.c.price, p.c.service_interval_days,
            p.c.replenish_days, p.c.complements]
    with _shop_engine(url).connect() as conn:
        rows = conn.execute(select(*(cast(col, String).label(col.name) for col in cols))).all()
    df = pd.DataFrame(rows, columns=[col.name for col in cols])
    return _one_row_per_key(df, "sku", "products", rules.PRODUCT_DUPLICATE, records=records)


def read_products(url: str) -> pd.DataFrame:
    """The catalogue: sku, name, category, price, service_interval_days, replenish_days,
    complements (a list of skus); one row per sku (``_product_rows``)."""
    df, _ = _product_rows(url)
    # a product no line can name (no sku, one a store cannot hold) is not in the catalogue
    df["sku"] = [None if _missing(v) else str(v) for v in df["sku"]]
    usable = set(usable_ids(pa.array(df["sku"], pa.string()), "products", "sku").to_pylist())
    df = df.loc[[v in usable for v in df["sku"]]].reset_index(drop=True)
    df["price"] = pd.to_numeric(df["price"], errors="coerce").astype(float)
    for rule in (rules.SERVICE_INTERVAL_DAYS, rules.REPLENISH_DAYS):
        # A value outside the rule's range is read as none, so no reminder is computed from
        # it (the CSV import would have refused the row); the product itself stays sold.
        col = rule.column
        days = pd.to_numeric(df[col], errors="coerce").astype(float)
        bad = days.notna() & ~((days >= rule.minimum) & (days <= float(rule.maximum or np.inf))
                               & (days == np.floor(days)))
        if bad.any():
            _log.warning("%s product(s) have %s outside %s..%s, read as none: %s",
                         int(bad.sum()), col, rule.minimum, rule.maximum,
                         ", ".join(map(repr, df.loc[bad, "sku"].head(5))))
        df[col] = days.where(~bad)
    df["complements"] = [str(c).split() if isinstance(c, str) else [] for c in df["complements"]]
    return df


def read_price_list(url: str) -> list[tuple[str, str, str | None]]:
    """(sku, name, price) of every product, the price as the shop stores it ("24.00"), so that
    an email shows the shop's own figure, not a float's; one row per sku, the catalogue's."""
    df, _ = _product_rows(url)
    rows = zip(df["sku"], df["name"], df["price"], strict=True)
    # a price outside the rules' range shows no price; a name is shown as text an email holds
    return [(str(sku), rules.printable(str(name)),
             str(price) if rules.PRICE.parse(str(price).strip())[1] is None else None)
            for sku, name, price in rows]


def read_orders_of_days(url: str, wanted: Iterable[tuple[str, dt.date]]
                  ) -> dict[tuple[str, dt.date], dict[str, Any]]:
    """Each (customer, day)'s order(s): id, total, currency and the skus bought; the first
    order of a day names it (a thank-you or a survey is about that order)."""
    wanted = set(wanted)
    customers = sorted({c for c, _ in wanted})
    out: dict[tuple[str, dt.date], dict[str, Any]] = {}
    if not customers:
        return out
    o, ln = s.orders, s.order_lines
    with _shop_engine(url).connect() as conn:
        for chunk in _chunks(customers, _IN_CHUNK):
            orders = pd.DataFrame(conn.execute(
                select(o.c.order_id, o.c.customer_id, cast(o.c.ordered_at, String),
                       cast(o.c.total, String), o.c.currency)
                .where(o.c.customer_id.in_(chunk))).all(),
                columns=["order_id", "customer_id", "ordered_at", "total", "currency"])
            if orders.empty:
                continue
            # only orders the night's read keeps may name a message (the rules' checks of the
            # row's own values; a bad one was quarantined by the ingest)
            usable = pd.Series([
                rules.text_problem("orders", "order_id", str(oid)) is None
                and rules.TOTAL.parse(str(total).strip())[1] is None
                for oid, total in zip(orders["order_id"], orders["total"], strict=True)],
                index=orders.index)
            ts = pd.to_datetime(orders["ordered_at"], utc=True, errors="coerce", format="mixed")
            usable &= (ts >= rules.EARLIEST) & (ts < rules.LATEST)  # NaT compares False
            orders = orders.loc[usable.to_numpy()]
            orders["day"] = ts[usable].dt.date
            keep = [(c, d) in wanted for c, d in zip(orders["customer_id"], orders["day"],
                                                      strict=True)]
            orders = orders.loc[keep]
            ids = orders["order_id"].astype(str).tolist()
            lines = pd.DataFrame(
                [row for part in _chunks(ids, _IN_CHUNK) for row in conn.execute(
                    select(ln.c.order_id, ln.c.sku).where(ln.c.order_id.in_(part))).all()],
                columns=["order_id", "sku"])
            skus = lines.groupby("order_id")["sku"].agg(list).to_dict()
            for r in orders.sort_values("ordered_at").itertuples():
                key = (str(r.customer_id), r.day)
                if key in out:  # several orders that day: the first names the message
                    out[key]["skus"] += skus.get(r.order_id, [])
                    continue
                out[key] = {"order_id": str(r.order_id), "ordered_at": str(r.day),
                            "total": str(r.total), "currency": str(r.currency),
                            "skus": list(skus.get(r.order_id, []))}
    return out


def customer_ids_by_email(url: str, emails: Iterable[str]) -> dict[str, list[str]]:
    """The shop's customers with these addresses (compared lower-cased), by lower-cased email:
    SendGrid's suppression lists know addresses, Tend's suppressions know customers."""
    from sqlalchemy import func

    c = s.customers
    wanted = sorted({e.strip().lower() for e in emails if e and e.strip()})
    out: dict[str, list[str]] = {}
    with connect(url).connect() as conn:
        for chunk in _chunks(wanted, _IN_CHUNK):
            for customer_id, email in conn.execute(
                    select(c.c.customer_id, c.c.email).where(func.lower(c.c.email).in_(chunk))):
                out.setdefault(str(email).strip().lower(), []).append(str(customer_id))
    return out


def with_discount_codes(url: str, orders: pd.DataFrame) -> pd.DataFrame:
    """``orders`` (from ``read_orders``) with a ``discount_code`` column: the code each order
    redeemed, None when it redeemed none or the shop's orders have no ``discount_code`` column
    (it is optional: a shop that does not track codes simply has no direct responses)."""
    out = orders.assign(discount_code=None)
    if orders.empty:
        return out
    o = s.orders_with_codes
    with connect(url).connect() as conn:
        try:
            present = s.has_discount_code(conn)
        except Exception as exc:  # a view the inspector cannot describe: no codes, no failure
            _log.warning("cannot list the shop's order columns (%s); no discount codes read",
                         exc)
            return out
        if not present:
            return out
        q = select(o.c.order_id, o.c.discount_code).where(o.c.discount_code.is_not(None))
        codes = {str(i): str(c).strip() for i, c in conn.execute(q) if str(c).strip()}
    out["discount_code"] = out["order_id"].astype(str).map(codes)
    return out


def read_order(url: str, order_id: str) -> dict[str, Any] | None:
    """One order as the shop holds it (``order_id``, ``customer_id``, ``ordered_at`` as text,
    ``total`` as text, ``currency``, ``lines``: ``[{sku, quantity}]``); None when unknown."""
    o, ln = s.orders, s.order_lines
    with connect(url).connect() as conn:
        row = conn.execute(
            select(o.c.order_id, o.c.customer_id, cast(o.c.ordered_at, String),
                   cast(o.c.total, String), o.c.currency)
            .where(o.c.order_id == str(order_id))).first()
        if row is None:
            return None
        lines = conn.execute(select(ln.c.sku, ln.c.quantity)
                             .where(ln.c.order_id == str(order_id))).all()
    return {"order_id": str(row[0]), "customer_id": str(row[1]), "ordered_at": str(row[2]),
            "total": str(row[3]), "currency": str(row[4]),
            "lines": [{"sku": str(sku), "quantity": _quantity(order_id, sku, q)}
                      for sku, q in lines]}


def _quantity(order_id: str, sku: Any, raw: Any) -> int:
    """A line's quantity by the rule the nightly read applies, or the error that names the
    order: an order the night would set aside is not published either."""
    value, problem = rules.QUANTITY.parse("" if raw is None else str(raw).strip())
    if problem is not None:
        raise DataError(f"order {order_id}, sku {sku}: {problem}; fix the order in the shop "
                        "(the nightly run sets it aside too)")
    return int(value)
