"""Reading the shop's data (read-only) and quarantining rows that cannot be used.

The shop database is the shop's, not ours: Tend reads it through the four names in
``shop_schema`` and never writes to it. Shops map their own tables onto those names with SQL
views, so we cannot trust types: timestamps are read as text and parsed here, and every row that
cannot be used is returned as a quarantine record with a reason instead of crashing the night.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
from collections.abc import Callable, Iterable, Sequence
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

    #: customer_id (categorical over the sorted ids), order_id, ordered_at (UTC), total
    orders: pd.DataFrame
    #: order (row number in ``orders``), sku (categorical over the sorted catalogue), quantity
    lines: pd.DataFrame
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

    A SQLite shop takes a columnar fast path (ADBC into Arrow, in two threads for a full read)
    that returns exactly what the generic SQLAlchemy path returns: both hand the same Arrow
    columns to the same checks (``_screen_orders``, ``_screen_lines``), and rows the fast path
    cannot type are re-read as text and parsed like the generic path parses everything.
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
        skus = [str(r[0]) for r in conn.execute(select(s.products.c.sku))] if lines else []
    raw = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=_ORDER_COLS)
    screened = _screen_orders(_arrow_text(raw["order_id"]), _arrow_text(raw["customer_id"]),
                              _parse_ms(raw["ordered_at"]), _parse_number(raw["total"]),
                              pa.array(sorted(known), pa.string()), as_of, now)
    history = History(screened.clean(), _empty_lines(),
                      screened.records(raw["ordered_at"], raw["total"]), len(raw))
    if lines:
        raw_lines = (pd.concat(line_frames, ignore_index=True) if line_frames
                     else pd.DataFrame(columns=_LINE_COLS))
        known_skus = pa.array(sorted(set(skus)), pa.string())
        part = _line_part(_arrow_text(raw_lines["order_id"]), _arrow_text(raw_lines["sku"]),
                          _parse_number(raw_lines["quantity"]), known_skus)
        history.lines, bad_lines = _screen_lines([part], screened, known_skus)
        history.quarantined += bad_lines
    return history


def _arrow_text(values: pd.Series) -> pa.Array:
    """Values as read (any Python type, None for NULL) as an Arrow string array."""
    return pa.array(pd.Series(values, dtype=object).map(
        lambda v: None if _missing(v) else str(v)).to_numpy(dtype=object), pa.string(),
        from_pandas=True)


def _parse_ms(values: pd.Series) -> np.ndarray:
    """Timestamps in any common spelling -> UTC milliseconds as float (NaN: unparseable)."""
    ts = pd.to_datetime(pd.Series(values, dtype=object), utc=True, errors="coerce",
                        format="mixed").dt.round("ms")
    out = ts.dt.as_unit("ms").array.asi8.astype(float)
    out[ts.isna().to_numpy()] = np.nan
    return out


def _parse_number(values: pd.Series) -> np.ndarray:
    return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(
        dtype=float, na_value=np.nan)


def _empty_lines() -> pd.DataFrame:
    return pd.DataFrame({"order": np.zeros(0, np.int32), "sku": pd.Series([], dtype=str),
                         "quantity": np.zeros(0, np.int32)})


def _sqlite_path(url: str) -> str | None:
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return u.database


# -- the SQLite fast path ----------------------------------------------------------------------
# Typed where SQLite's own type says the value is usable as is; anything else comes as text too
# and is parsed like the generic path parses everything. Timestamps always come as text: Arrow
# parses ISO 8601 far faster than SQLite's date functions.
_TOTAL_OK = "typeof(total) IN ('integer', 'real')"
_FAST_ORDERS = f"""
SELECT CAST(order_id AS TEXT) AS order_id, CAST(customer_id AS TEXT) AS customer_id,
       CAST(ordered_at AS TEXT) AS ordered_at,
       CASE WHEN {_TOTAL_OK} THEN total * 1.0 END AS total,
       CASE WHEN {_TOTAL_OK} THEN NULL ELSE CAST(total AS TEXT) END AS total_text
FROM orders {{where}} ORDER BY rowid"""
_PLAIN_ORDERS = """
SELECT CAST(order_id AS TEXT) AS order_id, CAST(customer_id AS TEXT) AS customer_id,
       CAST(ordered_at AS TEXT) AS ordered_at, total FROM orders {where} ORDER BY rowid"""
_PLAIN_LINES = """
SELECT CAST(order_id AS TEXT) AS order_id, CAST(sku AS TEXT) AS sku, quantity
FROM {where} ORDER BY rid"""
_QTY_OK = "typeof(quantity) = 'integer'"
_FAST_LINES = f"""
SELECT CAST(order_id AS TEXT) AS order_id, CAST(sku AS TEXT) AS sku,
       CASE WHEN {_QTY_OK} THEN quantity END AS quantity,
       CASE WHEN {_QTY_OK} THEN NULL ELSE CAST(quantity AS TEXT) END AS quantity_text
FROM {{where}} ORDER BY rid"""
# A customer subset is one bound JSON array: no chunking, the customer_id index does the work.
_IN_CUSTOMERS = "WHERE customer_id IN (SELECT value FROM json_each(?))"
# Lines are sources (SQLite flattens the subquery): a rowid range, or the lines of the
# customers' orders found through both indexes (faster than an IN over order ids).
_LINES_PART = "(SELECT rowid AS rid, * FROM order_lines {where})"
_LINES_OF_CUSTOMERS = (
    "(SELECT l.rowid AS rid, l.order_id, l.sku, l.quantity FROM orders AS o "
    "JOIN order_lines AS l ON l.order_id = o.order_id "
    "WHERE o.customer_id IN (SELECT value FROM json_each(?)))")
_BATCH_ROWS = "131072"  # rows per Arrow batch: the driver's default (1024) costs 2x per value
#: Rows per part of a full read; the parts are read by two threads (the driver releases the
#: GIL while SQLite steps), so both cores read.
_PART_ROWS = 2_000_000
_MMAP_BYTES = 1 << 40  # capped by the SQLite build (2 GiB by default); read-only here


def _adbc_fetch(path: str, sql: str, ids_json: str | None = None):  # type: ignore[no-untyped-def]
    """One query into an Arrow table (ADBC's SQLite driver, read-only)."""
    import adbc_driver_sqlite.dbapi as adbc

    with adbc.connect(f"file:{path}?mode=ro") as con, con.cursor() as cur:
        cur.execute("PRAGMA busy_timeout = 60000")  # a writer or a WAL recovery: wait
        cur.fetchall()
        # Pages straight from the OS cache instead of one read() system call per page.
        cur.execute(f"PRAGMA mmap_size = {_MMAP_BYTES}")
        cur.fetchall()
        cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": _BATCH_ROWS})
        cur.execute(sql, None if ids_json is None else (ids_json,))
        return cur.fetch_arrow_table()


def _parts(path: str, table: str) -> list[str]:
    """WHERE clauses that cut ``table`` into rowid ranges of about ``_PART_ROWS`` rows."""
    import sqlite3

    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
        con.execute("PRAGMA busy_timeout = 60000")
        # two queries: SQLite answers min() or max() from the b-tree, both at once by a scan
        lo = con.execute(f"SELECT min(rowid) FROM {table}").fetchone()[0]
        hi = con.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0]
    if lo is None:
        return [""]
    n = max(1, -(-(hi - lo + 1) // _PART_ROWS))
    cuts = [lo + (hi - lo + 1) * k // n for k in range(n + 1)]
    return [f"WHERE rowid >= {a} AND rowid < {b}" for a, b in itertools.pairwise(cuts)]


def order_rows_hint(url: str) -> int:
    """About how many order rows a SQLite shop holds (its largest rowid; no count), 0 when it
    cannot tell cheaply (another database, a view)."""
    path = _sqlite_path(url)
    if path is None:
        return 0
    import sqlite3

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
            return int(con.execute("SELECT max(rowid) FROM orders").fetchone()[0] or 0)
    except sqlite3.Error:
        return 0


def _read_sqlite_fast(url: str, as_of: dt.date, *, now: dt.datetime | None,
                      lines: bool, customer_ids: Sequence[str] | None = None) -> History:
    from concurrent.futures import ThreadPoolExecutor

    path = _sqlite_path(url)
    assert path is not None
    ids = None if customer_ids is None else json.dumps([str(c) for c in customer_ids])
    if ids is None:
        order_parts = [(w, None) for w in _parts(path, "orders")]
        line_parts = [(_LINES_PART.format(where=w), None) for w in _parts(path, "order_lines")
                      ] if lines else []
    else:
        order_parts = [(_IN_CUSTOMERS, ids)]
        line_parts = [(_LINES_OF_CUSTOMERS, ids)] if lines else []
    where_known = "" if ids is None else _IN_CUSTOMERS
    skus = _one(_adbc_fetch(path, "SELECT CAST(sku AS TEXT) AS sku FROM products"
                            ).column("sku"))
    skus = pc.array_take(skus, pc.array_sort_indices(skus))
    # Each part is read and boiled down to compact columns by one of two threads (SQLite,
    # Arrow and NumPy release the GIL), so the text of 20M lines is never held at once.
    with ThreadPoolExecutor(2) as pool:
        order_fs = [pool.submit(_orders_part, path, w, p) for w, p in order_parts]
        known_f = pool.submit(_adbc_fetch, path, "SELECT CAST(customer_id AS TEXT) AS c FROM "
                              f"customers {where_known}", ids)
        line_fs = [pool.submit(_lines_part, path, w, p, skus) for w, p in line_parts]
        got = [f.result() for f in order_fs]
        ms = np.concatenate([g["ms"] for g in got])
        total = np.concatenate([g["total"] for g in got])
        offsets = np.cumsum([0] + [len(g["ms"]) for g in got])
        ts_odd = {int(o) + int(k): v for o, g in zip(offsets, got, strict=False)
                  for k, v in g["ts_odd"].items()}
        total_odd = {int(o) + int(k): v for o, g in zip(offsets, got, strict=False)
                     for k, v in g["total_odd"].items()}
        screened = _screen_orders(
            pa.chunked_array([c for g in got for c in g["order_id"].chunks], pa.string()),
            pa.chunked_array([c for g in got for c in g["customer_id"].chunks], pa.string()),
            ms, total, _one(known_f.result().column("c")), as_of, now)
        del got
        history = History(screened.clean(), _empty_lines(), [], len(ms))
        history.quarantined = screened.records(_typed_or_text(ms, ts_odd, _ms_text),
                                               _typed_or_text(total, total_odd, str))
        screened.customer_id = pa.array([], pa.string())  # no longer needed
        if not lines:
            return history
        parts = [f.result() for f in line_fs]
    history.lines, bad_lines = _screen_lines(parts, screened, skus)
    history.quarantined += bad_lines
    return history


def _fetch_typed(path: str, plain: str, careful: str, where: str, ids: str | None,
                 numeric: str) -> pa.Table:
    """A part as SQLite typed it, if every value of a column has one type (the driver types
    a column from its first rows and refuses a value of another type later); otherwise again
    with the odd values as text beside the typed ones."""
    try:
        t = _adbc_fetch(path, plain.format(where=where), ids)
        typ = t.schema.field(numeric).type
        if pa.types.is_integer(typ) or pa.types.is_floating(typ):
            return t
    except Exception as exc:  # the driver's "Type mismatch in column ..."
        if "mismatch" not in str(exc).lower():
            raise
    return _adbc_fetch(path, careful.format(where=where), ids)


def _orders_part(path: str, where: str, ids: str | None) -> dict[str, object]:
    """One part of the orders, typed: ids as Arrow text, UTC milliseconds and totals as
    floats (NaN where unusable), and the text as read of the rows that did not type."""
    t = _fetch_typed(path, _PLAIN_ORDERS, _FAST_ORDERS, where, ids, "total")
    ms = _arrow_ms(_one(t.column("ordered_at")))
    total = _floats(t.column("total"))
    total_text = _one(t.column("total_text")) if "total_text" in t.column_names else \
        pa.nulls(len(total), pa.string())
    odd = np.flatnonzero(pc.is_valid(total_text).to_numpy(zero_copy_only=False))
    total_odd = dict(zip(odd.tolist(), total_text.take(pa.array(odd)).to_pylist(),
                         strict=True))
    if len(odd):  # parse what SQLite could not type like the generic path parses it
        total[odd] = _parse_number(pd.Series(list(total_odd.values()), dtype=object))
    bad_ts = np.flatnonzero(np.isnan(ms))
    ts_odd = dict(zip(bad_ts.tolist(), _one(t.column("ordered_at")).take(
        pa.array(bad_ts)).to_pylist(), strict=True))
    return {"order_id": _text(t.column("order_id")), "customer_id": _text(t.column(
        "customer_id")), "ms": ms, "total": total, "ts_odd": ts_odd, "total_odd": total_odd}


def _lines_part(path: str, where: str, ids: str | None, skus: pa.Array) -> dict[str, object]:
    t = _fetch_typed(path, _PLAIN_LINES, _FAST_LINES, where, ids, "quantity")
    qty = _floats(t.column("quantity"))
    qty_text = _one(t.column("quantity_text")) if "quantity_text" in t.column_names else None
    if qty_text is not None and qty_text.null_count < len(qty_text):
        odd = np.flatnonzero(pc.is_valid(qty_text).to_numpy(zero_copy_only=False))
        qty[odd] = _parse_number(qty_text.take(pa.array(odd)).to_pandas().astype(object))
    return _line_part(_one(t.column("order_id")), _one(t.column("sku")), qty, skus)


def _line_part(oid: pa.Array, sku: pa.Array, qty: np.ndarray, skus: pa.Array
               ) -> dict[str, object]:
    """Order lines as read, boiled down: where a new run of one order's lines starts, the
    order id of each run, the sku as a position in the sorted catalogue (-1: unknown, its text
    kept) and the quantity."""
    n = len(oid)
    change = np.ones(n, bool)
    if n > 1:
        change[1:] = pc.not_equal(oid[1:], oid[:-1]).fill_null(True).to_numpy(
            zero_copy_only=False)
    heads = oid.take(pa.array(np.flatnonzero(change)))
    codes, sdict = _encode(sku)
    sidx = np.append(_index_or_minus_one(pc.index_in(
        sdict, value_set=pc.cast(skus, sdict.type))), -1).astype(np.int32)
    sku_idx = sidx[codes]
    unknown = np.flatnonzero(sku_idx < 0)
    return {"change": change, "heads": heads, "sku": sku_idx, "qty": qty,
            "sku_odd": dict(zip(unknown.tolist(), sku.take(pa.array(unknown)).to_pylist(),
                                strict=True))}


def _ints(values: np.ndarray) -> np.ndarray:
    """Whole numbers in 32 bits when they fit (half the memory of 20M quantities)."""
    return values.astype(np.int32 if not len(values) or values.max() < 2**31 else np.int64)


def _typed_or_text(values: np.ndarray, text: dict[int, str | None],
                   fmt: Callable[[float], str]) -> Callable[[np.ndarray], list[str | None]]:
    """How a quarantined row's value reads in its record: the text as read where it did not
    type, else the typed value written back as text."""

    def render(rows: np.ndarray) -> list[str | None]:
        return [text[r] if r in text else (None if np.isnan(values[r]) else fmt(values[r]))
                for r in rows.tolist()]

    return render


def _ms_text(ms: float) -> str:
    return str(pd.Timestamp(int(ms), unit="ms", tz="UTC"))


def _arrow_ms(text: pa.Array, chunk: int = 65_536) -> np.ndarray:
    """Timestamps as text -> UTC milliseconds as float (NaN: unparseable), exactly as
    ``_parse_ms`` parses them.

    Arrow parses naive ISO 8601 (what SQLAlchemy and most shops store) in C++; a block of rows
    with anything else in it (a zone offset, a typo) is parsed by pandas like the generic path.
    """
    us = np.empty(len(text), np.int64)
    nat = np.zeros(len(text), bool)
    for start in range(0, len(text), chunk):
        part = text.slice(start, chunk)
        try:
            ts = pc.cast(part, pa.timestamp("us"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            ms = _parse_ms(part.to_pandas().astype(object))
            bad = np.isnan(ms)
            us[start : start + len(part)] = np.where(bad, 0, ms).astype(np.int64) * 1000
            nat[start : start + len(part)] = bad
            continue
        us[start : start + len(part)] = ts.cast(pa.int64()).fill_null(0).to_numpy(
            zero_copy_only=False)
        nat[start : start + len(part)] = ts.is_null().to_numpy(zero_copy_only=False)
    rounded = pd.Series(pd.to_datetime(us, unit="us")).dt.round("ms")
    out = rounded.dt.as_unit("ms").array.asi8.astype(float)
    out[nat] = np.nan
    return out


def _floats(col: pa.ChunkedArray) -> np.ndarray:
    """A numeric column with NULL as NaN (a writable copy)."""
    col = col if pa.types.is_floating(col.type) or pa.types.is_integer(col.type) \
        else pc.cast(col, pa.float64())
    return np.array(col.to_numpy(), dtype=float)


def _text(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column the driver typed from no rows at all (an empty table) becomes text."""
    return col if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) \
        else pc.cast(col, pa.string())


def _one(col: pa.ChunkedArray) -> pa.Array:
    """A text column as one contiguous array (64-bit offsets if it is very large)."""
    col = _text(col)
    if sum(c.nbytes for c in col.chunks) > 1 << 30:
        col = pc.cast(col, pa.large_string())
    return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)


def _blank(a: pa.Array) -> np.ndarray:
    """NULL or only whitespace."""
    empty = pc.equal(pc.utf8_trim_whitespace(a), "")
    return pc.or_kleene(pc.is_null(a), empty).fill_null(True).to_numpy(zero_copy_only=False)


def _index_or_minus_one(a: pa.Array | pa.ChunkedArray) -> np.ndarray:
    out = a.to_numpy(zero_copy_only=False)
    if a.null_count:
        out = np.where(pd.isna(out), -1, out)
    return np.asarray(out, dtype=np.int64)


def _encode(a: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Dictionary-encode: (position of each value in the distinct values, -1 for NULL; the
    distinct values in order of first appearance)."""
    enc = pc.dictionary_encode(a)
    if isinstance(enc, pa.ChunkedArray):  # the chunks share one dictionary
        if enc.num_chunks == 0:
            return np.zeros(0, np.int64), pa.array([], a.type)
        indices = pa.chunked_array([c.indices for c in enc.chunks], pa.int32())
        return _index_or_minus_one(indices), enc.chunk(enc.num_chunks - 1).dictionary
    return _index_or_minus_one(enc.indices), enc.dictionary


def _strictly_increasing(a: pa.Array) -> bool:
    """True when every id is longer than, or as long as and after, the one before: then no id
    repeats (cheap: no hashing; shops that count their order ids up pass it)."""
    if len(a) < 2:
        return True
    if a.null_count:
        return False
    length = pc.binary_length(a).to_numpy(zero_copy_only=False)
    after = pc.greater(a[1:], a[:-1]).to_numpy(zero_copy_only=False)
    longer = length[1:] > length[:-1]
    return bool(np.all(longer | ((length[1:] == length[:-1]) & after)))


_ORDER_REASONS = (
    "", "order without an order_id", "order without a customer", "order for an unknown customer",
    "unparseable ordered_at timestamp", "total is not a number", "negative order total",
    f"order total above {ABSURD_TOTAL:,.0f} (absurd amount)", "{future}",
    "duplicate order_id (the first occurrence was kept)",
)


@dataclass
class _Screened:
    """Order rows as read, screened: what every reading path hands to ``_screen_lines``."""

    order_id: pa.Array  # every row as read
    customer_id: pa.Array
    ms: np.ndarray  # UTC milliseconds, NaN when unparseable
    total: np.ndarray
    reason: np.ndarray  # index into _ORDER_REASONS, 0 = usable
    future_reason: str
    keep: np.ndarray  # usable and on or before the night
    to_clean: np.ndarray  # row as read -> row of the clean orders whose lines it holds, or -1
    cust_code: np.ndarray  # customer of each row, as a position in cust_ids (-1: none)
    cust_ids: pa.Array  # sorted

    def clean(self) -> pd.DataFrame:
        rows = np.flatnonzero(self.keep)
        cats = pd.Index(self.cust_ids.to_pandas(), dtype=str)
        oid = self.order_id if len(rows) == len(self.keep) else \
            self.order_id.take(pa.array(rows))
        ms = self.ms[rows].astype(np.int64).view("datetime64[ms]")
        return pd.DataFrame({
            "customer_id": pd.Categorical.from_codes(self.cust_code[rows], categories=cats),
            "order_id": pd.Series(oid.to_pandas(), dtype=str),
            "ordered_at": pd.Series(ms).dt.tz_localize("UTC"),
            "total": self.total[rows].astype(float),
        })

    def records(self, ordered_at: pd.Series | Callable[[np.ndarray], list[str | None]],
                total: pd.Series | Callable[[np.ndarray], list[str | None]]
                ) -> list[Quarantined]:
        bad = np.flatnonzero(self.reason > 0)
        if not len(bad):
            return []

        def col(v: pd.Series | Callable[[np.ndarray], list[str | None]]) -> list[object]:
            return v(bad) if callable(v) else pd.Series(v, dtype=object).iloc[bad].tolist()

        take = pa.array(bad)
        raw = pd.DataFrame({"order_id": self.order_id.take(take).to_pylist(),
                            "customer_id": self.customer_id.take(take).to_pylist(),
                            "ordered_at": col(ordered_at), "total": col(total)}, dtype=object)
        names = [r.replace("{future}", self.future_reason) for r in _ORDER_REASONS]
        reasons = pd.Series([names[k] for k in self.reason[bad].tolist()])
        return quarantine_records("orders", raw, np.ones(len(bad), bool), reasons, "order_id")


def _screen_orders(oid: pa.Array, cid: pa.Array, ms: np.ndarray, total: np.ndarray,
                   known: pa.Array, as_of: dt.date, now: dt.datetime | None) -> _Screened:
    """The order checks every reading path shares, vectorised in Arrow and NumPy (no Python
    value per row): a reason per row (the first that applies), which rows exist for the night,
    and the customers as integer codes.

    A duplicated order_id keeps its earliest row (then the smallest customer_id, then the first
    read), so the choice does not depend on the order rows come back in.
    """
    n = len(oid)
    reason = np.zeros(n, np.int8)

    def flag(mask: np.ndarray, k: int) -> None:
        reason[(reason == 0) & mask] = k

    flag(_blank(oid), 1)
    flag(_blank(cid), 2)
    cidx, cdict = _encode(cid)
    known_d = pc.is_in(cdict, value_set=pc.cast(known, cdict.type)).to_numpy(
        zero_copy_only=False)
    flag(~np.append(known_d, False)[cidx], 3)
    with np.errstate(invalid="ignore"):
        flag(np.isnan(ms), 4)
        flag(np.isnan(total), 5)
        flag(total < 0, 6)
        flag(total > ABSURD_TOTAL, 7)
        future = future_cutoff(now)
        flag(ms >= future.value // 1_000_000, 8)
    ok = reason == 0
    ocode: np.ndarray | None = None
    if ok.any() and not _strictly_increasing(oid):
        ocode, odict = _encode(oid)
        counts = np.bincount(ocode[ocode >= 0], minlength=len(odict))
        twins = np.flatnonzero(ok & (ocode >= 0) & (counts[np.maximum(ocode, 0)] > 1))
        if len(twins):
            cand = pd.DataFrame({"oid": ocode[twins], "ms": ms[twins],
                                 "cid": cid.take(pa.array(twins)).to_pandas().astype(str),
                                 "pos": twins}).sort_values(["ms", "cid", "pos"], kind="stable")
            dup = cand["pos"].to_numpy()[cand["oid"].duplicated(keep="first").to_numpy()]
            reason[dup] = 9
        else:
            ocode = None
    end_ms = pd.Timestamp(end_of_day(as_of)).value // 1_000_000
    with np.errstate(invalid="ignore"):
        keep = (reason == 0) & (ms < end_ms)
    to_clean = np.where(keep, np.cumsum(keep) - 1, -1)
    if ocode is not None:  # a duplicated id's lines go to the copy that was kept
        kept = np.full(int(ocode.max()) + 2, -1, np.int64)
        kept[ocode[keep]] = to_clean[keep]
        to_clean = kept[ocode]  # -1 (no id) indexes the extra slot
    # customers as codes into their sorted ids (what the features group by)
    order = pc.array_sort_indices(cdict).to_numpy(zero_copy_only=False)
    rank = np.empty(len(order) + 1, np.int64)
    rank[order] = np.arange(len(order))
    rank[-1] = -1
    return _Screened(oid, cid, ms, total, reason,
                     f"ordered_at in the future (after the run's date, "
                     f"{(future - pd.Timedelta(days=1)).date()} UTC)",
                     keep, to_clean, rank[cidx].astype(np.int32), cdict.take(pa.array(order)))


def _screen_lines(parts: list[dict[str, object]], orders: _Screened, known_skus: pa.Array
                  ) -> tuple[pd.DataFrame, list[Quarantined]]:
    """Order lines (as read, in parts from ``_line_part``) of the screened orders ->
    (clean lines, quarantined).

    Clean lines carry ``order`` (the row number of their order in the clean orders), ``sku``
    (categorical over the sorted catalogue) and an integer ``quantity``. Lines of orders that
    were quarantined or do not exist yet for the night are left out without a record (the
    order's own record says why); a line whose order is not in the shop at all, a sku missing
    from ``products`` or a quantity that is not a positive whole number is quarantined.

    Lines are matched to orders run by run (consecutive lines of one order): when the runs
    follow the orders as read — a shop that writes an order's lines after it — that is one
    string comparison per order, else one hash lookup per run.
    """
    change = np.concatenate([p["change"] for p in parts]) if parts else np.zeros(0, bool)
    heads = [p["heads"] for p in parts]
    sku_odd: dict[int, str | None] = {}
    start = 0
    for k, p in enumerate(parts):
        sku_odd.update({start + i: v for i, v in p["sku_odd"].items()})
        # a run cut by the boundary between two parts is one run
        if k and len(p["change"]) and start and len(heads[k]) and \
                heads[k - 1] is not None and len(heads[k - 1]) and \
                heads[k][0] == heads[k - 1][len(heads[k - 1]) - 1]:
            change[start] = False
            heads[k] = heads[k].slice(1)
        start += len(p["change"])
    sku_idx = np.concatenate([p["sku"] for p in parts]) if parts else np.zeros(0, np.int32)
    qty = np.concatenate([p["qty"] for p in parts]) if parts else np.zeros(0)
    del parts
    n = len(change)
    line_run = (np.cumsum(change, dtype=np.int64) - 1).astype(np.int32)
    del change
    run_pos = np.zeros(0, np.int64)
    ids = orders.order_id
    all_heads = pa.chunked_array([h for h in heads if len(h)], ids.type)
    del heads
    if len(all_heads):
        if len(all_heads) == len(ids) and pc.all(pc.equal(all_heads, ids)).as_py():
            run_pos = np.arange(len(ids), dtype=np.int64)
        else:
            value_set = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
            run_pos = _index_or_minus_one(pc.index_in(all_heads, value_set=value_set))
    raw_pos = run_pos[line_run] if n else np.zeros(0, np.int64)
    del run_pos
    with np.errstate(invalid="ignore"):
        qty_ok = (qty > 0) & (qty == np.floor(qty))
    reason = np.zeros(n, np.int8)
    for mask, k in ((raw_pos < 0, 1), (sku_idx < 0, 2), (~qty_ok, 3)):
        reason[(reason == 0) & mask] = k
    del qty_ok
    pos = orders.to_clean[np.maximum(raw_pos, 0)]
    pos[raw_pos < 0] = -1
    ok = (reason == 0) & (pos >= 0)
    clean = pd.DataFrame({
        "order": pos[ok].astype(np.int32 if len(orders.keep) < 2**31 else np.int64),
        "sku": pd.Categorical.from_codes(sku_idx[ok], categories=pd.Index(
            known_skus.to_pandas(), dtype=str)),
        "quantity": _ints(qty[ok])})
    bad = np.flatnonzero(reason > 0)
    if not len(bad):
        return clean, []
    sku_names = known_skus.to_pylist()
    raw = pd.DataFrame({
        "order_id": all_heads.take(pa.array(line_run[bad])).to_pylist(),
        "sku": [sku_odd[i] if i in sku_odd else sku_names[sku_idx[i]] for i in bad.tolist()],
        "quantity": qty[bad]})
    names = ("", "order line for an unknown order", "order line with an unknown sku",
             "order line quantity is not a positive whole number")
    return clean, quarantine_records("order_lines", raw, np.ones(len(bad), bool),
                                     pd.Series([names[k] for k in reason[bad].tolist()]),
                                     "order_id", "sku")


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
    raw: pd.DataFrame, known_customers: Iterable[str], as_of: dt.date,
    *, now: dt.datetime | None = None,
) -> tuple[pd.DataFrame, list[Quarantined]]:
    """Split raw order rows (text as read) into usable orders and quarantined ones (vectorised;
    the checks every reading path shares, see ``_screen_orders``)."""
    screened = _screen_orders(
        _arrow_text(raw["order_id"]), _arrow_text(raw["customer_id"]),
        _parse_ms(raw["ordered_at"]), _parse_number(raw["total"]),
        pa.array(sorted({str(c) for c in known_customers}), pa.string()), as_of, now)
    return screened.clean(), screened.records(raw["ordered_at"], raw["total"])


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
