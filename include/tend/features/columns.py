"""What the features are: their columns, and the two shapes they come in.

Three tables come out of the computation (``tend.features.compute``):

* ``customers`` — one row per customer with at least one clean order: the base columns
  (``FEATURE_COLUMNS``) and the profile the signals need (``PROFILE_COLUMNS``): the rhythm of
  their visits on the log scale, what they spent on their last visit, and their seasonal window.
* ``skus`` — one row per customer and product bought (``SKU_COLUMNS``): when, how often, how
  much, the customer's own repurchase interval (per unit), and the phase of the purchase days.
* ``daily`` — the shop's clean orders and revenue per UTC day (``DAILY_COLUMNS``): the shop's
  own seasonality, so a customer's window can be compared with it.

``FeatureColumns`` holds them as plain arrays (what the store is written from), ``FeatureSet``
as the frames the signals read. The store keeps them in ``customer_features`` (one row per
customer, the products packed into it; see ``tend.store.tables``) and ``shop_daily``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

FEATURE_COLUMNS = [
    "customer_id",
    "orders_count",
    "first_order_at",
    "last_order_at",
    "total_spent",
    "avg_order_value",
    "mean_interval_days",
    "median_interval_days",
]
PROFILE_COLUMNS = [
    "customer_id",
    "order_days",  # distinct order days (visits)
    "gap_log_mean",  # mean of log(days between visits); NaN with one visit
    "gap_log_var",  # sample variance of those logs; NaN with fewer than three visits
    "last_day_spent",  # spent on the last visit (tells which spend tier was crossed)
    "season_doy",  # centre of the customer's seasonal window, day of the year (1-366)
    "season_r",  # concentration of visits around it, 0..1 (mean resultant length)
    "season_cycles",  # years (cycles) with a visit
    "season_years",  # cycles with a visit inside the window
    "season_share",  # share of visits inside the window
    "season_sku",  # the product most bought inside the window (None without order lines)
]
SKU_COLUMNS = [
    "customer_id",
    "sku",
    "days",  # distinct days the customer bought it
    "first_day",
    "last_day",
    "quantity",  # units in total
    "last_quantity",  # units bought on the last of those days
    "gap_median",  # median days between two purchases of it; NaN when bought once
    "unit_gap_median",  # median of (days to the next purchase / units bought before it)
    "phase_cos",  # sum over purchase days of cos(2 pi day-of-year phase)
    "phase_sin",
    "season_days",  # purchase days inside the customer's seasonal window
]
DAILY_COLUMNS = ["day", "orders", "revenue"]


@dataclass
class FeatureSet:
    customers: pd.DataFrame  # FEATURE_COLUMNS + PROFILE_COLUMNS[1:]
    skus: pd.DataFrame  # SKU_COLUMNS
    daily: pd.DataFrame  # DAILY_COLUMNS


@dataclass
class FeatureColumns:
    """The same features as plain arrays, before any pandas object column exists: what the
    ingest writes to the store (a million customers' dates as Python objects would cost more
    than computing them). ``FeatureSet`` is this, as frames.

    Customers are positions in ``customer_ids`` (sorted); products positions in ``sku_ids``
    (sorted); times are integers: microseconds (orders) or days since 1970-01-01 (days).
    """

    customer_ids: pa.Array
    customers: dict[str, np.ndarray]  # FEATURE/PROFILE columns, first/last_order_at in µs,
    # season_sku as a position in sku_ids (-1: none)
    sku_ids: pa.Array
    skus: dict[str, np.ndarray]  # SKU_COLUMNS, customer_id and sku as positions
    daily: dict[str, np.ndarray]  # DAILY_COLUMNS, day in days

    def __len__(self) -> int:
        return len(self.customer_ids)


def to_frames(fc: FeatureColumns) -> FeatureSet:
    """``FeatureColumns`` as the frames the signals read (see ``FeatureSet``)."""
    customers_cols = [*FEATURE_COLUMNS, *PROFILE_COLUMNS[1:]]
    if not len(fc):
        return FeatureSet(_empty(customers_cols), _empty(SKU_COLUMNS), _empty(DAILY_COLUMNS))
    c = fc.customers
    n = len(fc)
    sku_names = np.asarray(fc.sku_ids.to_pylist(), dtype=object)
    season_sku = pd.Series([None] * n, dtype=object)
    has = c["season_sku"] >= 0
    if has.any():
        season_sku[has] = sku_names[c["season_sku"][has]]
    customers = pd.DataFrame({
        "customer_id": pd.Series(fc.customer_ids.to_pandas(), dtype=str),
        "orders_count": c["orders_count"],
        "first_order_at": pd.to_datetime(c["first_order_at"], unit="us", utc=True),
        "last_order_at": pd.to_datetime(c["last_order_at"], unit="us", utc=True),
        **{k: c[k] for k in customers_cols[4:-1]},
        "season_sku": season_sku,
    })
    sk = fc.skus
    skus = _empty(SKU_COLUMNS)
    if len(sk["days"]):
        skus = pd.DataFrame({
            "customer_id": pd.Series(fc.customer_ids.take(pa.array(sk["customer_id"]))
                                     .to_pandas(), dtype=str),
            "sku": pd.Series(sku_names[sk["sku"]], dtype=str),
            "days": sk["days"],
            "first_day": day_dates(sk["first_day"]),
            "last_day": day_dates(sk["last_day"]),
            **{k: sk[k] for k in SKU_COLUMNS[5:]},
        })
    daily = pd.DataFrame({"day": day_dates(fc.daily["day"]), "orders": fc.daily["orders"],
                          "revenue": fc.daily["revenue"]})
    return FeatureSet(customers, skus, daily)


def day_dates(days: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 -> datetime.date objects, one object made per distinct day (a few
    thousand) and gathered for millions of rows."""
    if not len(days):
        return np.zeros(0, object)
    lo = int(days.min())
    table = pd.to_datetime(np.arange(lo, int(days.max()) + 1), unit="D").date
    return table[np.asarray(days, np.int64) - lo]


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


def empty_columns() -> FeatureColumns:
    """What the features of no orders are (no customers, no products, no days)."""
    return FeatureColumns(pa.array([], pa.string()), {}, pa.array([], pa.string()),
                          {"days": np.zeros(0, np.int64)}, {})
