"""Per-customer features from order history, maintained incrementally in the contact store.

Each night only customers with new orders since the watermark are recomputed, from their own
full history, so the result is identical to a full rebuild (tested). Everything here is
vectorised over customers: no per-customer Python loop, no ``groupby().apply``.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd

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


def compute_features(orders: pd.DataFrame) -> pd.DataFrame:
    """One row per customer from clean orders (customer_id, order_id, ordered_at UTC, total).

    Intervals are measured between distinct order *days*: two orders on the same day are one
    visit for the purpose of "how often does this customer come back".
    """
    if orders.empty:
        return pd.DataFrame(columns=FEATURE_COLUMNS)
    g = orders.groupby("customer_id", sort=True)
    out = pd.DataFrame(
        {
            "orders_count": g["order_id"].nunique(),
            "first_order_at": g["ordered_at"].min(),
            "last_order_at": g["ordered_at"].max(),
            "total_spent": g["total"].sum(),
        }
    )
    out["avg_order_value"] = out["total_spent"] / out["orders_count"]

    days = (
        orders.assign(day=orders["ordered_at"].dt.floor("D"))[["customer_id", "day"]]
        .drop_duplicates()
        .sort_values(["customer_id", "day"])
    )
    gaps = days.groupby("customer_id")["day"].diff().dt.total_seconds() / 86400.0
    gaps = gaps.groupby(days["customer_id"])
    out["mean_interval_days"] = gaps.mean()
    out["median_interval_days"] = gaps.median()
    out = out.reset_index()
    return out[FEATURE_COLUMNS]


def days_between(later: dt.date, earlier: pd.Series) -> pd.Series:
    """Whole days from each timestamp's UTC date to ``later`` (vectorised)."""
    return (pd.Timestamp(later) - earlier.dt.tz_convert("UTC").dt.tz_localize(None).dt.floor("D")
            ).dt.days
