"""Reading the shop's data (read-only) and quarantining rows that cannot be used.

The shop database is the shop's, not ours: Tend reads it through the four names in
``shop_schema`` and never writes to it. Shops map their own tables onto those names with SQL
views, so we cannot trust types: timestamps are read as text and parsed here, and every row that
cannot be used is returned as a quarantine record with a reason instead of crashing the night.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import String, and_, cast, inspect, select
from sqlalchemy.engine import make_url

from tend.config import mask_url
from tend.errors import DataError
from tend.shop import schema as s
from tend.store.db import connect

#: An order total above this is treated as a data error (a price typed in cents, a test order).
ABSURD_TOTAL = 1_000_000.0
_IN_CHUNK = 900  # stay under SQLite's bound-parameter limit
_log = logging.getLogger("tend")
T = TypeVar("T")


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
    path = _sqlite_path(url)
    if path is not None:
        import sqlite3

        from sqlalchemy.dialects import sqlite

        # the bounds written as SQLAlchemy stores them (its literal is its bound value)
        sql = str(q.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
        try:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                con.execute("PRAGMA busy_timeout = 60000")
                return sorted(str(r[0]) for r in con.execute(sql))
            finally:
                con.close()
        except sqlite3.Error as exc:
            _log.warning("read-only SQLite query failed (%s); asking through the engine", exc)
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

    A SQLite shop takes a columnar fast path (ADBC into Arrow, in two threads) that returns
    exactly what the generic SQLAlchemy path returns: both hand the same Arrow columns to the
    same checks (``_screen_order_part``, ``_screen_orders``, ``_line_part``, ``_LineMatcher``),
    and rows the fast path cannot type are re-read as text and parsed like the generic path
    parses everything.
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
    checks = _Checks.of(pa.array(sorted(known), pa.string()), as_of, now)
    part = _screen_order_part(_arrow_text(raw["order_id"]), _arrow_text(raw["customer_id"]),
                              _parse_ms(raw["ordered_at"]), _parse_number(raw["total"]), checks)
    screened = _screen_orders([part], checks, raw["ordered_at"], raw["total"])
    del part
    history = History(screened.orders, _empty_lines(), screened.quarantined, len(raw))
    if lines:
        raw_lines = (pd.concat(line_frames, ignore_index=True) if line_frames
                     else pd.DataFrame(columns=_LINE_COLS))
        known_skus = pa.array(sorted(set(skus)), pa.string())
        matcher = _LineMatcher(screened, known_skus)
        matcher.add(_line_part(_arrow_text(raw_lines["order_id"]), _arrow_text(raw_lines["sku"]),
                               _parse_number(raw_lines["quantity"]), known_skus))
        history.lines, bad_lines = matcher.finish()
        history.quarantined += bad_lines
    return history


def _arrow_text(values: pd.Series) -> pa.Array:
    """Values as read (any Python type, None for NULL) as an Arrow string array."""
    return pa.array(pd.Series(values, dtype=object).map(
        lambda v: None if _missing(v) else str(v)).to_numpy(dtype=object), pa.string(),
        from_pandas=True)


#: An unparseable timestamp, in UTC milliseconds: NaT's own int64 value (no valid time has it).
_NAT = np.iinfo(np.int64).min


def _parse_ms(values: pd.Series) -> np.ndarray:
    """Timestamps in any common spelling -> UTC milliseconds as int64 (_NAT: unparseable)."""
    ts = pd.to_datetime(pd.Series(values, dtype=object), utc=True, errors="coerce",
                        format="mixed").dt.round("ms")
    return np.array(ts.dt.as_unit("ms").array.asi8, dtype=np.int64)  # NaT is _NAT


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
# Columns come as SQLite types them. Once the driver has typed a column as text it writes any
# later value as text, as CAST(... AS TEXT) would, so the plain queries need no CAST; a text
# column it typed otherwise, or a number of another type than the first rows', makes the part
# be read again by the careful query, with the odd values as text beside the typed ones,
# parsed like the generic path parses everything. Timestamps always come as text: Arrow parses
# ISO 8601 far faster than SQLite's date functions.
_TOTAL_OK = "typeof({p}total) IN ('integer', 'real')"
_QTY_OK = "typeof({p}quantity) = 'integer'"
_ORDER_TEXT = ("order_id", "customer_id", "ordered_at")
_LINE_TEXT = ("order_id", "sku")
_PLAIN_ORDER_COLS = "order_id, customer_id, ordered_at, total"
_CAREFUL_ORDER_COLS = (
    "CAST(order_id AS TEXT) AS order_id, CAST(customer_id AS TEXT) AS customer_id, "
    "CAST(ordered_at AS TEXT) AS ordered_at, "
    f"CASE WHEN {_TOTAL_OK} THEN total * 1.0 END AS total, "
    f"CASE WHEN {_TOTAL_OK} THEN NULL ELSE CAST(total AS TEXT) END AS total_text").format(p="")
_PLAIN_LINE_COLS = "{p}order_id AS order_id, {p}sku AS sku, {p}quantity AS quantity"
_CAREFUL_LINE_COLS = (
    "CAST({p}order_id AS TEXT) AS order_id, CAST({p}sku AS TEXT) AS sku, "
    f"CASE WHEN {_QTY_OK} THEN {{p}}quantity END AS quantity, "
    f"CASE WHEN {_QTY_OK} THEN NULL ELSE CAST({{p}}quantity AS TEXT) END AS quantity_text")
# A customer subset is one JSON array (see _adbc_fetch): no chunking, the customer_id index
# does the work.
_IN_CUSTOMERS = "WHERE customer_id IN (SELECT value FROM json_each(?))"
# The lines of the customers' orders, found through both indexes (faster than an IN over order
# ids). Like the orders of a subset, they come unsorted with their rowid: sorting the rowids
# in NumPy is cheaper than SQLite's sorter.
_LINES_OF_CUSTOMERS = (
    "SELECT l.rowid AS rid, {cols} FROM orders AS o JOIN order_lines AS l "
    "ON l.order_id = o.order_id WHERE o.customer_id IN (SELECT value FROM json_each(?)){rows}")
_BATCH_ROWS = "131072"  # rows per Arrow batch: the driver's default (1024) costs 2x per value
_ONE_BATCH = str(2**30)  # (the driver takes no more)
#: Rows per part of a full read; the parts are read by two threads (the driver releases the
#: GIL while SQLite steps), so both cores read.
_PART_ROWS = 2_000_000
#: A customer subset at least this large is read in two halves of the orders' rowids, one per
#: thread (a night's ~20k changed customers: ~1M lines, most of the incremental read).
_SPLIT_CUSTOMERS = 2_000
_MMAP_BYTES = 1 << 40  # capped by the SQLite build (2 GiB by default); read-only here


def _adbc_fetch(path: str, sql: str, ids_json: str | None = None, *,
                mmap: bool = True, batch_rows: str | None = None) -> pa.Table:
    """One query into an Arrow table (ADBC's SQLite driver, read-only).

    ``ids_json`` replaces the ``?`` of ``json_each(?)`` as a string literal: with a bound
    parameter the driver holds the GIL while SQLite steps, so two threads would read in turn.
    The literal is ASCII (``json.dumps`` escapes everything else) with its quotes doubled.

    ``mmap``: pages straight from the OS cache instead of one read() system call per page, for
    reads that scan; a subset's index lookups are faster without it, and it would count every
    page they touched in the process's resident memory.

    The driver types each column from the first batch of rows and fails on a later value of
    another type (a column NULL in the first batch is typed as an integer): ``batch_rows``
    (default ``_BATCH_ROWS``) as large as the result makes it type from every row.
    """
    import adbc_driver_sqlite.dbapi as adbc

    if ids_json is not None:
        assert ids_json.isascii()
        sql = sql.replace("json_each(?)", "json_each('" + ids_json.replace("'", "''") + "')")

    with adbc.connect(f"file:{path}?mode=ro") as con, con.cursor() as cur:
        cur.execute("PRAGMA busy_timeout = 60000")  # a writer or a WAL recovery: wait
        cur.fetchall()
        if mmap:
            cur.execute(f"PRAGMA mmap_size = {_MMAP_BYTES}")
            cur.fetchall()
        cur.adbc_statement.set_options(
            **{"adbc.sqlite.query.batch_rows": batch_rows or _BATCH_ROWS})
        cur.execute(sql)
        return cur.fetch_arrow_table()


def _rowid_ranges(path: str, table: str, pieces: int | None = None) -> list[tuple[int, int]]:
    """``table`` cut into rowid ranges [a, b) of about ``_PART_ROWS`` rows (or ``pieces``
    ranges); no range when the table is empty.

    Asked through the driver the reader threads use, never Python's sqlite3 module meanwhile:
    two SQLite libraries in one process do not see each other's locks, so a connection of one
    can take itself for the first and reset the WAL index the other has mapped (a SIGBUS).
    """
    # two subqueries: SQLite answers min() or max() from the b-tree, both at once by a scan
    t = _adbc_fetch(path, f"SELECT (SELECT min(rowid) FROM {table}) AS lo, "
                          f"(SELECT max(rowid) FROM {table}) AS hi")
    lo, hi = t.column("lo")[0].as_py(), t.column("hi")[0].as_py()
    if lo is None:
        return []
    n = pieces or max(1, -(-(hi - lo + 1) // _PART_ROWS))
    cuts = [lo + (hi - lo + 1) * k // n for k in range(n + 1)]
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


def _parts(path: str, table: str) -> list[str]:
    """WHERE clauses that cut ``table`` into rowid ranges of about ``_PART_ROWS`` rows."""
    ranges = _rowid_ranges(path, table)
    return [f"WHERE rowid >= {a} AND rowid < {b}" for a, b in ranges] if ranges else [""]


def order_rows_hint(url: str) -> int:
    """About how many order rows a SQLite shop holds (its largest rowid; no count), 0 when it
    cannot tell cheaply (another database, a view)."""
    path = _sqlite_path(url)
    if path is None:
        return 0
    import sqlite3

    try:  # closed at once, not when the garbage collector gets to it (see _read_sqlite_fast)
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
            return int(con.execute("SELECT max(rowid) FROM orders").fetchone()[0] or 0)
    except sqlite3.Error:
        return 0


def _read_sqlite_fast(url: str, as_of: dt.date, *, now: dt.datetime | None,
                      lines: bool, customer_ids: Sequence[str] | None = None) -> History:
    """The fast path (see ``read_history``).

    A full read is cut into rowid ranges; each part is read and screened row by row by one of
    two threads (SQLite, Arrow and NumPy release the GIL), so the text of 20M lines is never
    held at once and the main thread only joins the parts: the checks across rows (customer
    codes, duplicated order ids), then each part of the lines as it arrives.
    """
    path = _sqlite_path(url)
    assert path is not None
    # The engine's pooled sqlite3 connections to the shop are closed first: Python's sqlite3
    # and ADBC's driver are two copies of SQLite, which must never have the shop open at once
    # in one process (see ``_rowid_ranges``); everything below goes through the driver.
    connect(url).dispose()
    with _pinned(path):
        return _read_sqlite_parts(path, as_of, now=now, lines=lines, customer_ids=customer_ids)


@contextlib.contextmanager
def _pinned(path: str) -> Iterator[None]:
    """One read-only connection held open, with its WAL index mapped, for the whole read.

    The parts open and close connections of their own; without one that outlives them, the
    shop's WAL index would go from one connection to none and back again and again, and a
    connection taking itself for the first can reset it while another thread's is opening
    (seen as "disk I/O error" or "database disk image is malformed" on a shop in WAL mode).
    """
    import adbc_driver_sqlite.dbapi as adbc

    with adbc.connect(f"file:{path}?mode=ro") as con, con.cursor() as cur:
        cur.execute("PRAGMA busy_timeout = 60000")
        cur.fetchall()
        cur.execute("SELECT count(*) FROM sqlite_master")  # a read: the WAL index is mapped
        cur.fetchall()
        yield


def _read_sqlite_parts(path: str, as_of: dt.date, *, now: dt.datetime | None, lines: bool,
                       customer_ids: Sequence[str] | None) -> History:
    from concurrent.futures import ThreadPoolExecutor

    skus = _sorted_unique(_one(_adbc_fetch(
        path, "SELECT CAST(sku AS TEXT) AS sku FROM products").column("sku")), unique=False)
    pool = ThreadPoolExecutor(2)
    try:
        if customer_ids is None:
            order_parts = _parts(path, "orders")
            line_parts = _parts(path, "order_lines") if lines else []
            checks_f = pool.submit(_fetch_checks, path, None, as_of, now)
            order_fs = [pool.submit(_read_order_part, path, w, checks_f) for w in order_parts]
            line_fs = [pool.submit(_read_line_part, path, w, skus) for w in line_parts]
            parts = _results(order_fs)
            checks = checks_f.result()
        else:
            ids = sorted({str(c) for c in customer_ids})  # IN ignores repeats and order
            ids_json = json.dumps(ids)
            # Pieces by the orders' rowids, one per thread: every order row, and so every
            # line joined to it, is in exactly one piece (halves of the customer list would
            # not be exact for every collation a shop's view may have).
            split = len(ids) >= _SPLIT_CUSTOMERS
            mid = _rowid_ranges(path, "orders", 2)[:1] if split else []
            checks_f = pool.submit(_fetch_checks, path, ids_json, as_of, now)
            order_fs = [pool.submit(_read_orders_of, path, r, ids_json, checks_f)
                        for r in _halves(mid[0][1] if mid else None)]
            got = _results(order_fs)
            parts = [part for part, _ in got]
            # the lines in halves of the orders found, so both threads have as much to do
            rid = np.concatenate([r for _, r in got])
            line_fs = [pool.submit(_read_lines_of, path, r, ids_json, skus)
                       for r in _halves(int(rid[len(rid) // 2]) if split and len(rid) else None)
                       ] if lines else []
            del got, rid
            checks = checks_f.result()
        screened = _screen_orders(parts, checks)
        del parts
        history = History(screened.orders, _empty_lines(), screened.quarantined, screened.rows)
        if not lines:
            return history
        matcher = _LineMatcher(screened, skus)
        if customer_ids is None:
            while line_fs:  # each part is let go once matched
                matcher.add(line_fs.pop(0).result())
        else:
            for part in _in_rowid_order(_results(line_fs), skus):
                matcher.add(part)
        history.lines, bad_lines = matcher.finish()
        history.quarantined += bad_lines
        return history
    finally:  # on a failure, parts not started yet are not read for nothing
        pool.shutdown(wait=True, cancel_futures=True)


def _in_rowid_order(pieces: list[tuple[_LinePart, pa.Table]], skus: pa.Array
                    ) -> list[_LinePart]:
    """The pieces of a subset's lines as parts in rowid order: as they are when each piece's
    lines come after the other's (a shop that writes an order's lines after it), else the
    lines of all pieces sorted as one part."""
    ends = [(t.column("rid")[0].as_py(), t.column("rid")[-1].as_py())
            for _, t in pieces if t.num_rows]
    if all(a[1] < b[0] for a, b in itertools.pairwise(ends)):
        return [part for part, _ in pieces]
    t = _by_rid([t.set_column(t.schema.get_field_index("quantity"), "quantity", pa.array(
        t.column("quantity").to_numpy().astype(float))) for _, t in pieces])  # one type
    return [_line_part(_text(t.column("order_id")), _text(t.column("sku")),
                       np.asarray(t.column("quantity").to_numpy()), skus)]


def _results(futures: list[Future[T]]) -> list[T]:
    """The futures' results, in order; the list is emptied so that it does not keep them."""
    out = [f.result() for f in futures]
    futures.clear()
    return out


def _fetch_checks(path: str, ids_json: str | None, as_of: dt.date,
                  now: dt.datetime | None) -> _Checks:
    """The known customers (all, or those of the subset) and the night's bounds."""
    # In the order of the customer_id index (no sort here when the ids are all text).
    where = _IN_CUSTOMERS if ids_json is not None else "ORDER BY customer_id"
    known = _one(_adbc_fetch(path, f"SELECT CAST(customer_id AS TEXT) AS c FROM customers "
                             f"{where}", ids_json, mmap=ids_json is None).column("c"))
    return _Checks.of(known, as_of, now)


def _fetch_typed(path: str, plain: str, careful: str, ids: str | None, numeric: str,
                 texts: Sequence[str], *, mmap: bool = True) -> pa.Table:
    """A part as SQLite typed it, if the text columns came as text and every value of the
    numeric column has one type (the driver types a column from its first rows and refuses a
    value of another type later); otherwise again with the careful query, in one batch so
    that its columns are typed from every row (the odd values may all come late)."""
    try:
        t = _adbc_fetch(path, plain, ids, mmap=mmap)
        typ = t.schema.field(numeric).type
        if not t.num_rows or (
                (pa.types.is_integer(typ) or pa.types.is_floating(typ))
                and all(pa.types.is_string(t.schema.field(c).type)
                        or pa.types.is_large_string(t.schema.field(c).type) for c in texts)):
            return t
    except Exception as exc:  # the driver's "Type mismatch in column ..."
        if "mismatch" not in str(exc).lower():
            raise
    return _adbc_fetch(path, careful, ids, mmap=mmap, batch_rows=_ONE_BATCH)


def _read_order_part(path: str, where: str, checks: Future[_Checks]) -> _OrderPart:
    """One part of a full read of the orders, read and screened (in a reader thread)."""
    t = _orders_table(_fetch_typed(
        path, f"SELECT {_PLAIN_ORDER_COLS} FROM orders {where} ORDER BY rowid",
        f"SELECT {_CAREFUL_ORDER_COLS} FROM orders {where} ORDER BY rowid", None, "total",
        _ORDER_TEXT))
    return _order_part(t, checks.result())


def _halves(cut: int | None) -> list[str]:
    """Conditions that split the orders at rowid ``cut`` (none: one piece)."""
    return [""] if cut is None else [f" AND o.rowid < {cut}", f" AND o.rowid >= {cut}"]


def _read_orders_of(path: str, rows: str, ids_json: str, checks: Future[_Checks]
                    ) -> tuple[_OrderPart, np.ndarray]:
    """The orders of a customer subset in a piece of the rowids, screened (in a reader
    thread), and their rowids."""
    where = f"AS o {_IN_CUSTOMERS}{rows}"
    t = _by_rid([_orders_table(_fetch_typed(
        path, f"SELECT o.rowid AS rid, {_PLAIN_ORDER_COLS} FROM orders {where}",
        f"SELECT o.rowid AS rid, {_CAREFUL_ORDER_COLS} FROM orders {where}", ids_json, "total",
        _ORDER_TEXT, mmap=False))], keep=True)
    return _order_part(t, checks.result()), np.asarray(t.column("rid").to_numpy())


def _orders_table(t: pa.Table) -> pa.Table:
    """Orders as fetched (either query) in one shape: text columns as text, ``total`` as
    float64 (the values SQLite could not type parsed like the generic path parses them) and
    ``total_text``, the text as read of those values (NULL where SQLite typed the total)."""
    text = _text(t.column("total_text")) if "total_text" in t.column_names else None
    odd = np.zeros(0, np.int64) if text is None or text.null_count == len(text) else \
        np.flatnonzero(text.is_valid().to_numpy(zero_copy_only=False))
    total = _floats(t.column("total"))  # (not a view of the fetched batch, see _order_part)
    if len(odd):
        total[odd] = _parse_number(pd.Series(text.take(pa.array(odd)).to_pylist(), dtype=object))
    cols = {"rid": t.column("rid")} if "rid" in t.column_names else {}
    return pa.table({**cols, **{c: _text(t.column(c)) for c in _ORDER_TEXT},
                     "total": pa.array(total),
                     "total_text": pa.nulls(len(total), pa.string()) if text is None else text})


def _read_line_part(path: str, where: str, skus: pa.Array) -> _LinePart:
    """One part of a full read of the lines, read and boiled down (in a reader thread)."""
    t = _fetch_typed(
        path, f"SELECT {_PLAIN_LINE_COLS.format(p='')} FROM order_lines {where} ORDER BY rowid",
        f"SELECT {_CAREFUL_LINE_COLS.format(p='')} FROM order_lines {where} ORDER BY rowid",
        None, "quantity", _LINE_TEXT)
    return _line_part(_text(t.column("order_id")), _text(t.column("sku")), _quantities(t), skus)


def _read_lines_of(path: str, rows: str, ids_json: str, skus: pa.Array
                   ) -> tuple[_LinePart, pa.Table]:
    """The lines of a customer subset's orders in a piece of the orders' rowids, in rowid
    order: boiled down (in a reader thread), and as read with their rowids."""
    t = _fetch_typed(
        path, _LINES_OF_CUSTOMERS.format(cols=_PLAIN_LINE_COLS.format(p="l."), rows=rows),
        _LINES_OF_CUSTOMERS.format(cols=_CAREFUL_LINE_COLS.format(p="l."), rows=rows),
        ids_json, "quantity", _LINE_TEXT, mmap=False)
    t = _by_rid([pa.table({"rid": t.column("rid"), **{c: _text(t.column(c)) for c in _LINE_TEXT},
                           "quantity": pa.array(_quantities(t))})], keep=True)
    return _line_part(_text(t.column("order_id")), _text(t.column("sku")),
                      np.asarray(t.column("quantity").to_numpy()), skus), t


def _quantities(t: pa.Table) -> np.ndarray:
    """Quantities as fetched: whole numbers as SQLite typed them when every one is, else
    float64 (NaN where NULL) with the values SQLite could not type parsed from their text."""
    col = t.column("quantity")
    text = _text(t.column("quantity_text")) if "quantity_text" in t.column_names else None
    if text is None and pa.types.is_integer(col.type) and not col.null_count:
        return np.asarray(col.to_numpy())
    qty = _floats(col)
    if text is not None and text.null_count < len(text):
        odd = np.flatnonzero(text.is_valid().to_numpy(zero_copy_only=False))
        qty[odd] = _parse_number(text.take(pa.array(odd)).to_pandas().astype(object))
    return qty


def _by_rid(tables: list[pa.Table], *, keep: bool = False) -> pa.Table:
    """Pieces of one read as one table in rowid order, as ``ORDER BY rowid`` would give it
    (rows of one rowid, a line joined to two copies of an order id, are alike); without the
    rowids unless ``keep``."""
    t = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    rid = np.asarray(t.column("rid").to_numpy(), dtype=np.int64)
    if len(rid) > 1 and not np.all(rid[1:] > rid[:-1]):
        t = t.take(pa.array(np.argsort(rid, kind="stable")))
    return t if keep else t.drop_columns(["rid"])


def _round_ms(us: np.ndarray) -> np.ndarray:
    """Microseconds -> milliseconds, half to even (what pandas' ``round("ms")`` does)."""
    ms, rest = np.divmod(us, 1000)
    if rest.any():
        ms += (rest > 500) | ((rest == 500) & (ms % 2 == 1))
    return ms


def _ms_text(ms: int) -> str:
    return str(pd.Timestamp(int(ms), unit="ms", tz="UTC"))


def _arrow_ms(text: pa.Array, chunk: int = 65_536) -> np.ndarray:
    """Timestamps as text -> UTC milliseconds as int64 (_NAT: unparseable), exactly as
    ``_parse_ms`` parses them.

    Arrow parses naive ISO 8601 (what SQLAlchemy and most shops store) in C++, a whole part
    at once; when that fails, block by block, and a block with anything else in it (a zone
    offset, a typo) is parsed by pandas like the generic path.
    """
    try:
        ts = pc.cast(text, pa.timestamp("us"))
        us = ts.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        nat = ts.is_null().to_numpy(zero_copy_only=False) if ts.null_count else None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        us = np.empty(len(text), np.int64)
        nat = np.zeros(len(text), bool)
        for start in range(0, len(text), chunk):
            part = text.slice(start, chunk)
            try:
                ts = pc.cast(part, pa.timestamp("us"))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                ms = _parse_ms(part.to_pandas().astype(object))
                bad = ms == _NAT
                us[start : start + len(part)] = np.where(bad, 0, ms) * 1000
                nat[start : start + len(part)] = bad
                continue
            us[start : start + len(part)] = ts.cast(pa.int64()).fill_null(0).to_numpy(
                zero_copy_only=False)
            nat[start : start + len(part)] = ts.is_null().to_numpy(zero_copy_only=False)
    out = _round_ms(us)
    if nat is not None:
        out[nat] = _NAT
    return out


def _floats(col: pa.ChunkedArray, *, writable: bool = True) -> np.ndarray:
    """A numeric column as float64 with NULL as NaN (a copy only when ``writable`` needs one
    or the values are not float64 already)."""
    col = col if pa.types.is_floating(col.type) or pa.types.is_integer(col.type) \
        else pc.cast(col, pa.float64())
    out = np.asarray(col.to_numpy(), dtype=float)
    return out.copy() if writable and not out.flags.writeable else out


def _text(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column the driver typed from no rows at all (an empty table) becomes text."""
    return col if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) \
        else pc.cast(col, pa.string())


def _one(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A text column as one contiguous array (64-bit offsets if it is very large)."""
    if isinstance(col, pa.Array):
        return col if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) \
            else pc.cast(col, pa.string())
    col = _text(col)
    if sum(c.nbytes for c in col.chunks) > 1 << 30:
        col = pc.cast(col, pa.large_string())
    return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)


def _blank(a: pa.Array) -> np.ndarray:
    """NULL, empty or only whitespace: what trimming the whitespace would leave empty, found
    without building the trimmed strings."""
    empty = pc.or_(pc.equal(pc.binary_length(a), 0), pc.utf8_is_space(a))
    return empty.fill_null(True).to_numpy(zero_copy_only=False)


def _index_or_minus_one(a: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return _minus_one(a).astype(np.int64, copy=False)


def _encode(a: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Dictionary-encode: (int32 position of each value in the distinct values, -1 for NULL;
    the distinct values in order of first appearance)."""
    enc = pc.dictionary_encode(a)
    if isinstance(enc, pa.ChunkedArray):  # the chunks share one dictionary
        if enc.num_chunks == 0:
            return np.zeros(0, np.int32), pa.array([], a.type)
        indices = pa.chunked_array([c.indices for c in enc.chunks], pa.int32())
        return _minus_one(indices), enc.chunk(enc.num_chunks - 1).dictionary
    return _minus_one(enc.indices), enc.dictionary


def _copy(col: pa.ChunkedArray) -> pa.Array:
    """The column in memory of its own, as one array."""
    return pa.concat_arrays(col.chunks) if col.num_chunks else pa.array([], col.type)


def _minus_one(a: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Integer positions with NULL as -1, in their own integer type."""
    return np.asarray((a.fill_null(-1) if a.null_count else a).to_numpy(zero_copy_only=False))


def _sorted_unique(a: pa.Array, *, unique: bool = True) -> pa.Array:
    """The values (without NULL when ``unique``, and each once) in byte order. Lists usually
    arrive sorted (from an index): then one comparison pass replaces a hash and a sort."""
    if unique and a.null_count:
        a = a.drop_null()
    if len(a) < 2 or a.null_count:
        pass
    elif pc.all(pc.greater(a.slice(1), a.slice(0, len(a) - 1))).as_py():
        return a
    if unique:
        a = pc.unique(a)
    return a.take(pc.array_sort_indices(a))


def _positions(values: pa.Array, value_set: pa.Array) -> np.ndarray:
    """Position of each of ``values`` in ``value_set`` (-1: absent); both hold distinct values.
    The smaller side is hashed: a part's few thousand customers against a million known ones
    cost a million lookups, not a million-entry hash table per part."""
    if value_set.type != values.type:
        value_set = value_set.cast(values.type)
    if len(values) > len(value_set):
        return pc.index_in(values, value_set=value_set).fill_null(-1).to_numpy(
            zero_copy_only=False)
    where = pc.index_in(value_set, value_set=values).fill_null(-1).to_numpy(
        zero_copy_only=False)
    found = np.flatnonzero(where >= 0)
    out = np.full(len(values), -1, np.int64)
    out[where[found]] = found
    return out


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


@dataclass(frozen=True)
class _Checks:
    """What the order checks need besides the rows: the same for every part of a read."""

    known: pa.Array  # the known customers' ids: sorted, distinct, no NULL
    future_ms: int  # an order at or after this instant (UTC ms) is in the future: quarantined
    end_ms: int  # an order at or after this instant does not exist yet for the night
    future_reason: str

    @classmethod
    def of(cls, known: pa.Array, as_of: dt.date, now: dt.datetime | None) -> _Checks:
        future = future_cutoff(now)
        return cls(_sorted_unique(known), future.value // 1_000_000,
                   pd.Timestamp(end_of_day(as_of)).value // 1_000_000,
                   f"ordered_at in the future (after the run's date, "
                   f"{(future - pd.Timedelta(days=1)).date()} UTC)")


@dataclass
class _OrderPart:
    """A part of the order rows as read, with every check that needs no other row done."""

    order_id: pa.Array  # every row as read
    cust: np.ndarray  # int32: each row's customer as a position in cust_dict (-1: NULL)
    cust_dict: pa.Array  # the part's distinct customer ids
    cust_known: np.ndarray  # each of cust_dict as a position in the known customers, or -1
    ms: np.ndarray  # int64 UTC milliseconds (_NAT: unparseable)
    total: np.ndarray  # float64 (NaN: not a number)
    reason: np.ndarray  # int8 index into _ORDER_REASONS, 0 = usable (duplicates come later)
    keep: np.ndarray  # usable and before the end of the night
    kept_ids: pa.Array  # order_id of the rows kept
    increasing: bool  # _strictly_increasing(order_id)
    ts_text: dict[int, str | None]  # ordered_at as read where it did not parse (fast path)
    total_text: dict[int, str | None]  # total as read where SQLite did not type it (fast path)

    def release(self) -> None:
        """Let go of the per-row arrays once the clean orders hold what they need of them."""
        self.cust = self.ms = self.total = self.reason = self.keep = np.zeros(0, np.int8)
        self.kept_ids = self.order_id.slice(0, 0)


def _order_part(t: pa.Table, checks: _Checks) -> _OrderPart:
    """One part of the orders as fetched (``_orders_table``), screened."""
    ts = t.column("ordered_at")
    ms = _arrow_ms(ts)
    bad_ts = np.flatnonzero(ms == _NAT)
    text = t.column("total_text")
    odd = np.flatnonzero(text.is_valid().to_numpy(zero_copy_only=False)) \
        if text.null_count < len(text) else np.zeros(0, np.int64)
    # A copy of the ids the part keeps: the fetched columns share their memory with the whole
    # batch (the C data interface releases a batch as one), so keeping them would keep the
    # batches' text of every column of every part.
    return _screen_order_part(
        _copy(t.column("order_id")), t.column("customer_id"), ms,
        np.asarray(t.column("total").to_numpy()), checks,
        dict(zip(bad_ts.tolist(), ts.take(pa.array(bad_ts)).to_pylist(), strict=True)),
        dict(zip(odd.tolist(), text.take(pa.array(odd)).to_pylist(), strict=True)))


def _screen_order_part(oid: pa.Array, cid: pa.Array, ms: np.ndarray, total: np.ndarray,
                       checks: _Checks, ts_text: dict[int, str | None] | None = None,
                       total_text: dict[int, str | None] | None = None) -> _OrderPart:
    """The order checks that look at one row at a time (every reading path shares them): a
    reason per row, the first that applies, and which rows exist for the night.

    Customer ids are classified once per distinct id (blank, unknown), not once per row.
    """
    cust, cust_dict = _encode(cid)
    cust_known = _positions(cust_dict, checks.known)
    # per distinct customer id: 2 blank, 3 unknown; the extra last slot is NULL (cust -1)
    per_id = np.where(_blank(cust_dict), 2, np.where(cust_known < 0, 3, 0))
    reason = np.append(per_id, 2).astype(np.int8)[cust]
    reason[_blank(oid)] = 1
    # the checks of the values, the last first so that the first that applies stays
    values = np.zeros(len(ms), np.int8)
    values[ms >= checks.future_ms] = 8  # never _NAT, the smallest int64
    with np.errstate(invalid="ignore"):
        values[total > ABSURD_TOTAL] = 7
        values[total < 0] = 6
    values[np.isnan(total)] = 5
    values[ms == _NAT] = 4
    np.copyto(reason, values, where=reason == 0)
    keep = (reason == 0) & (ms < checks.end_ms)
    return _OrderPart(oid, cust, cust_dict, cust_known, ms, total, reason, keep,
                      oid if keep.all() else oid.filter(pa.array(keep)),
                      _strictly_increasing(oid), ts_text or {}, total_text or {})


@dataclass
class _Screened:
    """Order rows as read, screened: the clean orders, and what ``_LineMatcher`` needs."""

    #: customer_id (categorical over the sorted ids of every row read), order_id, ordered_at
    #: (UTC), total
    orders: pd.DataFrame
    quarantined: list[Quarantined]
    rows: int  # order rows read
    order_id: pa.ChunkedArray  # every row as read
    to_clean: np.ndarray  # row as read -> row of the clean orders whose lines it holds, or -1


def _screen_orders(parts: list[_OrderPart], checks: _Checks,
                   ordered_at: pd.Series | None = None, total: pd.Series | None = None
                   ) -> _Screened:
    """The order checks across rows, on parts screened by ``_screen_order_part``: customers
    as integer codes over the sorted ids of every row read, duplicated order ids, and which
    clean row holds each row's lines. Quarantine records show ``ordered_at`` and ``total`` as
    read when given (the generic path), else as typed (the text as read where it did not type).

    A duplicated order_id keeps its earliest row (then the smallest customer_id, then the first
    read), so the choice does not depend on the order rows come back in.
    """
    sizes = [len(p.order_id) for p in parts]
    offsets = np.cumsum([0, *sizes])
    n = int(offsets[-1])
    typ = pa.large_string() if any(pa.types.is_large_string(p.order_id.type) for p in parts) \
        else pa.string()
    order_id = _chained([p.order_id for p in parts], typ)

    # Customers: the categories are the distinct ids of every row read, sorted. Usually all
    # are known: then they are the known ids (sorted already) that appear.
    known = checks.known
    seen = np.zeros(len(known), bool)
    unknown = []
    for p in parts:
        seen[p.cust_known[p.cust_known >= 0]] = True
        if (p.cust_known < 0).any():
            unknown.append(p.cust_dict.filter(pa.array(p.cust_known < 0)).cast(known.type))
    if unknown:
        cust_ids = _sorted_unique(pa.concat_arrays([known.filter(pa.array(seen)), *unknown]))
        codes = [_positions(p.cust_dict, cust_ids) for p in parts]
    else:
        cust_ids = known if seen.all() else known.filter(pa.array(seen))
        rank = np.cumsum(seen) - 1
        codes = [np.where(p.cust_known >= 0, rank[p.cust_known], -1) for p in parts]
    # each part's customer positions -> codes, with an extra last slot for NULL
    codes = [np.append(c, -1).astype(np.int32) for c in codes]

    # Duplicated order ids (skipped when the ids count up, checked part by part).
    ocode: np.ndarray | None = None
    increasing = all(p.increasing for p in parts) and _strictly_increasing_across(parts, typ)
    if not increasing and any((p.reason == 0).any() for p in parts):
        ocode, odict = _encode(order_id)
        ok = np.concatenate([p.reason == 0 for p in parts])
        counts = np.bincount(ocode[ocode >= 0], minlength=len(odict))
        twins = np.flatnonzero(ok & (ocode >= 0) & (counts[np.maximum(ocode, 0)] > 1))
        if len(twins):
            ms = np.concatenate([p.ms for p in parts])
            cid = np.concatenate([c[p.cust] for c, p in zip(codes, parts, strict=True)])
            # customer codes sort as the ids do
            cand = pd.DataFrame({"oid": ocode[twins], "ms": ms[twins], "cid": cid[twins],
                                 "pos": twins}).sort_values(["ms", "cid", "pos"], kind="stable")
            dup = cand["pos"].to_numpy()[cand["oid"].duplicated(keep="first").to_numpy()]
            for k, p in enumerate(parts):
                mine = dup[(dup >= offsets[k]) & (dup < offsets[k + 1])] - offsets[k]
                if len(mine):
                    p.reason[mine] = 9
                    p.keep[mine] = False
                    p.kept_ids = p.order_id.filter(pa.array(p.keep))
        else:
            ocode = None

    records = _order_records(parts, checks, ordered_at, total)
    keep = np.concatenate([p.keep for p in parts]) if ocode is not None else None
    kept_ids = _chained([p.kept_ids for p in parts], typ)
    kept = [int(np.count_nonzero(p.keep)) for p in parts]
    n_kept = sum(kept)
    itype = np.int32 if n < 2**31 else np.int64
    to_clean = np.empty(n, itype)
    cust_code = np.empty(n_kept, np.int32)
    ms = np.empty(n_kept, np.int64)
    amount = np.empty(n_kept)
    at = 0
    for k, p in enumerate(parts):
        seg = to_clean[offsets[k] : offsets[k + 1]]
        np.cumsum(p.keep, dtype=itype, out=seg)
        seg += at - 1
        seg[~p.keep] = -1
        every = kept[k] == len(p.keep)  # (np.compress with out= is several times slower)
        cust_code[at : at + kept[k]] = codes[k][p.cust if every else p.cust[p.keep]]
        ms[at : at + kept[k]] = p.ms if every else p.ms[p.keep]
        amount[at : at + kept[k]] = p.total if every else p.total[p.keep]
        at += kept[k]
        p.release()  # what is left of the part is its ids, held by the caller's order_id
    if ocode is not None and keep is not None:  # a duplicated id's lines go to the kept copy
        by_id = np.full(int(ocode.max()) + 2, -1, itype)
        by_id[ocode[keep]] = to_clean[keep]
        to_clean = by_id[ocode]  # -1 (no id) indexes the extra slot
    orders = pd.DataFrame({
        "customer_id": pd.Categorical.from_codes(
            cust_code, categories=pd.Index(cust_ids.to_pandas(), dtype=str)),
        "order_id": pd.Series(kept_ids.to_pandas(), dtype=str),
        "ordered_at": pa.array(ms, pa.timestamp("ms", tz="UTC")).to_pandas(),
        "total": amount,
    }, copy=False)
    return _Screened(orders, records, n, order_id, to_clean)


def _strictly_increasing_across(parts: list[_OrderPart], typ: pa.DataType) -> bool:
    """``_strictly_increasing`` across the boundaries between parts (each part checked)."""
    ends = [p.order_id for p in parts if len(p.order_id)]
    return all(_strictly_increasing(_chained([a.slice(len(a) - 1), b.slice(0, 1)], typ))
               for a, b in itertools.pairwise(ends))


def _chained(arrays: Iterable[pa.Array | pa.ChunkedArray], typ: pa.DataType) -> pa.ChunkedArray:
    """Arrays and chunked arrays end to end as one chunked array of ``typ`` (no copy)."""
    chunks = [c for a in arrays for c in (a.chunks if isinstance(a, pa.ChunkedArray) else [a])]
    return pa.chunked_array([c if c.type == typ else c.cast(typ) for c in chunks], typ)


def _order_records(parts: list[_OrderPart], checks: _Checks, ordered_at: pd.Series | None,
                   total: pd.Series | None) -> list[Quarantined]:
    """One record per order row set aside, in the order read (see ``_screen_orders``)."""
    cols: dict[str, list[object]] = {c: [] for c in _ORDER_COLS}
    reasons: list[int] = []
    start = 0
    for p in parts:
        bad = np.flatnonzero(p.reason > 0)
        if len(bad):
            take = pa.array(bad)
            cols["order_id"] += p.order_id.take(take).to_pylist()
            cust = p.cust[bad]
            cols["customer_id"] += p.cust_dict.take(pa.array(cust, mask=cust < 0)).to_pylist()
            cols["ordered_at"] += pd.Series(ordered_at, dtype=object).iloc[
                start + bad].tolist() if ordered_at is not None else [
                p.ts_text[r] if r in p.ts_text else (
                    None if p.ms[r] == _NAT else _ms_text(p.ms[r])) for r in bad.tolist()]
            cols["total"] += pd.Series(total, dtype=object).iloc[
                start + bad].tolist() if total is not None else [
                p.total_text[r] if r in p.total_text else (
                    None if np.isnan(p.total[r]) else str(p.total[r])) for r in bad.tolist()]
            reasons += p.reason[bad].tolist()
        start += len(p.order_id)
    if not reasons:
        return []
    names = [r.replace("{future}", checks.future_reason) for r in _ORDER_REASONS]
    return quarantine_records("orders", pd.DataFrame(cols, dtype=object),
                              np.ones(len(reasons), bool),
                              pd.Series([names[k] for k in reasons]), "order_id")


@dataclass
class _LinePart:
    """A part of the order lines as read, boiled down to what matching them to orders needs."""

    change: np.ndarray  # bool: a run of one order's consecutive lines starts here
    heads: pa.Array  # the order id of each run
    sku: np.ndarray  # int32 position in the sorted catalogue (-1: unknown)
    sku_text: dict[int, str | None]  # the sku as read where it is unknown
    qty: np.ndarray  # whole numbers as typed, or float64 (NaN: not a number)
    reason: np.ndarray  # int8: 2 unknown sku, 3 quantity not a positive whole number, else 0


def _line_part(oid: pa.Array, sku: pa.Array, qty: np.ndarray, skus: pa.Array) -> _LinePart:
    """Order lines as read, boiled down: where a new run of one order's lines starts, the
    order id of each run, the sku as a position in the sorted catalogue (-1: unknown, its text
    kept), the quantity and the checks of the line's own values."""
    n = len(oid)
    change = np.ones(n, bool)
    if n > 1:
        change[1:] = pc.not_equal(oid.slice(1), oid.slice(0, n - 1)).fill_null(True).to_numpy(
            zero_copy_only=False)
    heads = oid.filter(pa.array(change))
    sku_idx = pc.index_in(sku, value_set=skus.cast(sku.type), skip_nulls=True).fill_null(
        -1).to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    unknown = np.flatnonzero(sku_idx < 0)
    with np.errstate(invalid="ignore"):
        whole = (qty > 0) & (qty == np.floor(qty)) if qty.dtype.kind == "f" else qty > 0
    if qty.dtype.kind == "i":  # in 32 bits when they fit: half the memory of 20M quantities
        qty = qty.astype(np.int32 if not len(qty) or (
            qty.min() >= -(2**31) and qty.max() < 2**31) else np.int64)  # (a copy: see _copy)
    return _LinePart(change, heads, sku_idx,
                     dict(zip(unknown.tolist(), sku.take(pa.array(unknown)).to_pylist(),
                              strict=True)),
                     qty, np.where(sku_idx < 0, 2, np.where(whole, 0, 3)).astype(np.int8))


@dataclass
class _Lines:
    """A part of the lines matched to the orders: its clean lines and its bad ones."""

    order: np.ndarray  # row of the clean orders
    sku: np.ndarray
    qty: np.ndarray  # int32, or int64 when ``big``
    big: bool  # a quantity of 2**31 or more
    bad_order_id: list[str | None]
    bad_sku: list[str | None]
    bad_qty: np.ndarray
    bad_reason: np.ndarray


@dataclass
class _Pending:
    """A part of the lines not matched yet, with where it sits among the runs of the read."""

    part: _LinePart
    heads: pa.Array  # its runs' order ids, without a run the previous part started
    first_run: int  # number of runs before it
    merged: bool  # its first lines continue the previous part's last run


class _LineMatcher:
    """Order lines, part by part in the order read, matched to the screened orders.

    Lines are matched to orders run by run (consecutive lines of one order). When the runs
    follow the orders as read — a shop that writes an order's lines after it — run k is order
    row k: each part is compared with its slice of the order ids (one string comparison per
    run) and finished as it arrives, so the parts are not held. A part that does not line up
    is kept and matched at the end, all such parts with one hash lookup per run: what matching
    every run by hash gives, since rows with one id all lead to one clean row. The rule for
    the whole read is the one it always was — the runs line up only if there are as many
    runs as order rows and none differs — so rows a comparison cannot decide (NULL ids) are
    matched at the end by that rule.
    """

    def __init__(self, orders: _Screened, skus: pa.Array) -> None:
        self.ids = orders.order_id
        self.to_clean = orders.to_clean
        self.order_type = np.int32 if len(orders.to_clean) < 2**31 else np.int64
        self.skus = skus
        self.sku_names: list[str] | None = None
        self.done: list[_Lines | _Pending] = []
        self.last_pos: list[int | None] = []  # position of each part's last run, once known
        self.runs = 0
        self.lines = 0
        self.differs = False  # a run differs from its order row, or there are more runs
        self.compared = 0  # runs whose comparison with their order row was not NULL
        self.prev_heads: pa.Array | None = None

    def add(self, p: _LinePart) -> None:
        n, heads = len(p.change), p.heads
        # a run cut by the boundary between two parts is one run
        merged = bool(self.done and n and self.lines and len(heads)
                      and self.prev_heads is not None and len(self.prev_heads)
                      and heads[0] == self.prev_heads[len(self.prev_heads) - 1])
        if merged:
            p.change[0] = False
            heads = heads.slice(1)
        self.prev_heads = heads
        m, lo = len(heads), self.runs
        aligned = True
        if lo + m > len(self.ids):
            self.differs, aligned = True, False
        elif m:
            eq = pc.equal(heads, self.ids.slice(lo, m))
            valid = m - eq.null_count
            same = pc.sum(eq).as_py() or 0
            self.compared += valid
            self.differs |= same < valid
            aligned = same == m
        entry = _Pending(p, heads, lo, merged)
        self.runs += m
        self.lines += n
        prev = self.last_pos[-1] if merged else None
        if aligned and (not merged or prev is not None):
            self.done.append(self._match(entry, np.arange(lo, lo + m), prev))
            self.last_pos.append(lo + m - 1 if m else prev)
        else:
            self.done.append(entry)
            self.last_pos.append(None)

    def _match(self, e: _Pending, run_pos: np.ndarray, prev: int | None) -> _Lines:
        """A part's lines given the order row of each of its runs (and of the previous part's
        last run, which its first lines continue when ``e.merged``)."""
        p = e.part
        run = np.cumsum(p.change, dtype=np.int64)  # position in [previous run] + its runs
        if e.merged:
            run_pos = np.concatenate([[prev], run_pos]).astype(np.int64)
        else:
            run -= 1
        raw_pos = run_pos[run]
        pos = self.to_clean[np.maximum(raw_pos, 0)]
        pos[raw_pos < 0] = -1
        reason = np.where(raw_pos < 0, 1, p.reason).astype(np.int8)
        ok = (reason == 0) & (pos >= 0)
        qty = p.qty[ok]
        big = bool(len(qty)) and bool(qty.max() >= 2**31)
        if qty.dtype.kind == "f":
            qty = qty.astype(np.int64 if big else np.int32)
        elif big and qty.max() >= 2**53:  # the generic path's float round trip, exactly
            qty = qty.astype(float).astype(np.int64)
        else:
            qty = qty.astype(np.int64 if big else np.int32, copy=False)
        bad = np.flatnonzero(reason > 0)
        if len(bad) and self.sku_names is None:
            self.sku_names = self.skus.to_pylist()
        return _Lines(
            pos[ok].astype(self.order_type), p.sku[ok], qty, big,
            p.heads.take(pa.array(run[bad])).to_pylist(),  # a merged run's head is the first
            [p.sku_text[i] if i in p.sku_text else self.sku_names[p.sku[i]]  # type: ignore[index]
             for i in bad.tolist()],
            p.qty[bad].astype(float), reason[bad])

    def finish(self) -> tuple[pd.DataFrame, list[Quarantined]]:
        """(clean lines, quarantined lines) of every part added."""
        pending = [e for e in self.done if isinstance(e, _Pending)]
        if pending:
            if not self.differs and self.compared and self.runs == len(self.ids):
                found = [np.arange(e.first_run, e.first_run + len(e.heads)) for e in pending]
            else:
                heads = [e.heads for e in pending]
                pos = _index_or_minus_one(pc.index_in(
                    _chained(heads, self.ids.type), value_set=self.ids.combine_chunks()))
                found = np.split(pos, np.cumsum([len(h) for h in heads])[:-1])
            by_part = dict(zip(map(id, pending), found, strict=True))
            for k, e in enumerate(self.done):
                if isinstance(e, _Pending):
                    run_pos = by_part[id(e)]
                    prev = self.last_pos[k - 1] if e.merged else None
                    self.done[k] = self._match(e, run_pos, prev)
                    self.last_pos[k] = int(run_pos[-1]) if len(run_pos) else prev
        done = [e for e in self.done if isinstance(e, _Lines)]
        big = any(d.big for d in done)
        qty = [d.qty.astype(np.int64) if big else d.qty for d in done]
        clean = pd.DataFrame({
            "order": np.concatenate([d.order for d in done]) if done else np.zeros(
                0, self.order_type),
            "sku": pd.Categorical.from_codes(
                np.concatenate([d.sku for d in done]) if done else np.zeros(0, np.int32),
                categories=pd.Index(self.skus.to_pandas(), dtype=str)),
            "quantity": np.concatenate(qty) if done else np.zeros(0, np.int32)}, copy=False)
        reasons = [k for d in done for k in d.bad_reason.tolist()]
        if not reasons:
            return clean, []
        raw = pd.DataFrame({"order_id": [v for d in done for v in d.bad_order_id],
                            "sku": [v for d in done for v in d.bad_sku],
                            "quantity": np.concatenate([d.bad_qty for d in done])})
        names = ("", "order line for an unknown order", "order line with an unknown sku",
                 "order line quantity is not a positive whole number")
        return clean, quarantine_records("order_lines", raw, np.ones(len(reasons), bool),
                                         pd.Series([names[k] for k in reasons]),
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
    the checks every reading path shares, see ``_screen_order_part``)."""
    checks = _Checks.of(pa.array(sorted({str(c) for c in known_customers}), pa.string()),
                        as_of, now)
    part = _screen_order_part(_arrow_text(raw["order_id"]), _arrow_text(raw["customer_id"]),
                              _parse_ms(raw["ordered_at"]), _parse_number(raw["total"]), checks)
    screened = _screen_orders([part], checks, raw["ordered_at"], raw["total"])
    return screened.orders, screened.quarantined


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
