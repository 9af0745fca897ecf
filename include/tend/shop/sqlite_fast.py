"""The columnar fast path for a SQLite shop: ADBC into Arrow, in two reader threads.

It returns exactly what the generic SQLAlchemy path of ``read`` returns, because both hand the
same Arrow columns to the same checks (``screen``). Columns come as SQLite types them. Once
the driver has typed a column as text it writes any later value as text, as CAST(... AS TEXT)
would, so the plain queries need no CAST; a text column it typed otherwise, or a number of
another type than the first rows', makes the part be read again by the careful query, with
the odd values as text beside the typed ones, parsed like the generic path parses everything.
Timestamps always come as text: Arrow parses ISO 8601 faster than SQLite's date functions.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa

from tend.config import sqlite_file
from tend.shop.columns import (
    _NAT,
    _arrow_ms,
    _copy,
    _floats,
    _one,
    _parse_number,
    _sorted_unique,
    _text,
)
from tend.shop.screen import (
    History,
    _Checks,
    _empty_lines,
    _line_part,
    _LineMatcher,
    _LinePart,
    _OrderPart,
    _screen_order_part,
    _screen_orders,
    usable_ids,
)
from tend.store.db import connect

T = TypeVar("T")
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
_BATCH_ROWS = "131072"  # rows per Arrow batch: the driver's default (1024) is slow per value
_ONE_BATCH = str(2**30)  # (the driver takes no more)
#: Rows per part of a full read; the parts are read by two threads (the driver releases the
#: GIL while SQLite steps), so both cores read.
_PART_ROWS = 2_000_000
#: A customer subset at least this large is read in two halves of the orders' rowids, one per
#: thread (a night's changed customers: their lines are most of the incremental read).
_SPLIT_CUSTOMERS = 2_000
_MMAP_BYTES = 1 << 40  # capped by the SQLite build (2 GiB by default); read-only here


def _read_sqlite_fast(url: str, as_of: dt.date, *, now: dt.datetime | None,
                      lines: bool, customer_ids: Sequence[str] | None = None) -> History:
    """The fast path (see ``read_history``).

    A full read is cut into rowid ranges; each part is read and screened row by row by one of
    two threads (SQLite, Arrow and NumPy release the GIL), so the text of every line is never
    held at once and the main thread only joins the parts: the checks across rows (customer
    codes, duplicated order ids), then each part of the lines as it arrives.
    """
    path = sqlite_file(url)
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

    skus = usable_ids(_sorted_unique(_one(_adbc_fetch(
        path, "SELECT CAST(sku AS TEXT) AS sku FROM products").column("sku"))),
        "products", "sku")
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
