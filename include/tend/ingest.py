"""The ingest stage: fold the shop's orders up to a night into the feature tables of the store.

Incremental by default: customers with an order in (watermark - lookback, end of as_of] are
recomputed from their whole history, which equals a full rebuild for them (the lookback catches
orders that reached the shop database late); the shop's daily totals are rewritten from the
first day of that window on. A night earlier than the stored one (a replay) or ``full=True``
rebuilds everything as of that night.

Bad rows never stop a night: they are quarantined with a reason (``tend.shop``), counted in the
task log (``IngestResult.lines``) and stored in the ``quarantine`` table, which ``tend summary``
reports per night.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Connection, Float, Table, delete, select
from sqlalchemy.engine import make_url

from tend import shop
from tend.errors import DataError
from tend.features import (
    DAILY_COLUMNS,
    FEATURE_COLUMNS,
    PROFILE_COLUMNS,
    SKU_COLUMNS,
    FeatureColumns,
    FeatureSet,
    compute_feature_set,
    consume_frames,
    sort_order,
)
from tend.logs import log, table
from tend.store import ledger
from tend.store.db import connect, require_current
from tend.store.tables import (
    customer_features,
    customer_profile,
    customer_sku_features,
    ingest_state,
    quarantine,
    shop_daily,
)

WATERMARK = "orders"
_IN_CHUNK = 900


@dataclass
class IngestResult:
    as_of: dt.date
    mode: str  # "full" | "incremental"
    orders_read: int
    changed_customers: int
    quarantined: Counter[str] = field(default_factory=Counter)

    def lines(self) -> list[str]:
        out = [
            f"ingest {self.as_of} ({self.mode}): {self.orders_read:,} orders read, "
            f"{self.changed_customers:,} customers updated, "
            f"{sum(self.quarantined.values()):,} rows quarantined",
        ]
        if self.quarantined:
            out += table(["quarantined because", "rows"], sorted(self.quarantined.items()))
        return out


def run_ingest(
    shop_url: str,
    store_url: str,
    as_of: dt.date,
    run_id: str,
    *,
    full: bool = False,
    lookback_days: int = 2,
    now: dt.datetime | None = None,
) -> IngestResult:
    """Fold orders up to ``as_of`` into the feature tables (see the module docstring).

    ``now`` is the wall clock of the run (default: now), only used to tell orders dated in the
    future — quarantined — from orders after a replayed night, which simply do not exist yet.
    """
    require_current(store_url)
    shop.require_schema(shop_url)
    store = connect(store_url)
    with store.connect() as conn:
        state = conn.execute(
            select(ingest_state).where(ingest_state.c.name == WATERMARK)
        ).first()

    mode = "full" if full or state is None or as_of < state.as_of else "incremental"
    # A full rebuild of a large shop into a SQLite store writes through a helper process
    # (see ``_SqliteProcess``); started now, its start-up overlaps the read.
    writer = _SqliteProcess() if mode == "full" and _sqlite_store(store_url) and \
        shop.order_rows_hint(shop_url) > HELPER_PROCESS_ROWS else None
    try:
        since_day: dt.date | None = None
        clock = time.perf_counter()
        if mode == "full":
            history = shop.read_history(shop_url, as_of, now=now)
            changed: list[str] | None = None
        else:
            # Day-aligned, so every order of the days we rewrite in shop_daily is read.
            since_day = (_aware(state.watermark) - dt.timedelta(days=lookback_days)).date()
            since = dt.datetime.combine(since_day, dt.time(), tzinfo=dt.UTC) - dt.timedelta(
                microseconds=1)
            changed = shop.changed_customer_ids(shop_url, since, as_of)
            history = shop.read_history(shop_url, as_of, changed, now=now) if changed else \
                shop.History(shop._empty_orders(), shop._empty_lines())

        t_read = time.perf_counter() - clock
        orders = history.orders
        watermark = orders["ordered_at"].max() if len(orders) else None
        rows_read, quarantined = history.rows_read, history.quarantined
        # The features take over the only references to the frames (they need no order ids),
        # and memory the reader's Arrow pool kept goes back.
        frames = [orders.drop(columns="order_id"), history.lines]
        del history, orders
        pa.default_memory_pool().release_unused()
        fc = consume_frames(frames)
        t_features = time.perf_counter() - clock - t_read
        stamp = ledger.now()
        new_watermark = max(
            [w for w in (watermark and watermark.to_pydatetime(),
                         state and _aware(state.watermark)) if w],
            default=shop.end_of_day(as_of) - dt.timedelta(microseconds=1),
        )
        if mode == "full":
            new_watermark = watermark.to_pydatetime() if watermark is not None else new_watermark

        write_night(store_url, fc, as_of=as_of, run_id=run_id, stamp=stamp, changed=changed,
                    since_day=since_day, quarantined=quarantined, watermark=new_watermark,
                    writer=writer)

    finally:
        if writer is not None:
            writer.close()

    result = IngestResult(
        as_of=as_of, mode=mode, orders_read=rows_read,
        changed_customers=len(fc),
        quarantined=Counter(q.reason for q in quarantined),
    )
    for line in result.lines():
        log.info(line)
    t_write = time.perf_counter() - clock - t_read - t_features
    log.info("ingest timings: read and validate %.1fs, features %.1fs, store %.1fs",
             t_read, t_features, t_write)
    return result


def _delete_customers(conn: Connection, tbl: Table, ids: Sequence[str]) -> None:
    if conn.dialect.name == "sqlite":  # one statement, the ids bound as one JSON array
        conn.exec_driver_sql(f"DELETE FROM {tbl.name} WHERE customer_id IN "
                             "(SELECT value FROM json_each(?))", (json.dumps(list(ids)),))
        return
    for i in range(0, len(ids), _IN_CHUNK):
        conn.execute(delete(tbl).where(tbl.c.customer_id.in_(ids[i : i + _IN_CHUNK])))


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def compute_from_shop(shop_url: str, as_of: dt.date, *, now: dt.datetime | None = None
                      ) -> tuple[FeatureSet, shop.History]:
    """Every feature as of ``as_of`` straight from the shop, without a store (analysts, replays:
    only orders up to the end of ``as_of`` exist for the computation)."""
    shop.require_schema(shop_url)
    history = shop.read_history(shop_url, as_of, now=now)
    return compute_feature_set(history.orders, history.lines), history


# -- writing and reading the feature tables ---------------------------------------------------

_TABLES = (customer_features, customer_profile, customer_sku_features)


def write_night(store_url: str, fc: FeatureColumns, *, as_of: dt.date, run_id: str,
                stamp: dt.datetime, changed: Sequence[str] | None, since_day: dt.date | None,
                quarantined: Sequence[shop.Quarantined], watermark: dt.datetime,
                writer: _SqliteProcess | None = None) -> None:
    """One transaction: the changed customers' feature rows (all of them when ``changed`` is
    None), the shop's days from ``since_day`` on, the quarantined rows and the watermark.

    Rows go in as Arrow columns with no Python object per value: SQLite through ADBC's bulk
    ingest (a prepared statement bound from the columns in C), PostgreSQL through COPY. Values
    are written in the storage format SQLAlchemy uses for these columns, so every reader sees
    what SQLAlchemy would have written.
    """
    sqlite = make_url(store_url).get_backend_name() == "sqlite"
    tables = feature_tables(fc, as_of=as_of, stamp=stamp, sqlite=sqlite, since_day=since_day)
    qrows = [{"as_of": as_of, "run_id": run_id, "source": q.source, "record_key": q.record_key,
              "reason": q.reason, "payload": json.dumps(q.payload, default=str),
              "created_at": stamp} for q in quarantined]
    state = {"name": WATERMARK, "watermark": watermark, "as_of": as_of, "updated_at": stamp}
    path = _sqlite_store(store_url)
    rows = sum(t.num_rows for t in tables.values())
    if path is not None and (writer is not None or rows > HELPER_PROCESS_ROWS):
        own = writer is None
        writer = writer or _SqliteProcess()
        try:
            writer.run(_write_sqlite, path, tables, changed, since_day, qrows, state)
        finally:
            if own:
                writer.close()
        return
    with connect(store_url).begin() as conn:
        if changed is None:
            for t in (*_TABLES, shop_daily):
                conn.execute(delete(t))
        else:
            for t in _TABLES:
                _delete_customers(conn, t, changed)
            conn.execute(delete(shop_daily).where(shop_daily.c.day >= since_day))
        for name, table in tables.items():
            _copy_or_insert(conn, name, table, sqlite)
        ledger.insert_ignore(conn, quarantine, qrows)
        conn.execute(delete(ingest_state).where(ingest_state.c.name == WATERMARK))
        conn.execute(ingest_state.insert().values(**state))


def _sqlite_file(url: str) -> str | None:
    u = make_url(url)
    return u.database if u.database and u.database != ":memory:" else None


def _sqlite_store(url: str) -> str | None:
    """The file of a SQLite store (None for other stores and in-memory SQLite)."""
    return _sqlite_file(url) if make_url(url).get_backend_name() == "sqlite" else None


#: Above this many rows a SQLite store is written or read through ADBC in a helper process;
#: below it, starting a process costs more than it saves.
HELPER_PROCESS_ROWS = 250_000


class _SqliteProcess:
    """A fresh Python process that reads or writes a SQLite store through ADBC (the writer is
    started early so its start-up — an interpreter, pandas, pyarrow, the driver — overlaps the
    shop's read).

    ADBC's SQLite driver carries its own copy of SQLite. Two copies of SQLite in one process
    must never open the same database file: POSIX locks belong to the process, so either copy
    closing its file drops the other's locks, and a WAL database is corrupted (SQLite's "How To
    Corrupt", 2.2.1) — the store's engine keeps pooled connections open. In another process
    the driver is just one more well-behaved SQLite client of the store. A plain subprocess
    (not multiprocessing's spawn) so the caller's main module is never re-imported.
    """

    def __init__(self) -> None:
        import subprocess
        import sys

        self._proc = subprocess.Popen(
            [sys.executable, "-c",
             "from tend.ingest import _sqlite_process_main; _sqlite_process_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def run(self, fn: Callable[..., None], *args: object) -> None:
        self.call(fn, *args)

    def call(self, fn: Callable[..., object], *args: object) -> object:
        import pickle

        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:  # straight into the pipe: no second copy of the tables in this process
            pickle.dump((fn, args), self._proc.stdin, protocol=5)
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        out = self._proc.stdout.read()
        code = self._proc.wait()
        if code != 0 or not out:
            raise DataError(f"the store writer process failed (exit status {code}); "
                            "its error is in the task log above")
        failure, result = pickle.loads(out)
        if failure is not None:
            raise DataError(f"the contact store at {path_hint(args)}: {failure}")
        return result

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


def path_hint(args: tuple[object, ...]) -> str:
    return str(args[0]) if args else "?"


def _sqlite_process_main() -> None:
    """The writer process: one pickled (function, arguments) on stdin, None or the error's
    text on stdout."""
    import pickle
    import sys

    fn, args = pickle.load(sys.stdin.buffer)
    failure = result = None
    try:
        result = fn(*args)
    except Exception as exc:  # reported to the parent, which raises it in the task
        failure = f"{exc.__class__.__name__}: {exc}"
    sys.stdout.buffer.write(pickle.dumps((failure, result), protocol=5))
    sys.stdout.flush()


def _write_sqlite(path: str, tables: dict[str, pa.Table], changed: Sequence[str] | None,
                  since_day: dt.date | None, qrows: list[dict[str, object]],
                  state: dict[str, object]) -> None:
    import adbc_driver_sqlite.dbapi as adbc
    from sqlalchemy.dialects import sqlite as sqlite_dialect

    dialect = sqlite_dialect.dialect()

    def stored(table: Table, row: dict[str, object]) -> list[object]:
        out = []
        for k, v in row.items():
            proc = table.c[k].type.dialect_impl(dialect).bind_processor(dialect)
            out.append(proc(v) if proc is not None and v is not None else v)
        return out

    with adbc.connect(path, autocommit=True) as con, con.cursor() as cur:
        # More page cache than the default 2 MB, so dirty pages spill to the WAL less often
        # while inserting; not more, it counts in the helper's memory.
        for pragma in ("busy_timeout = 60000", "synchronous = NORMAL", "cache_size = -65536"):
            cur.execute(f"PRAGMA {pragma}")
            cur.fetchall()
        cur.execute("BEGIN IMMEDIATE")  # like the store's engine: take the write lock first
        try:
            if changed is None:
                for t in (*_TABLES, shop_daily):
                    cur.execute(f"DELETE FROM {t.name}")
            else:
                ids = json.dumps(list(changed))
                for t in _TABLES:
                    cur.execute(f"DELETE FROM {t.name} WHERE customer_id IN "
                                "(SELECT value FROM json_each(?))", (ids,))
                cur.execute("DELETE FROM shop_daily WHERE day >= ?",
                            (stored(shop_daily, {"day": since_day})[0],))
            for name, table in tables.items():
                if table.num_rows:
                    cur.adbc_ingest(name, table, mode="append")
            if qrows:
                cols = list(qrows[0])
                cur.executemany(
                    f"INSERT OR IGNORE INTO quarantine ({', '.join(cols)}) "
                    f"VALUES ({', '.join('?' * len(cols))})",
                    [stored(quarantine, r) for r in qrows])
            cur.execute("DELETE FROM ingest_state WHERE name = ?", (WATERMARK,))
            cols = list(state)
            cur.execute(f"INSERT INTO ingest_state ({', '.join(cols)}) "
                        f"VALUES ({', '.join('?' * len(cols))})", stored(ingest_state, state))
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")


def _copy_or_insert(conn: Connection, name: str, table: pa.Table, sqlite: bool) -> None:
    """PostgreSQL: COPY the columns as CSV (no Python object per value). SQLite (a small
    night): the driver's executemany over values already in SQLAlchemy's storage format."""
    if not table.num_rows:
        return
    if conn.dialect.name == "postgresql":
        ledger.copy_arrow(conn, name, table)
        return
    cols = table.column_names
    rows = list(zip(*(c.to_pylist() for c in table.columns), strict=True))
    if sqlite:
        sql = f"INSERT INTO {name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        for i in range(0, len(rows), 50_000):
            conn.exec_driver_sql(sql, rows[i : i + 50_000])
        return
    tbl = {t.name: t for t in (*_TABLES, shop_daily)}[name]
    for i in range(0, len(rows), 50_000):
        conn.execute(tbl.insert(), [dict(zip(cols, r, strict=True))
                                    for r in rows[i : i + 50_000]])


def feature_tables(fc: FeatureColumns, *, as_of: dt.date, stamp: dt.datetime, sqlite: bool,
                   since_day: dt.date | None = None) -> dict[str, pa.Table]:
    """The four feature tables' rows as Arrow tables, in the store's storage format.

    On SQLite that is SQLAlchemy's: dates as ISO text, times as "YYYY-MM-DD HH:MM:SS.ffffff"
    (UTC), NaN as NULL; elsewhere typed dates and UTC timestamps.
    """
    n = len(fc)
    c = fc.customers

    def const(value: object, typ: pa.DataType, rows: int) -> pa.Array:
        return pa.array([value], typ).take(pa.array(np.zeros(rows, np.int32)))

    def when(us: np.ndarray) -> pa.Array:
        arr = pa.array(us, pa.timestamp("us"))
        # Arrow's text for a µs timestamp is SQLAlchemy's SQLite format exactly (and ten
        # times faster than strftime)
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
    base = {
        "customer_id": fc.customer_ids,
        "as_of": const(as_of_v, date_t, n),
        "orders_count": num(c.get("orders_count", np.zeros(0, np.int64))),
    }
    if n:
        cust = pa.table({
            **base,
            "first_order_at": when(c["first_order_at"]),
            "last_order_at": when(c["last_order_at"]),
            **{k: num(c[k]) for k in FEATURE_COLUMNS[4:]},
            "updated_at": const(stamp_v, time_t, n),
        })
        season = c["season_sku"]
        prof = pa.table({
            "customer_id": fc.customer_ids,
            "as_of": const(as_of_v, date_t, n),
            **{k: num(c[k]) for k in PROFILE_COLUMNS[1:-1]},
            "season_sku": fc.sku_ids.take(pa.array(np.maximum(season, 0), mask=season < 0))
            if len(fc.sku_ids) else pa.nulls(n, pa.string()),
            "updated_at": const(stamp_v, time_t, n),
        })
    else:
        cust = prof = pa.table({"customer_id": pa.array([], pa.string())})
    sk = fc.skus
    if len(sk["days"]):
        skus = pa.table({
            "customer_id": fc.customer_ids.take(pa.array(sk["customer_id"])),
            "sku": fc.sku_ids.take(pa.array(sk["sku"])),
            "days": num(sk["days"]),
            "first_day": day(sk["first_day"]),
            "last_day": day(sk["last_day"]),
            **{k: num(sk[k]) for k in SKU_COLUMNS[5:]},
        })
    else:
        skus = pa.table({"customer_id": pa.array([], pa.string())})
    daily = pa.table({"day": pa.array([], date_t)})
    if fc.daily:
        keep = np.ones(len(fc.daily["day"]), bool) if since_day is None else \
            fc.daily["day"] >= (since_day - dt.date(1970, 1, 1)).days
        daily = pa.table({"day": day(fc.daily["day"][keep]),
                          "orders": num(fc.daily["orders"][keep]),
                          "revenue": num(fc.daily["revenue"][keep])})
    return {"customer_features": cust, "customer_profile": prof,
            "customer_sku_features": skus, "shop_daily": daily}


def _read(conn: Connection, tbl: Table, columns: Sequence[str]) -> pd.DataFrame:
    # The driver's rows (no per-value SQLAlchemy processing): dates and times are parsed below.
    sql = f"SELECT {', '.join(columns)} FROM {tbl.name}"
    cur = conn.exec_driver_sql(sql)
    return pd.DataFrame(cur.fetchall(), columns=list(columns))


def read_feature_set(store_url: str) -> FeatureSet:
    """The feature tables as the signals use them (see ``tend.features``): customers sorted by
    id, products by (customer, sku), days by day.

    A SQLite store is read column-wise through ADBC in a helper process (see
    ``_SqliteProcess`` for why not in this one); other stores through SQLAlchemy.
    """
    path = _sqlite_store(store_url)
    if path is not None and _sku_rows_hint(store_url) > HELPER_PROCESS_ROWS:
        proc = _SqliteProcess()
        try:
            got = proc.call(_read_sqlite_tables, path)
        finally:
            proc.close()
        base, prof, skus, daily = (got[t.name].to_pandas(date_as_object=True)
                                   for t in (*_TABLES, shop_daily))
    else:
        with connect(store_url).connect() as conn:
            base = _read(conn, customer_features, FEATURE_COLUMNS)
            prof = _read(conn, customer_profile, PROFILE_COLUMNS)
            skus = _read(conn, customer_sku_features, SKU_COLUMNS)
            daily = _read(conn, shop_daily, DAILY_COLUMNS)
        base = base.sort_values("customer_id", ignore_index=True)
        prof = prof.sort_values("customer_id", ignore_index=True)
        skus = skus.sort_values(["customer_id", "sku"], ignore_index=True)
        daily = daily.sort_values("day", ignore_index=True)
        for col in ("first_day", "last_day"):
            skus[col] = pd.to_datetime(skus[col]).dt.date
        daily["day"] = pd.to_datetime(daily["day"]).dt.date
    if base["customer_id"].equals(prof["customer_id"]):
        cust = pd.concat([base, prof.drop(columns="customer_id")], axis=1)
    else:
        cust = base.merge(prof, on="customer_id", how="left")
    for col in ("first_order_at", "last_order_at"):
        cust[col] = pd.to_datetime(cust[col], utc=True, format="ISO8601").dt.as_unit("us")
    floats = ["total_spent", "avg_order_value", "mean_interval_days", "median_interval_days",
              "gap_log_mean", "gap_log_var", "last_day_spent", "season_doy", "season_r",
              "season_share"]
    for col in floats:
        cust[col] = pd.to_numeric(cust[col]).astype(float)
    for col in ("orders_count", "order_days", "season_cycles", "season_years"):
        cust[col] = pd.to_numeric(cust[col]).astype(np.int64)
    cust["customer_id"] = cust["customer_id"].astype(str)
    cust["season_sku"] = cust["season_sku"].astype(object).where(cust["season_sku"].notna(),
                                                                  None)
    for col in ("gap_median", "unit_gap_median", "phase_cos", "phase_sin"):
        skus[col] = pd.to_numeric(skus[col]).astype(float)
    for col in ("days", "quantity", "last_quantity", "season_days"):
        skus[col] = pd.to_numeric(skus[col]).astype(np.int64)
    skus = skus.astype({"customer_id": str, "sku": str})
    daily = daily.astype({"orders": np.int64, "revenue": float})
    return FeatureSet(cust, skus, daily)


def _sku_rows_hint(store_url: str) -> int:
    """How many product rows a SQLite store holds, counted only up to just past the helper
    process's threshold (enough to choose, and cheap on a large store)."""
    with connect(store_url).connect() as conn:
        return int(conn.exec_driver_sql(
            f"SELECT count(*) FROM (SELECT 1 FROM {customer_sku_features.name} "
            f"LIMIT {HELPER_PROCESS_ROWS + 1})").scalar() or 0)


def _read_sqlite_tables(path: str) -> dict[str, pa.Table]:
    """The four feature tables of a SQLite store as Arrow (run in the helper process), sorted,
    dates and times typed from SQLAlchemy's text format. Two threads read (the driver releases
    the GIL), the largest table in two key ranges; sorting happens here, not in SQLite."""
    from concurrent.futures import ThreadPoolExecutor

    import adbc_driver_sqlite.dbapi as adbc

    cols = {customer_features.name: FEATURE_COLUMNS, customer_profile.name: PROFILE_COLUMNS,
            customer_sku_features.name: SKU_COLUMNS, shop_daily.name: DAILY_COLUMNS}
    # Nullable numbers come with a sentinel for NULL: the driver types a column from its
    # first rows and refuses a later value of another type.
    nullable = {c.name for t in (*_TABLES, shop_daily) for c in t.columns
                if c.nullable and isinstance(c.type, Float)}

    def fetch(name: str, where: str) -> pa.Table:
        sel = ", ".join(f"coalesce({c} * 1.0, -1e308 * 10) AS {c}" if c in nullable
                        else f"coalesce(CAST({c} AS TEXT), '') AS {c}" if c == "season_sku"
                        else f"CAST({c} AS TEXT) AS {c}" if c in ("customer_id", "sku")
                        else c for c in cols[name])
        with adbc.connect(f"file:{path}?mode=ro") as con, con.cursor() as cur:
            cur.execute("PRAGMA busy_timeout = 60000")
            cur.fetchall()
            cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": "131072"})
            cur.execute(f"SELECT {sel} FROM {name} {where}")
            t = cur.fetch_arrow_table()
        fixed = {}
        for c in t.column_names:
            col = t.column(c)
            if c in nullable:
                col = pc.cast(col, pa.float64())
                col = pc.if_else(pc.equal(col, float("-inf")), None, col)
            elif c == "season_sku":
                col = pc.cast(col, pa.string())
                col = pc.if_else(pc.equal(col, ""), None, col)
            elif c in ("customer_id", "sku"):
                col = pc.cast(col, pa.string())
            elif c in ("first_day", "last_day", "day"):
                col = pc.cast(pc.cast(col, pa.string()), pa.date32())
            elif c in ("first_order_at", "last_order_at"):
                col = pc.cast(pc.cast(col, pa.string()), pa.timestamp("us"))
            fixed[c] = col
        return pa.table(fixed) if fixed else pa.table({c: pa.array([]) for c in cols[name]})

    import sqlite3

    # The product table in two halves of its key (the tables are clustered by key: WITHOUT
    # ROWID, migration 0008), split at the middle customer.
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
        con.execute("PRAGMA busy_timeout = 60000")
        mid = con.execute("SELECT customer_id FROM customer_features ORDER BY customer_id "
                          "LIMIT 1 OFFSET (SELECT count(*) / 2 FROM customer_features)"
                          ).fetchone()
    cut = "''" if mid is None else "'" + str(mid[0]).replace("'", "''") + "'"
    jobs = [(customer_sku_features.name, f"WHERE customer_id < {cut}"),
            (customer_features.name, ""), (customer_profile.name, ""),
            (customer_sku_features.name, f"WHERE customer_id >= {cut}"), (shop_daily.name, "")]
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda job: fetch(*job), jobs))
    out = {customer_features.name: got[1], customer_profile.name: got[2],
           shop_daily.name: got[4]}
    for name, key in ((customer_features.name, "customer_id"),
                      (customer_profile.name, "customer_id"), (shop_daily.name, "day")):
        t = out[name]
        out[name] = t.take(pc.sort_indices(t.column(key))) if t.num_rows else t
    skus = pa.concat_tables([got[0], got[3]])
    if skus.num_rows:
        ids = out[customer_features.name].column("customer_id").combine_chunks()
        cust = pc.index_in(skus.column("customer_id"), value_set=ids)
        if cust.null_count:  # not every product row has a customer row: sort as text
            order = pc.sort_indices(skus, [("customer_id", "ascending"), ("sku", "ascending")])
        else:
            names = pc.unique(skus.column("sku")).sort()
            sku = pc.index_in(skus.column("sku"), value_set=names)
            order = pa.array(sort_order(cust.to_numpy(zero_copy_only=False),
                                        sku.to_numpy(zero_copy_only=False)))
        skus = skus.take(order)
    out[customer_sku_features.name] = skus
    return out


def read_features(store_url: str) -> pd.DataFrame:
    """One row per customer: the base features and the profile."""
    return read_feature_set(store_url).customers


def store_as_of(store_url: str) -> dt.date | None:
    """The night the feature tables were last brought to (None before the first ingest)."""
    with connect(store_url).connect() as conn:
        row = conn.execute(select(ingest_state.c.as_of)
                           .where(ingest_state.c.name == WATERMARK)).first()
    if row is None:
        return None
    value = row[0]
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value)[:10])
