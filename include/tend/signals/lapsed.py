"""Lapsed customers: people who used to buy and have gone quiet for longer than is usual for them.

First version (a later issue replaces the score with a fitted model): a regular is lapsed when
the time since their last order exceeds ``factor`` times their own typical interval (median gap
between order days), and at least ``min_days``; a one-time buyer is lapsed after
``one_time_days``. Customers silent for more than ``max_days`` are left alone: a win-back
message after years is more likely spam than service (and implied consent has expired).

The score is an honest heuristic, not a probability: ``1 - exp(-overdue / typical)`` rises
from 0 as the customer gets more overdue relative to their own rhythm.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tend.features import days_between
from tend.signals import SIGNAL_COLUMNS


@dataclass(frozen=True)
class LapsedParams:
    factor: float = 2.5
    min_days: int = 60
    one_time_days: int = 120
    max_days: int = 730
    valid_days: int = 14


def detect_lapsed(
    features: pd.DataFrame, as_of: dt.date, params: LapsedParams | None = None
) -> pd.DataFrame:
    p = params or LapsedParams()
    if features.empty:
        return pd.DataFrame(columns=[*SIGNAL_COLUMNS, "days_since_last_order", "orders_count",
                                     "last_order_date", "typical_interval_days"])
    f = features
    since = days_between(as_of, f["last_order_at"])
    repeat = f["orders_count"] >= 2
    typical = f["median_interval_days"].where(repeat)
    threshold = np.where(
        repeat, np.maximum(p.factor * typical.fillna(0), p.min_days), p.one_time_days
    )
    lapsed = (since > threshold) & (since <= p.max_days)
    scale = typical.fillna(float(p.one_time_days)).clip(lower=1.0)
    score = 1.0 - np.exp(-(since - threshold).clip(lower=0) / scale)

    last_ts = f["last_order_at"].dt.tz_convert("UTC").dt.floor("D")
    last_day = last_ts.dt.date
    due = (last_ts + pd.to_timedelta(np.ceil(threshold), unit="D")).dt.date
    reason = np.where(
        repeat,
        "last order " + since.astype(str) + " days ago; usually orders every "
        + typical.round().astype("Int64").astype(str) + " days",
        "one order only, " + since.astype(str) + " days ago",
    )
    out = pd.DataFrame(
        {
            "customer_id": f["customer_id"],
            "signal": "lapsed",
            "score": score.round(4),
            "due_date": due,
            "valid_until": as_of + dt.timedelta(days=p.valid_days),
            "reason": reason,
            "days_since_last_order": since,
            "orders_count": f["orders_count"],
            "last_order_date": last_day,
            "typical_interval_days": typical,
        }
    )
    return out.loc[lapsed].reset_index(drop=True)
