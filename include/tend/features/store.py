"""The stored features: the night's feature rows written to the contact store, and read back.

One row per customer in ``customer_features``: the base features, the profile and the products
the customer bought, packed (``tend.store.tables.PRODUCT_COLUMNS``: one binary value per column
holding every product's value). A night deletes the changed customers' rows and writes them
again, rewrites the shop's days in ``shop_daily`` from ``since_day`` on, stores the quarantined
rows and moves the watermark, all in one transaction. Reading gives the ``FeatureSet`` the
signals use.

Rows go in and come out as Arrow columns, with no Python object per value; a large SQLite store
is written and read by a helper process (``tend.store.sqlite_process``).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Connection, Float, Integer, LargeBinary, Row, Table, delete, select
from sqlalchemy.engine import make_url

from tend.config import sqlite_file
from tend.errors import DataError
from tend.features.columns import (
    FEATURE_COLUMNS,
    PROFILE_COLUMNS,
    SKU_COLUMNS,
    FeatureColumns,
    FeatureSet,
    day_dates,
)
from tend.shop import read as shop
from tend.store import bulk
from tend.store.db import connect
from tend.store.sqlite_process import SqliteProcess
from tend.store.tables import (
    PRODUCT_COLUMNS,
    customer_features,
    feature_skus,
    ingest_state,
    quarantine,
    shop_daily,
)

#: The row of ``ingest_state`` that holds the features' watermark and night.
WATERMARK = "orders"
_IN_CHUNK = 900

#: A SQLite store is written through ADBC in a helper process for a full rebuild of a shop with
#: more orders than this, or a night with more than a quarter as many changed customers, and
#: read through one when it holds more than a quarter as many customers (a customer's row holds
#: about four products' values); below that, starting a process costs more than it saves.
HELPER_PROCESS_ROWS = 250_000


def write_night(store_url: str, parts: Iterable[FeatureColumns], *, as_of: dt.date,
                run_id: str, stamp: dt.datetime, changed: Sequence[str] | None,
                since_day: dt.date | None, quarantined: Sequence[shop.Quarantined],
                watermark: dt.datetime, writer: SqliteProcess | None = None) -> int:
    """One transaction: the changed customers' feature rows (all of them when ``changed`` is
    None), the shop's days from ``since_day`` on, the quarantined rows and the watermark.
    Returns how many customers' rows were written.

    ``parts`` are the features of consecutive customer ranges
    (``tend.features.compute.feature_parts``): each is written as soon as it is computed, so
    with a helper process writing (a large night on SQLite) the store's work overlaps the
    computation of the next range, and neither process ever holds more than a range's rows.
    Rows go in as Arrow columns with no Python object per value: SQLite through ADBC's bulk
    ingest (a prepared statement bound from the columns in C), PostgreSQL through COPY. Values
    are written in the storage format SQLAlchemy uses for these columns, so every reader sees
    what SQLAlchemy would have written.
    """
    sqlite = make_url(store_url).get_backend_name() == "sqlite"
    qrows = [{"as_of": as_of, "run_id": run_id, "source": q.source, "record_key": q.record_key,
              "reason": q.reason, "payload": json.dumps(q.payload, default=str),
              "created_at": stamp} for q in quarantined]
    state = {"name": WATERMARK, "watermark": watermark, "as_of": as_of, "updated_at": stamp}
    it = iter(parts)
    first = next(it, None)
    codes, new_skus = _sku_codes(store_url, first.sku_ids if first is not None else None)
    written = 0

    def tables() -> Iterator[dict[str, pa.Table]]:
        nonlocal written
        for fc in itertools.chain([first] if first is not None else [], it):
            if fc is not first and not fc.sku_ids.equals(first.sku_ids):  # type: ignore[union-attr]
                raise ValueError("feature parts of one night must share one sku catalogue")
            written += len(fc)
            yield feature_tables(fc, as_of=as_of, stamp=stamp, sqlite=sqlite,
                                 since_day=since_day, sku_codes=codes)

    path = sqlite_file(store_url)
    if path is not None and writer is not None:
        writer.stream(_write_sqlite, (path, changed, since_day, new_skus, qrows, state),
                      tables())
        return written
    # On SQLite a changed customer's row is replaced where it is (one B-tree seek instead of a
    # delete and an insert); only customers left without a row (every order quarantined) are
    # deleted afterwards. PostgreSQL deletes first and COPYs.
    replace = sqlite and changed is not None
    with connect(store_url).begin() as conn:
        if changed is None:
            conn.execute(delete(customer_features))
            conn.execute(delete(shop_daily))
        else:
            if not replace:
                _delete_customers(conn, customer_features, changed)
            conn.execute(delete(shop_daily).where(shop_daily.c.day >= since_day))
        if new_skus:
            conn.execute(feature_skus.insert(), new_skus)
        kept: set[str] = set()
        for part in tables():
            for name, table in part.items():
                _copy_or_insert(conn, name, table, sqlite, replace=replace)
                if replace and name == customer_features.name:
                    kept.update(table.column("customer_id").to_pylist())
        if replace:
            assert changed is not None
            _delete_customers(conn, customer_features, [c for c in changed if c not in kept])
        bulk.insert_ignore(conn, quarantine, qrows)
        conn.execute(delete(ingest_state).where(ingest_state.c.name == WATERMARK))
        conn.execute(ingest_state.insert().values(**state))
    return written


def _sku_codes(store_url: str, sku_ids: pa.Array | None
               ) -> tuple[np.ndarray, list[dict[str, object]]]:
    """The store's code of each of ``sku_ids`` (by position), and the rows of ``feature_skus``
    to add for the skus it has not seen before (next free codes, in sku order).

    Read before the night's transaction: one ingest runs at a time (``tend_ingest`` has
    ``max_active_runs=1``), and should two ever race, the later one's insert of the same codes
    fails on the table's keys, nothing of its night is committed, and its retry reads them."""
    if sku_ids is None or not len(sku_ids):
        return np.zeros(0, np.int32), []
    with connect(store_url).connect() as conn:
        known = conn.execute(select(feature_skus.c.sku, feature_skus.c.code)).all()
    code_of = {str(s): int(c) for s, c in known}
    next_code = max(code_of.values(), default=-1) + 1
    names = sku_ids.to_pylist()
    out = np.empty(len(names), np.int32)
    new: list[dict[str, object]] = []
    for i, name in enumerate(names):
        code = code_of.get(name)
        if code is None:
            code = next_code
            next_code += 1
            new.append({"code": code, "sku": name})
        out[i] = code
    return out, new


def _delete_customers(conn: Connection, tbl: Table, ids: Sequence[str]) -> None:
    if conn.dialect.name == "sqlite":  # one statement, the ids bound as one JSON array
        conn.exec_driver_sql(f"DELETE FROM {tbl.name} WHERE customer_id IN "
                             "(SELECT value FROM json_each(?))", (json.dumps(list(ids)),))
        return
    for i in range(0, len(ids), _IN_CHUNK):
        conn.execute(delete(tbl).where(tbl.c.customer_id.in_(ids[i : i + _IN_CHUNK])))


def _write_sqlite(path: str, changed: Sequence[str] | None, since_day: dt.date | None,
                  new_skus: list[dict[str, object]], qrows: list[dict[str, object]],
                  state: dict[str, object], messages: Iterable[dict[str, pa.Table]]) -> None:
    """The helper process's night (see ``write_night``), in one transaction."""
    import adbc_driver_sqlite.dbapi as adbc
    from sqlalchemy.dialects import sqlite as sqlite_dialect

    dialect = sqlite_dialect.dialect()

    def stored(table: Table, row: dict[str, object]) -> list[object]:
        out = []
        for k, v in row.items():
            proc = table.c[k].type.dialect_impl(dialect).bind_processor(dialect)
            out.append(proc(v) if proc is not None and v is not None else v)
        return out

    def insert(table: Table, rows: list[dict[str, object]], verb: str = "INSERT") -> None:
        if rows:
            cols = list(rows[0])
            cur.executemany(f"{verb} INTO {table.name} ({', '.join(cols)}) "
                            f"VALUES ({', '.join('?' * len(cols))})",
                            [stored(table, r) for r in rows])

    with adbc.connect(path, autocommit=True) as con, con.cursor() as cur:
        # More page cache than the default 2 MB, so dirty pages spill to the WAL less often
        # while inserting; not more, it counts in the helper's memory.
        for pragma in ("busy_timeout = 60000", "synchronous = NORMAL", "cache_size = -65536"):
            cur.execute(f"PRAGMA {pragma}")
            cur.fetchall()
        cur.execute("BEGIN IMMEDIATE")  # like the store's engine: take the write lock first
        try:
            if changed is None:
                for t in (customer_features, shop_daily):
                    cur.execute(f"DELETE FROM {t.name}")
            else:
                cur.execute(f"DELETE FROM {customer_features.name} WHERE customer_id IN "
                            "(SELECT value FROM json_each(?))", (json.dumps(list(changed)),))
                cur.execute("DELETE FROM shop_daily WHERE day >= ?",
                            (stored(shop_daily, {"day": since_day})[0],))
            insert(feature_skus, new_skus)
            for message in messages:
                for name, table in message.items():
                    if table.num_rows:
                        cur.adbc_ingest(name, table, mode="append")
            insert(quarantine, qrows, "INSERT OR IGNORE")
            cur.execute("DELETE FROM ingest_state WHERE name = ?", (WATERMARK,))
            insert(ingest_state, [state])
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")


def _copy_or_insert(conn: Connection, name: str, table: pa.Table, sqlite: bool, *,
                    replace: bool = False) -> None:
    """PostgreSQL: COPY the columns as CSV (no Python object per value). SQLite (a small
    night): the driver's executemany over values already in SQLAlchemy's storage format
    (``replace``: INSERT OR REPLACE)."""
    if not table.num_rows:
        return
    if conn.dialect.name == "postgresql":
        bulk.copy_arrow(conn, name, table)
        return
    cols = table.column_names
    rows = list(zip(*(c.to_pylist() for c in table.columns), strict=True))
    if sqlite:
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        sql = f"{verb} INTO {name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        for i in range(0, len(rows), 50_000):
            conn.exec_driver_sql(sql, rows[i : i + 50_000])
        return
    tbl = {t.name: t for t in (customer_features, shop_daily)}[name]
    for i in range(0, len(rows), 50_000):
        conn.execute(tbl.insert(), [dict(zip(cols, r, strict=True))
                                    for r in rows[i : i + 50_000]])


def _packed(values: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """One binary value per customer: its slice ``offsets[i]:offsets[i + 1]`` of ``values``,
    as raw bytes (no copy of the values)."""
    values = np.ascontiguousarray(values)
    byte_offsets = offsets * values.itemsize
    large = int(byte_offsets[-1]) >= 2**31
    return pa.Array.from_buffers(
        pa.large_binary() if large else pa.binary(), len(offsets) - 1,
        [None, pa.py_buffer(byte_offsets.astype(np.int64 if large else np.int32)),
         pa.py_buffer(values)])


def feature_tables(fc: FeatureColumns, *, as_of: dt.date, stamp: dt.datetime, sqlite: bool,
                   since_day: dt.date | None = None, sku_codes: np.ndarray | None = None
                   ) -> dict[str, pa.Table]:
    """The rows of ``customer_features`` (and of ``shop_daily``, when ``fc`` has days) as
    Arrow tables, in the store's storage format.

    On SQLite that is SQLAlchemy's: dates as ISO text, times as "YYYY-MM-DD HH:MM:SS.ffffff"
    (UTC), NaN as NULL; elsewhere typed dates and UTC timestamps. The products are packed
    (``PRODUCT_COLUMNS``), their skus as ``sku_codes[position in fc.sku_ids]``.
    """
    n = len(fc)
    c = fc.customers

    def const(value: object, typ: pa.DataType, rows: int) -> pa.Array:
        return pa.array([value], typ).take(pa.array(np.zeros(rows, np.int32)))

    def when(us: np.ndarray) -> pa.Array:
        arr = pa.array(us, pa.timestamp("us"))
        # Arrow's text for a µs timestamp is SQLAlchemy's SQLite format exactly (and much
        # faster than strftime)
        return arr.cast(pa.string()) if sqlite else arr.cast(pa.timestamp("us", tz="UTC"))

    def day(days: np.ndarray) -> pa.Array:
        arr = pa.array(np.asarray(days, dtype=np.int32), pa.date32())
        return arr.cast(pa.string()) if sqlite else arr

    def num(values: np.ndarray) -> pa.Array:
        return pa.array(values, from_pandas=True)

    as_of_v = as_of.isoformat() if sqlite else as_of
    stamp_v = stamp.astimezone(dt.UTC).replace(tzinfo=None)
    stamp_v = stamp_v.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else stamp.astimezone(dt.UTC)
    date_t = pa.string() if sqlite else pa.date32()
    time_t = pa.string() if sqlite else pa.timestamp("us", tz="UTC")
    out: dict[str, pa.Table] = {}
    if n:
        season = c["season_sku"]
        sk = fc.skus
        counts = np.bincount(sk["customer_id"], minlength=n) if len(sk["days"]) else \
            np.zeros(n, np.int64)
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        if len(sk["days"]):
            assert sku_codes is not None and len(sku_codes) == len(fc.sku_ids)
            product = {"sku": sku_codes[sk["sku"]], **{k: sk[k] for k in PRODUCT_COLUMNS
                                                         if k != "sku"}}
        else:
            product = {k: np.zeros(0) for k in PRODUCT_COLUMNS}
        out[customer_features.name] = pa.table({
            "customer_id": fc.customer_ids,
            "as_of": const(as_of_v, date_t, n),
            "orders_count": num(c["orders_count"]),
            "first_order_at": when(c["first_order_at"]),
            "last_order_at": when(c["last_order_at"]),
            **{k: num(c[k]) for k in FEATURE_COLUMNS[4:]},
            **{k: num(c[k]) for k in PROFILE_COLUMNS[1:-1]},
            "season_sku": fc.sku_ids.take(pa.array(np.maximum(season, 0), mask=season < 0))
            if len(fc.sku_ids) else pa.nulls(n, pa.string()),
            "products": num(counts.astype(np.int64)),
            **{f"product_{k}": _packed(np.asarray(product[k]).astype(dtype, copy=False),
                                       offsets)
               for k, dtype in PRODUCT_COLUMNS.items()},
            "updated_at": const(stamp_v, time_t, n),
        })
    if fc.daily:
        keep = np.ones(len(fc.daily["day"]), bool) if since_day is None else \
            fc.daily["day"] >= (since_day - dt.date(1970, 1, 1)).days
        out[shop_daily.name] = pa.table({"day": day(fc.daily["day"][keep]),
                                         "orders": num(fc.daily["orders"][keep]),
                                         "revenue": num(fc.daily["revenue"][keep])})
    return out


def read_feature_set(store_url: str) -> FeatureSet:
    """The feature tables as the signals use them (see ``tend.features.columns``): customers
    sorted by id, products by (customer, sku), days by day.

    A large SQLite store is read column-wise through ADBC in a helper process (see
    ``tend.store.sqlite_process.SqliteProcess`` for why not in this one); other stores through
    SQLAlchemy's driver. Either way the rows become one Arrow table and are unpacked by
    ``_unpack``.
    """
    path = sqlite_file(store_url)
    if path is not None and _rows_hint(store_url) > HELPER_PROCESS_ROWS // 4:
        proc = SqliteProcess()
        try:
            got = proc.call(_read_sqlite_tables, path)
        finally:
            proc.close()
        assert isinstance(got, dict)
        cust, skus, daily = got["customer_features"], got["feature_skus"], got["shop_daily"]
    else:
        with connect(store_url).connect() as conn:
            cust = _read(conn, customer_features)
            skus = _read(conn, feature_skus)
            daily = _read(conn, shop_daily)
    return _unpack(cust, skus, daily)


def _read(conn: Connection, tbl: Table) -> pa.Table:
    """A table's rows as the driver returns them (no per-value SQLAlchemy processing), as
    Arrow columns: text, numbers, bytes; dates and times are parsed by ``_unpack``."""
    cols = [c.name for c in tbl.columns]
    rows = conn.exec_driver_sql(f"SELECT {', '.join(cols)} FROM {tbl.name}").fetchall()
    data: dict[str, pa.Array] = {}
    for k, col in enumerate(tbl.columns):
        values = [r[k] for r in rows]
        if isinstance(col.type, LargeBinary):
            data[col.name] = pa.array([bytes(v) for v in values], pa.binary())
        elif isinstance(col.type, Float):
            data[col.name] = pa.array(values, pa.float64(), from_pandas=True)
        elif isinstance(col.type, Integer):
            data[col.name] = pa.array(values, pa.int64())
        else:
            data[col.name] = pa.array([None if v is None else str(v) for v in values],
                                      pa.string())
    return pa.table(data)


def _unpack(cust: pa.Table, sku_table: pa.Table, daily: pa.Table) -> FeatureSet:
    """Stored rows (``customer_features`` with dates and times as text or typed, packed
    products; ``feature_skus``; ``shop_daily``) -> the frames of ``FeatureSet``."""
    n = cust.num_rows
    ids = pc.cast(cust.column("customer_id"), pa.string()).combine_chunks() if n else \
        pa.array([], pa.string())
    if n > 1 and not pc.all(pc.less(ids[:-1], ids[1:])).as_py():  # not read in key order
        cust = cust.take(pc.sort_indices(ids))
        ids = pc.cast(cust.column("customer_id"), pa.string()).combine_chunks()
    frame: dict[str, object] = {"customer_id": pd.Series(ids.to_pandas(), dtype=str)}
    for name in FEATURE_COLUMNS[1:] + PROFILE_COLUMNS[1:]:
        col = cust.column(name) if n else pa.chunked_array([], pa.null())
        if name in ("first_order_at", "last_order_at"):
            frame[name] = _utc(col)
        elif name == "season_sku":
            frame[name] = pd.Series(pc.cast(col, pa.string()).to_pylist(), dtype=object)
        elif name in _INT_COLUMNS:
            frame[name] = pc.cast(col, pa.int64()).to_numpy()
        else:
            frame[name] = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    customers = pd.DataFrame(frame)

    counts = pc.cast(cust.column("products"), pa.int64()).to_numpy() if n else \
        np.zeros(0, np.int64)
    values = {k: _unpacked(cust.column(f"product_{k}") if n else None, counts, dtype, k)
              for k, dtype in PRODUCT_COLUMNS.items()}
    code = pc.cast(sku_table.column("code"), pa.int64()).to_numpy() if sku_table.num_rows \
        else np.zeros(0, np.int64)
    names = np.full(int(code.max()) + 1 if len(code) else 0, None, dtype=object)
    names[code] = pc.cast(sku_table.column("sku"), pa.string()).to_pylist()
    if len(values["sku"]) and (values["sku"].max() >= len(names) or
                               pd.isna(names[values["sku"]]).any()):
        raise DataError("the contact store's features name products it has no code for; "
                        "rebuild them with `tend ingest --full`")
    owner = np.repeat(np.arange(n), counts)
    skus = pd.DataFrame({
        "customer_id": pd.Series(ids.take(pa.array(owner)).to_pandas(), dtype=str),
        "sku": pd.Series(names[values["sku"]], dtype=str),
        "days": values["days"].astype(np.int64),
        "first_day": day_dates(values["first_day"]),
        "last_day": day_dates(values["last_day"]),
        **{k: values[k].astype(np.float64 if k in ("gap_median", "unit_gap_median",
                                                    "phase_cos", "phase_sin") else np.int64)
           for k in SKU_COLUMNS[5:]},
    })
    if daily.num_rows:
        daily = daily.take(pc.sort_indices(daily, [("day", "ascending")]))
    days = pd.DataFrame({
        "day": _dates_of(daily.column("day")) if daily.num_rows else np.zeros(0, object),
        "orders": pc.cast(daily.column("orders"), pa.int64()).to_numpy()
        if daily.num_rows else np.zeros(0, np.int64),
        "revenue": pc.cast(daily.column("revenue"), pa.float64()).to_numpy()
        if daily.num_rows else np.zeros(0),
    })
    return FeatureSet(customers, skus, days)


_INT_COLUMNS = {"orders_count", "order_days", "season_cycles", "season_years"}


def _utc(col: pa.ChunkedArray) -> pd.Series:
    """Stored times (SQLAlchemy's SQLite text, or typed) -> UTC timestamps in µs."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return pd.Series(pd.to_datetime(col.to_pandas(), utc=True, format="ISO8601")
                         ).dt.as_unit("us")
    if pa.types.is_timestamp(col.type):
        return pd.Series(col.to_pandas()).dt.tz_convert("UTC") if col.type.tz else \
            pd.Series(col.to_pandas()).dt.tz_localize("UTC").dt.as_unit("us")
    return pd.Series(pd.to_datetime(col.to_pandas(), utc=True)).dt.as_unit("us")


def _dates_of(col: pa.ChunkedArray) -> np.ndarray:
    """Stored dates (ISO text on SQLite, typed elsewhere) -> datetime.date objects."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        col = pc.cast(pc.cast(col, pa.string()), pa.date32())
    return col.to_pandas(date_as_object=True).to_numpy()


def _unpacked(col: pa.ChunkedArray | None, counts: np.ndarray, dtype: str, name: str
              ) -> np.ndarray:
    """Every customer's values of one packed column, concatenated (customers in row order)."""
    itemsize = np.dtype(dtype).itemsize
    if col is None or not len(counts):
        return np.zeros(0, dtype)
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not (pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)):
        arr = pc.cast(arr, pa.binary())
    offsets, data = bulk.binary_parts(arr)
    if arr.null_count or not np.array_equal(np.diff(offsets), counts * itemsize):
        raise DataError(f"the contact store's product_{name} column does not match its "
                        "products count (a damaged row); rebuild the features with "
                        "`tend ingest --full`")
    return data[offsets[0] : offsets[-1]].view(dtype)


def _rows_hint(store_url: str) -> int:
    """How many customer rows a SQLite store holds, counted only up to just past the helper
    process's threshold (enough to choose, and cheap on a large store)."""
    limit = HELPER_PROCESS_ROWS // 4 + 1
    with connect(store_url).connect() as conn:
        return int(conn.exec_driver_sql(
            f"SELECT count(*) FROM (SELECT 1 FROM {customer_features.name} LIMIT {limit})"
        ).scalar() or 0)


def _read_sqlite_tables(path: str) -> dict[str, pa.Table]:
    """The feature tables of a SQLite store as Arrow (run in the helper process), customers
    in two halves of their key read by two threads (the driver releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    import adbc_driver_sqlite.dbapi as adbc

    # Nullable numbers come with a sentinel for NULL: the driver types a column from its
    # first rows and refuses a later value of another type.
    nullable = {c.name for c in customer_features.columns
                if c.nullable and isinstance(c.type, Float)}

    def fetch(sql: str) -> pa.Table:
        with adbc.connect(f"file:{path}?mode=ro") as con, con.cursor() as cur:
            cur.execute("PRAGMA busy_timeout = 60000")
            cur.fetchall()
            cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": "131072"})
            cur.execute(sql)
            return cur.fetch_arrow_table()

    def customers(where: str) -> pa.Table:
        sel = ", ".join(f"coalesce({c} * 1.0, -1e308 * 10) AS {c}" if c in nullable
                        else f"coalesce(CAST({c} AS TEXT), '') AS {c}" if c == "season_sku"
                        else f"CAST({c} AS TEXT) AS {c}" if c == "customer_id"
                        else c for c in (col.name for col in customer_features.columns))
        t = fetch(f"SELECT {sel} FROM {customer_features.name} {where} ORDER BY customer_id")
        fixed = {}
        for c in t.column_names:
            col = t.column(c)
            if c in nullable:
                col = pc.cast(col, pa.float64())
                col = pc.if_else(pc.equal(col, float("-inf")), None, col)
            elif c == "season_sku":
                col = pc.cast(col, pa.string())
                col = pc.if_else(pc.equal(col, ""), None, col)
            fixed[c] = col
        return pa.table(fixed)

    # through ADBC too: this process must not open the store with a second copy of SQLite
    # (Python's sqlite3) while the driver has it open (see ``SqliteProcess``)
    mid_t = fetch(f"SELECT CAST(customer_id AS TEXT) AS c FROM {customer_features.name} "
                  f"ORDER BY customer_id LIMIT 1 OFFSET (SELECT count(*) / 2 FROM "
                  f"{customer_features.name})")
    mid = (mid_t.column("c")[0].as_py(),) if mid_t.num_rows else None
    cut = "''" if mid is None else "'" + str(mid[0]).replace("'", "''") + "'"
    with ThreadPoolExecutor(2) as pool:
        low = pool.submit(customers, f"WHERE customer_id < {cut}")
        high = pool.submit(customers, f"WHERE customer_id >= {cut}")
        skus = pool.submit(fetch, f"SELECT code, CAST(sku AS TEXT) AS sku FROM "
                           f"{feature_skus.name}")
        daily = pool.submit(fetch, f"SELECT CAST(day AS TEXT) AS day, orders, revenue "
                            f"FROM {shop_daily.name}")
        parts = [p for p in (low.result(), high.result()) if p.num_rows]
        return {customer_features.name: pa.concat_tables(parts, promote_options="permissive")
                if parts else _read_empty(customer_features),
                feature_skus.name: skus.result(), shop_daily.name: daily.result()}


def _read_empty(tbl: Table) -> pa.Table:
    return pa.table({c.name: pa.array([], pa.null()) for c in tbl.columns})


def read_features(store_url: str) -> pd.DataFrame:
    """One row per customer: the base features and the profile."""
    return read_feature_set(store_url).customers


def watermark_row(store_url: str) -> Row[Any] | None:
    """The features' row of ``ingest_state`` (``watermark``, ``as_of``); None before the first
    ingest."""
    with connect(store_url).connect() as conn:
        return conn.execute(
            select(ingest_state).where(ingest_state.c.name == WATERMARK)
        ).first()


def store_as_of(store_url: str) -> dt.date | None:
    """The night the feature tables were last brought to (None before the first ingest)."""
    row = watermark_row(store_url)
    if row is None:
        return None
    value = row.as_of
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value)[:10])
