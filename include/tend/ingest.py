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
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Table, delete, select

from tend import shop
from tend.features import (
    DAILY_COLUMNS,
    FEATURE_COLUMNS,
    PROFILE_COLUMNS,
    SKU_COLUMNS,
    FeatureSet,
    compute_feature_set,
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
    fs = compute_feature_set(history.orders, history.lines)
    t_features = time.perf_counter() - clock - t_read
    stamp = ledger.now()
    orders = history.orders
    watermark = orders["ordered_at"].max() if len(orders) else None
    new_watermark = max(
        [w for w in (watermark and watermark.to_pydatetime(),
                     state and _aware(state.watermark)) if w],
        default=shop.end_of_day(as_of) - dt.timedelta(microseconds=1),
    )
    if mode == "full":
        new_watermark = watermark.to_pydatetime() if watermark is not None else new_watermark

    daily = fs.daily
    if since_day is not None:
        daily = daily.loc[pd.to_datetime(daily["day"]) >= pd.Timestamp(since_day)]

    with store.begin() as conn:
        if changed is None:
            for t in (customer_features, customer_profile, customer_sku_features, shop_daily):
                conn.execute(delete(t))
        else:
            for t in (customer_features, customer_profile, customer_sku_features):
                _delete_customers(conn, t, changed)
            conn.execute(delete(shop_daily).where(shop_daily.c.day >= since_day))
        cust = fs.customers.assign(as_of=as_of, updated_at=stamp)
        bulk_insert(conn, customer_features, cust[[*FEATURE_COLUMNS, "as_of", "updated_at"]])
        bulk_insert(conn, customer_profile, cust[[*PROFILE_COLUMNS, "as_of", "updated_at"]])
        bulk_insert(conn, customer_sku_features, fs.skus[SKU_COLUMNS])
        bulk_insert(conn, shop_daily, daily[DAILY_COLUMNS])
        ledger.insert_ignore(conn, quarantine, [
            {"as_of": as_of, "run_id": run_id, "source": q.source, "record_key": q.record_key,
             "reason": q.reason, "payload": json.dumps(q.payload, default=str),
             "created_at": stamp}
            for q in history.quarantined
        ])
        conn.execute(delete(ingest_state).where(ingest_state.c.name == WATERMARK))
        conn.execute(ingest_state.insert().values(
            name=WATERMARK, watermark=new_watermark, as_of=as_of, updated_at=stamp))

    result = IngestResult(
        as_of=as_of, mode=mode, orders_read=history.rows_read,
        changed_customers=len(fs.customers),
        quarantined=Counter(q.reason for q in history.quarantined),
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

def bulk_insert(conn: Connection, tbl: Table, df: pd.DataFrame, chunk: int = 50_000) -> None:
    """Insert a frame whose columns are ``tbl``'s (any subset), fast on SQLite.

    SQLite gets the driver's executemany with values already in SQLAlchemy's storage format
    (ISO text for dates and times); other databases get SQLAlchemy's batched inserts.
    """
    if df.empty:
        return
    cols = list(df.columns)
    sqlite = conn.dialect.name == "sqlite"
    values = [_column_values(df[c], tbl.c[c].type, sqlite) for c in cols]
    rows = list(zip(*values, strict=True))
    if sqlite:
        sql = (f"INSERT INTO {tbl.name} ({', '.join(cols)}) "
               f"VALUES ({', '.join('?' * len(cols))})")
        for i in range(0, len(rows), chunk):
            conn.exec_driver_sql(sql, rows[i : i + chunk])
    else:
        for i in range(0, len(rows), chunk):
            conn.execute(tbl.insert(), [dict(zip(cols, r, strict=True))
                                        for r in rows[i : i + chunk]])


def _column_values(s: pd.Series, sqltype: object, sqlite: bool) -> list[object]:
    """A column as Python values in the form the driver stores (vectorised in Arrow/NumPy)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    name = type(sqltype).__name__
    if name == "DateTime":
        ts = pd.to_datetime(s, utc=True)
        if sqlite:  # SQLAlchemy's SQLite format: "YYYY-MM-DD HH:MM:SS.ffffff"
            arr = pa.array(ts.dt.tz_convert(None).dt.as_unit("us"))
            return pc.strftime(arr, format="%Y-%m-%d %H:%M:%S").to_pylist()
        return [None if pd.isna(v) else v for v in ts.dt.to_pydatetime().tolist()]
    if name == "Date":
        if sqlite:
            return pa.array(pd.to_datetime(s).dt.date, type=pa.date32()).cast(
                pa.string()).to_pylist()
        return [None if v is None or v is pd.NaT else v for v in s.tolist()]
    if name == "Integer":
        return s.astype(np.int64).tolist()
    if name == "Float":
        arr = s.to_numpy(dtype=float, na_value=np.nan)
        out = arr.tolist()
        if np.isnan(arr).any():
            out = [None if v != v else v for v in out]
        return out
    return [None if v is None or (isinstance(v, float) and v != v) else str(v)
            for v in s.tolist()]


def _read(conn: Connection, tbl: Table, columns: Sequence[str]) -> pd.DataFrame:
    # The driver's rows (no per-value SQLAlchemy processing): dates and times are parsed below.
    sql = f"SELECT {', '.join(columns)} FROM {tbl.name}"
    cur = conn.exec_driver_sql(sql)
    return pd.DataFrame(cur.fetchall(), columns=list(columns))


def read_feature_set(store_url: str) -> FeatureSet:
    """The feature tables as the signals use them (see ``tend.features``)."""
    with connect(store_url).connect() as conn:
        base = _read(conn, customer_features, FEATURE_COLUMNS)
        prof = _read(conn, customer_profile, PROFILE_COLUMNS)
        skus = _read(conn, customer_sku_features, SKU_COLUMNS)
        daily = _read(conn, shop_daily, DAILY_COLUMNS)
    cust = base.merge(prof, on="customer_id", how="left")
    for col in ("first_order_at", "last_order_at"):
        cust[col] = pd.to_datetime(cust[col], utc=True, format="ISO8601")
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
    cust = cust.sort_values("customer_id", ignore_index=True)
    for col in ("first_day", "last_day"):
        skus[col] = pd.to_datetime(skus[col]).dt.date
    for col in ("gap_median", "unit_gap_median", "phase_cos", "phase_sin"):
        skus[col] = pd.to_numeric(skus[col]).astype(float)
    for col in ("days", "quantity", "last_quantity", "season_days"):
        skus[col] = pd.to_numeric(skus[col]).astype(np.int64)
    skus = skus.astype({"customer_id": str, "sku": str}).sort_values(
        ["customer_id", "sku"], ignore_index=True)
    daily["day"] = pd.to_datetime(daily["day"]).dt.date
    daily = daily.astype({"orders": np.int64, "revenue": float}).sort_values(
        "day", ignore_index=True)
    return FeatureSet(cust, skus, daily)


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
