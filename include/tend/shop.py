"""Reading the shop's data (read-only) and quarantining rows that cannot be used.

The shop database is the shop's, not ours: Tend reads it through the four names in
``shop_schema`` and never writes to it. Shops map their own tables onto those names with SQL
views, so we cannot trust types: timestamps are read as text and parsed here, and every row that
cannot be used is returned as a quarantine record with a reason instead of crashing the night.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import String, and_, cast, inspect, select
from sqlalchemy.engine import make_url

from tend import shop_schema as s
from tend.config import mask_url
from tend.errors import DataError
from tend.store.db import connect

#: An order total above this is treated as a data error (a price typed in cents, a test order).
ABSURD_TOTAL = 1_000_000.0
_IN_CHUNK = 900  # stay under SQLite's bound-parameter limit
#: Above this many order lines a full read on SQLite fetches the lines in a second process.
PARALLEL_LINES = 2_000_000
_log = logging.getLogger("tend")


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


@dataclass
class History:
    """Clean orders and lines of one night, and every row that was set aside."""

    orders: pd.DataFrame  # customer_id, order_id, ordered_at (UTC), total
    lines: pd.DataFrame  # order (row number in ``orders``), sku, quantity
    quarantined: list[Quarantined] = field(default_factory=list)
    rows_read: int = 0  # order rows read, good and bad


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

    A full read of a SQLite shop takes a columnar fast path (ADBC into Arrow, the order lines
    in a second process when there are many) that returns exactly what the generic SQLAlchemy
    path returns: rows the fast path cannot type are re-read as text and validated the same way.
    """
    if _sqlite_path(url) is not None:
        try:
            return _read_sqlite_fast(url, as_of, now=now, lines=lines, customer_ids=customer_ids)
        except ImportError:
            pass
        except Exception as exc:  # any driver surprise: take the generic path
            _log.warning("fast SQLite read failed (%s: %s); reading row by row",
                         exc.__class__.__name__, exc)
    return _read_generic(url, as_of, customer_ids, now=now, lines=lines)


_ORDER_COLS = ["order_id", "customer_id", "ordered_at", "total"]
_LINE_COLS = ["order_id", "sku", "quantity"]


def _read_generic(url: str, as_of: dt.date, customer_ids: Sequence[str] | None, *,
                  now: dt.datetime | None, lines: bool) -> History:
    o, ln = s.orders, s.order_lines
    base = select(
        o.c.order_id,
        o.c.customer_id,
        cast(o.c.ordered_at, String).label("ordered_at"),
        cast(o.c.total, String).label("total"),
    )
    line_q = select(ln.c.order_id, ln.c.sku, cast(ln.c.quantity, String).label("quantity"))
    # No time filter in SQL: a shop's view may hold timestamps that do not compare as
    # timestamps (text in SQLite), and a row we never read is a row silently lost. Orders are
    # filtered after parsing, where an unparseable one can be quarantined.
    frames: list[pd.DataFrame] = []
    line_frames: list[pd.DataFrame] = []
    with connect(url).connect() as conn:
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
        skus = pd.Index([str(r[0]) for r in conn.execute(select(s.products.c.sku))],
                        dtype="string") if lines else None
    raw = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=_ORDER_COLS)
    clean, bad = validate_orders(raw, known, as_of, now=now)
    history = History(clean, _empty_lines(), bad, len(raw))
    if lines:
        raw_lines = (pd.concat(line_frames, ignore_index=True) if line_frames
                     else pd.DataFrame(columns=_LINE_COLS))
        all_ids = pd.Index(raw["order_id"].astype("string").dropna().unique())
        history.lines, bad_lines = validate_lines(raw_lines, clean, skus, all_ids)
        history.quarantined += bad_lines
    return history


def _empty_lines() -> pd.DataFrame:
    return pd.DataFrame({"order": np.zeros(0, np.int64), "sku": pd.Series([], dtype=str),
                         "quantity": np.zeros(0, np.int64)})


def _sqlite_path(url: str) -> str | None:
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return u.database


# Rows the fast path can type without help; anything else is re-read as text.
_TS_OK = ("typeof(ordered_at) = 'text' AND "
          "ordered_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*'")
_FAST_ORDERS = f"""
SELECT rowid AS rid, CAST(order_id AS TEXT) AS order_id, CAST(customer_id AS TEXT) AS customer_id,
       CASE WHEN {_TS_OK} THEN unixepoch(ordered_at, 'subsec') * 1.0 END AS ts,
       CASE WHEN typeof(total) IN ('integer', 'real') THEN total * 1.0 END AS total
FROM orders {{where}} ORDER BY rowid"""
_FAST_LINES = """
SELECT rowid AS rid, CAST(order_id AS TEXT) AS order_id, CAST(sku AS TEXT) AS sku,
       CASE WHEN typeof(quantity) = 'integer' THEN quantity END AS quantity
FROM order_lines {where} ORDER BY rowid"""
# A customer subset is one bound JSON array: no chunking, the customer_id index does the work.
_IN_CUSTOMERS = "WHERE customer_id IN (SELECT value FROM json_each(?))"
_LINES_OF_CUSTOMERS = ("WHERE order_id IN (SELECT order_id FROM orders "
                       "WHERE customer_id IN (SELECT value FROM json_each(?)))")


def _adbc_fetch(path: str, sql: str, ids_json: str | None = None):  # type: ignore[no-untyped-def]
    """One query into an Arrow table (ADBC's SQLite driver, read-only)."""
    import adbc_driver_sqlite.dbapi as adbc

    with adbc.connect(f"file:{path}?mode=ro") as con, con.cursor() as cur:
        if ids_json is None:
            cur.execute(sql)
        else:
            cur.execute(sql, (ids_json,))
        return cur.fetch_arrow_table()


def _read_sqlite_fast(url: str, as_of: dt.date, *, now: dt.datetime | None,
                      lines: bool, customer_ids: Sequence[str] | None = None) -> History:
    import sqlite3
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context


    path = _sqlite_path(url)
    assert path is not None
    ids = None if customer_ids is None else json.dumps([str(c) for c in customer_ids])
    pool = future = None
    if lines and ids is None:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
            n_lines = con.execute("SELECT max(rowid) FROM order_lines").fetchone()[0] or 0
        if n_lines > PARALLEL_LINES:
            pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"))
            future = pool.submit(_lines_by_order_row, path)
    try:
        where = "" if ids is None else _IN_CUSTOMERS
        ot = _adbc_fetch(path, _FAST_ORDERS.format(where=where), ids)
        known = _adbc_fetch(path, f"SELECT CAST(customer_id AS TEXT) AS c FROM customers "
                                  f"{where}", ids)
        if lines:
            got = future.result() if future is not None else _lines_by_order_row(path, ids)
    finally:
        if pool is not None:
            pool.shutdown()

    ts = ot.column("ts").to_numpy(zero_copy_only=False)
    total = ot.column("total").to_numpy(zero_copy_only=False)
    ms = np.round(ts * 1000.0)
    orders = pd.DataFrame({
        "order_id": _text(ot.column("order_id")).to_pandas(),
        "customer_id": _text(ot.column("customer_id")).to_pandas(),
        "ordered_at": pd.to_datetime(pd.Series(ms), unit="ms", utc=True),
        "total": total,
    })
    odd = np.flatnonzero(np.isnan(ts) | np.isnan(total))
    texts = pd.DataFrame(columns=_ORDER_COLS)
    if len(odd):  # re-read as text what SQLite could not type, and parse it like the generic path
        rids = ot.column("rid").to_numpy()[odd]
        texts = _rows_as_text(path, "orders", _ORDER_COLS, rids)
        orders.loc[odd, "ordered_at"] = pd.to_datetime(
            texts["ordered_at"], utc=True, errors="coerce", format="mixed").to_numpy()
        orders.loc[odd, "total"] = pd.to_numeric(texts["total"], errors="coerce").to_numpy()
    known_ids = pd.Index(_text(known.column("c")).to_pandas())
    clean, bad_mask, reasons, keep = check_orders(orders, known_ids, as_of, now=now,
                                                  with_keep=True)
    bad_idx = np.flatnonzero(bad_mask)
    raw_bad = orders.iloc[bad_idx][["order_id", "customer_id"]].assign(
        ordered_at=orders["ordered_at"].iloc[bad_idx].astype("string"),
        total=orders["total"].iloc[bad_idx].astype("string")).reset_index(drop=True)
    if len(odd):
        by_pos = dict(zip(odd.tolist(), texts[["ordered_at", "total"]].to_numpy().tolist(),
                          strict=True))
        for k, i in enumerate(bad_idx.tolist()):
            if i in by_pos:
                raw_bad.loc[k, ["ordered_at", "total"]] = by_pos[i]
    history = History(clean, _empty_lines(), quarantine_records(
        "orders", raw_bad, np.ones(len(bad_idx), bool),
        reasons.iloc[bad_idx].reset_index(drop=True), "order_id"), len(orders))
    if not lines:
        return history
    history.lines, bad_lines = _fast_lines(path, got, orders, keep)
    history.quarantined += bad_lines
    return history


def _lines_by_order_row(path: str, ids_json: str | None = None) -> dict[str, object]:
    """Order lines as row numbers of ``_FAST_ORDERS``' rows, product codes and quantities.

    Runs in a second process for a large shop: it reads the order ids itself and matches them
    in Arrow, so only three integer columns (and the few odd rows as text) cross back.
    """
    where = "" if ids_json is None else _IN_CUSTOMERS
    ids = _text(_adbc_fetch(path, f"SELECT CAST(order_id AS TEXT) AS order_id FROM orders "
                                  f"{where} ORDER BY rowid", ids_json).column("order_id")
                ).combine_chunks()
    lines_where = "" if ids_json is None else _LINES_OF_CUSTOMERS
    lt = _adbc_fetch(path, _FAST_LINES.format(where=lines_where), ids_json)
    skus = _text(_adbc_fetch(path, "SELECT CAST(sku AS TEXT) AS sku FROM products"
                             ).column("sku")).combine_chunks()
    skus = pc.array_take(skus, pc.array_sort_indices(skus))
    oid, sku = _text(lt.column("order_id")), _text(lt.column("sku"))
    raw_pos = pc.index_in(oid, value_set=pc.cast(ids, oid.type)).to_numpy(zero_copy_only=False)
    raw_pos = np.where(np.isnan(raw_pos.astype(float)), -1, raw_pos).astype(np.int64)
    sku_idx = pc.index_in(sku, value_set=pc.cast(skus, sku.type)).to_numpy(
        zero_copy_only=False)
    sku_idx = np.where(np.isnan(sku_idx.astype(float)), -1, sku_idx).astype(np.int32)
    qty = lt.column("quantity").to_numpy(zero_copy_only=False).astype(float)
    odd = np.flatnonzero((raw_pos < 0) | (sku_idx < 0) | ~(qty > 0))
    take = pa.array(odd)
    return {
        "raw_pos": raw_pos.astype(np.int32), "sku_idx": sku_idx,
        "qty": np.nan_to_num(qty, nan=0.0).astype(np.int32), "skus": skus.to_pylist(),
        "odd": odd, "odd_rid": lt.column("rid").to_numpy()[odd],
        "odd_order_id": oid.take(take).to_pylist(), "odd_sku": sku.take(take).to_pylist(),
    }


def _fast_lines(path: str, got: dict, orders: pd.DataFrame, keep: np.ndarray
                ) -> tuple[pd.DataFrame, list[Quarantined]]:
    """Clean lines and quarantine records from ``_lines_by_order_row``'s columns."""
    raw_pos, sku_idx = got["raw_pos"], got["sku_idx"]
    qty = got["qty"].astype(float)
    odd = got["odd"]
    if len(odd):  # odd quantities (text, decimals): parse them like the generic path
        text = _rows_as_text(path, "order_lines", ["quantity"], got["odd_rid"])
        qty[odd] = pd.to_numeric(text["quantity"], errors="coerce").to_numpy()
    # raw order row -> clean row; a duplicated id's lines go to the copy that was kept
    to_clean = np.where(keep, np.cumsum(keep) - 1, -1)
    if len(orders) and orders["order_id"].duplicated().any():
        kept = pd.Series(to_clean[keep], index=orders["order_id"].to_numpy()[keep])
        first = ~orders["order_id"].duplicated(keep="first").to_numpy()
        dup_ids = orders["order_id"].to_numpy()[first]
        to_clean[first] = pd.Series(dup_ids).map(kept).fillna(-1).astype(np.int64).to_numpy()
    n = len(raw_pos)
    reason = np.full(len(odd), None, dtype=object)
    with np.errstate(invalid="ignore"):
        qty_ok = (qty > 0) & (qty == np.floor(qty))
    for mask, text_ in ((raw_pos[odd] < 0, "order line for an unknown order"),
                        (sku_idx[odd] < 0, "order line with an unknown sku"),
                        (~qty_ok[odd], "order line quantity is not a positive whole number")):
        reason[mask & (reason == None)] = text_  # noqa: E711 - elementwise
    bad = np.zeros(n, bool)
    bad[odd[reason != None]] = True  # noqa: E711
    pos = np.where(raw_pos >= 0, to_clean[np.maximum(raw_pos, 0)], -1)
    ok = ~bad & (pos >= 0)
    clean = pd.DataFrame({
        "order": pos[ok].astype(np.int64),
        "sku": pd.Categorical.from_codes(sku_idx[ok], categories=got["skus"]),
        "quantity": qty[ok].astype(np.int64)})
    flagged = reason != None  # noqa: E711
    raw = pd.DataFrame({"order_id": np.array(got["odd_order_id"], dtype=object)[flagged],
                        "sku": np.array(got["odd_sku"], dtype=object)[flagged],
                        "quantity": qty[odd][flagged]})
    return clean, quarantine_records("order_lines", raw, np.ones(len(raw), bool),
                                     pd.Series(reason[flagged]), "order_id", "sku")


def _text(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column the driver typed from no rows at all (an empty table) becomes text."""
    return col if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) \
        else pc.cast(col, pa.string())


def _rows_as_text(path: str, table: str, cols: list[str], rids: np.ndarray) -> pd.DataFrame:
    import sqlite3

    sel = ", ".join(f"CAST({c} AS TEXT)" for c in cols)
    out = []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
        for chunk in _chunks([int(r) for r in rids], _IN_CHUNK):  # type: ignore[arg-type]
            marks = ",".join("?" * len(chunk))
            out += con.execute(f"SELECT rowid, {sel} FROM {table} WHERE rowid IN ({marks})",
                               chunk).fetchall()
    by_rid = {r[0]: r[1:] for r in out}
    return pd.DataFrame([by_rid[int(r)] for r in rids], columns=cols, dtype=object)


def validate_lines(
    raw: pd.DataFrame, orders: pd.DataFrame, known_skus: pd.Index,
    all_order_ids: pd.Index | None = None,
) -> tuple[pd.DataFrame, list[Quarantined]]:
    """Order lines (as read) of the clean ``orders`` -> (clean lines, quarantined).

    Clean lines carry ``order`` (the row number of their order in ``orders``), ``sku`` and an
    integer ``quantity``. Lines of orders that were quarantined or do not exist yet for the night
    are left out without a record (the order's own record says why); a line whose order is not
    in the shop at all, a sku missing from ``products`` or a quantity that is not a positive whole
    number is quarantined.
    """

    def arr(values: object) -> pa.Array:
        return pa.array(pd.Series(values, dtype="string"), from_pandas=True)

    qty = pd.to_numeric(raw["quantity"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    all_ids = arr(all_order_ids if all_order_ids is not None else orders["order_id"])
    return _check_lines(arr(raw["order_id"]), arr(raw["sku"]), qty, arr(orders["order_id"]),
                        all_ids, arr(known_skus))


def _check_lines(oid, sku, qty: np.ndarray, clean_ids, all_ids, known_skus  # type: ignore[no-untyped-def]
                 ) -> tuple[pd.DataFrame, list[Quarantined]]:

    def same(a, like):  # type: ignore[no-untyped-def]
        return pc.cast(a, like.type) if a.type != like.type else a

    pos = pc.index_in(oid, value_set=same(pa.chunked_array([clean_ids]).combine_chunks()
                                          if isinstance(clean_ids, pa.Array) else
                                          clean_ids.combine_chunks(), oid))
    pos = pos.to_numpy(zero_copy_only=False) if isinstance(pos, pa.Array) else \
        pos.to_numpy()
    pos = np.where(pd.isna(pos), -1, pos).astype(np.int64)

    def as_set(a):  # type: ignore[no-untyped-def]
        return a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a

    in_shop = pc.is_in(oid, value_set=same(as_set(all_ids), oid)).to_numpy(zero_copy_only=False)
    sku_ok = pc.is_in(sku, value_set=same(as_set(known_skus), sku)).to_numpy(
        zero_copy_only=False)
    n = len(qty)
    reason = np.full(n, None, dtype=object)
    with np.errstate(invalid="ignore"):
        qty_ok = (qty > 0) & (qty == np.floor(qty))
    for mask, text in ((~in_shop & (pos < 0), "order line for an unknown order"),
                       (~sku_ok, "order line with an unknown sku"),
                       (~qty_ok, "order line quantity is not a positive whole number")):
        reason[mask & (reason == None)] = text  # noqa: E711 - elementwise
    bad = reason != None  # noqa: E711
    keep = ~bad & (pos >= 0)
    clean = pd.DataFrame({"order": pos[keep],
                          "sku": pd.Series(sku.filter(pa.array(keep))).astype(str)
                          if n else pd.Series([], dtype=str),
                          "quantity": qty[keep].astype(np.int64)})
    records = []
    if bad.any():
        idx = np.flatnonzero(bad)
        raw = pd.DataFrame({"order_id": pd.Series(oid.take(pa.array(idx))),
                            "sku": pd.Series(sku.take(pa.array(idx))),
                            "quantity": qty[idx]})
        records = quarantine_records("order_lines", raw, np.ones(len(idx), bool),
                                     pd.Series(reason[idx]), "order_id", "sku")
    return clean, records


def _known_customers(conn, customer_ids: Sequence[str] | None) -> set[str]:  # type: ignore[no-untyped-def]
    c = s.customers
    if customer_ids is None:
        return {str(r[0]) for r in conn.execute(select(c.c.customer_id))}
    known: set[str] = set()
    for chunk in _chunks(customer_ids, _IN_CHUNK):
        q = select(c.c.customer_id).where(c.c.customer_id.in_(chunk))
        known.update(str(r[0]) for r in conn.execute(q))
    return known


def future_cutoff(now: dt.datetime | None = None) -> pd.Timestamp:
    """Orders at or after this instant are in the future for the run happening ``now``.

    The run's own date (wall clock, UTC) is the reference, not ``as_of``: replaying an old night
    must not call last week's orders "future", they simply do not exist yet for that night.
    """
    now = now or dt.datetime.now(dt.UTC)
    return pd.Timestamp(end_of_day(now.astimezone(dt.UTC).date()))


def validate_orders(
    raw: pd.DataFrame, known_customers: set[str] | pd.Index, as_of: dt.date,
    *, now: dt.datetime | None = None,
) -> tuple[pd.DataFrame, list[Quarantined]]:
    """Split raw order rows (text as read) into usable orders and quarantined ones (vectorised)."""
    df = pd.DataFrame({
        "order_id": raw["order_id"].astype("string"),
        "customer_id": raw["customer_id"].astype("string"),
        "ordered_at": pd.to_datetime(raw["ordered_at"], utc=True, errors="coerce",
                                     format="mixed"),
        "total": pd.to_numeric(raw["total"], errors="coerce"),
    })
    clean, bad_mask, reasons = check_orders(df, known_customers, as_of, now=now)
    return clean, quarantine_records("orders", raw, bad_mask, reasons, "order_id")


def check_orders(
    df: pd.DataFrame, known_customers: set[str] | pd.Index, as_of: dt.date,
    *, now: dt.datetime | None = None, with_keep: bool = False,
) -> tuple:  # type: ignore[type-arg]
    """Order rows with parsed ``ordered_at`` (UTC, NaT if unparseable) and ``total`` (NaN if
    not a number) -> (clean orders, bad-row mask, reasons). Shared by every reading path.

    A duplicated order_id keeps its earliest row (then the smallest customer_id, then the first
    read), so the choice does not depend on the order rows come back in.
    """
    oid, cid, ts, total = df["order_id"], df["customer_id"], df["ordered_at"], df["total"]
    ts = ts.dt.round("ms")  # what every reading path can represent exactly
    end = pd.Timestamp(end_of_day(as_of))
    future = future_cutoff(now)
    reasons = pd.Series(pd.NA, index=df.index, dtype="string")

    def flag(mask: pd.Series, reason: str) -> None:
        m = np.asarray(mask.fillna(False), dtype=bool) & reasons.isna().to_numpy()
        reasons.loc[m] = reason

    flag(oid.isna() | (oid.str.strip() == ""), "order without an order_id")
    flag(cid.isna() | (cid.str.strip() == ""), "order without a customer")
    known = pa.array(pd.Series(list(known_customers) if isinstance(known_customers, set)
                               else known_customers, dtype="string"), from_pandas=True)
    cid_a = pa.array(cid, from_pandas=True)
    flag(pd.Series(~pc.is_in(cid_a, value_set=pc.cast(known, cid_a.type)).to_numpy(
        zero_copy_only=False), index=df.index), "order for an unknown customer")
    flag(ts.isna(), "unparseable ordered_at timestamp")
    flag(total.isna(), "total is not a number")
    flag(total < 0, "negative order total")
    flag(total > ABSURD_TOTAL, f"order total above {ABSURD_TOTAL:,.0f} (absurd amount)")
    flag(ts >= future, f"ordered_at in the future (after the run's date, "
                       f"{(future - pd.Timedelta(days=1)).date()} UTC)")
    ok = reasons.isna().to_numpy()
    oid_a = pa.array(oid, from_pandas=True)
    if ok.any() and pc.count_distinct(oid_a, mode="all").as_py() < len(oid_a):
        twins = ok & oid.duplicated(keep=False).to_numpy()
        cand = pd.DataFrame({"oid": oid, "ts": ts, "cid": cid,
                             "pos": np.arange(len(df))}).loc[twins]
        cand = cand.sort_values(["ts", "cid", "pos"], kind="stable")
        dup = cand["oid"].duplicated(keep="first")
        flag(pd.Series(dup.reindex(df.index, fill_value=False)),
             "duplicate order_id (the first occurrence was kept)")
    bad = reasons.notna().to_numpy()
    keep = ~bad & (ts < end).fillna(False).to_numpy()
    clean = pd.DataFrame(
        {
            "customer_id": cid[keep].astype(str),
            "order_id": oid[keep].astype(str),
            "ordered_at": ts[keep],
            "total": total[keep].astype(float),
        }
    ).reset_index(drop=True)
    return (clean, bad, reasons, keep) if with_keep else (clean, bad, reasons)


def quarantine_records(source: str, raw: pd.DataFrame, bad: np.ndarray, reasons: pd.Series,
                       *key_cols: str) -> list[Quarantined]:
    """One record per bad row, with the row as it was read (text) as its payload."""
    rows = raw.loc[bad]
    out = []
    for rec, reason in zip(rows.to_dict("records"), reasons.loc[bad], strict=True):
        parts = [rec.get(k) for k in key_cols]
        key = None if all(_missing(p) for p in parts) else ":".join(
            "" if _missing(p) else str(p) for p in parts)
        out.append(Quarantined(
            source=source, record_key=key, reason=str(reason),
            payload={k: (None if _missing(v) else str(v)) for k, v in rec.items()}))
    return out


def _missing(v: object) -> bool:
    return v is None or (not isinstance(v, str) and bool(pd.isna(v)))


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


def _empty_orders() -> pd.DataFrame:
    return pd.DataFrame({"customer_id": pd.Series([], dtype=str),
                         "order_id": pd.Series([], dtype=str),
                         "ordered_at": pd.Series([], dtype="datetime64[us, UTC]"),
                         "total": pd.Series([], dtype=float)})


def read_products(url: str) -> pd.DataFrame:
    """The catalogue: sku, name, category, price, service_interval_days, replenish_days,
    complements (a list of skus)."""
    p = s.products
    with connect(url).connect() as conn:
        rows = conn.execute(select(
            p.c.sku, p.c.name, p.c.category, cast(p.c.price, String).label("price"),
            p.c.service_interval_days, p.c.replenish_days, p.c.complements)).all()
    df = pd.DataFrame(rows, columns=["sku", "name", "category", "price", "service_interval_days",
                                     "replenish_days", "complements"])
    df["sku"] = df["sku"].astype(str)
    df["price"] = pd.to_numeric(df["price"], errors="coerce").astype(float)
    for col in ("service_interval_days", "replenish_days"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df["complements"] = [str(c).split() if isinstance(c, str) else [] for c in df["complements"]]
    return df
