"""Replenishment: consumables run out; remind the customer shortly before theirs does.

Which products: those with ``replenish_days`` in the catalogue, and those the data shows are
re-bought (at least ``min_product_customers`` customers bought them on two or more days, and
at least ``min_repurchase_share`` of their buyers did). The interval per unit is
``replenish_days``, else the median over customers of (days to the next purchase / units bought
before it) for the product, else for its category; it is scaled by the units last bought. The
customer's own median interval wins once they have bought the product ``min_own_purchases``
times. Due = last purchase + interval; the reminder is due ``lead_days`` before that and valid
``grace_days`` after. Services (``service_interval_days``) are check-ups, not replenishment.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa

from tend.signals import SignalParams, bounded_days, empty_signals, frame, in_window


def product_intervals(skus: pd.DataFrame, products: pd.DataFrame,
                      params: SignalParams | None = None) -> pd.DataFrame:
    """Per replenishable sku: interval_per_unit (days) and where it comes from."""
    p = (params or SignalParams()).replenish
    cat = products.set_index("sku")
    again = skus.loc[skus["days"] >= 2]
    stats = pd.DataFrame({
        "buyers": skus.groupby("sku").size(),
        "rebuyers": again.groupby("sku").size(),
        "data_interval": again.groupby("sku")["unit_gap_median"].median(),
    }).reindex(cat.index)
    stats["rebuyers"] = stats["rebuyers"].fillna(0)
    stats["category"] = cat["category"]
    by_cat = again.assign(category=again["sku"].map(cat["category"])).groupby(
        "category")["unit_gap_median"].median()
    trusted = (stats["rebuyers"] >= p.min_product_customers) & (
        stats["rebuyers"] / stats["buyers"].clip(lower=1) >= p.min_repurchase_share)
    listed = cat["replenish_days"].notna()
    out = pd.DataFrame(index=cat.index)
    out["interval_per_unit"] = np.where(
        listed, cat["replenish_days"],
        np.where(trusted, stats["data_interval"].fillna(stats["category"].map(by_cat)),
                 np.nan))
    out["source"] = np.where(listed, "catalogue", "data")
    out = out.loc[(listed | trusted) & cat["service_interval_days"].isna()
                  & out["interval_per_unit"].notna()]
    return out


def detect(fs: object, products: pd.DataFrame, as_of: dt.date,
           params: SignalParams | None = None) -> pd.DataFrame:
    params = params or SignalParams()
    p = params.replenish
    skus = fs.skus  # type: ignore[attr-defined]
    if skus.empty:
        return empty_signals()
    intervals = product_intervals(skus, products, params)
    rows = skus.loc[skus["sku"].isin(intervals.index)].copy()
    if rows.empty:
        return empty_signals()
    own = (rows["days"] >= p.min_own_purchases) & rows["gap_median"].notna()
    unit = rows["sku"].map(intervals["interval_per_unit"]).astype(float)
    interval = np.where(own, rows["gap_median"], unit * rows["last_quantity"])
    rows["interval"] = bounded_days(interval)
    last = pd.to_datetime(rows["last_day"])
    due_on = last + pd.to_timedelta(rows["interval"], unit="D")
    due = (due_on - pd.Timedelta(days=p.lead_days)).dt.date
    valid = (due_on + pd.Timedelta(days=p.grace_days)).dt.date
    ok = in_window(due, valid, as_of, params.horizon_days)
    rows, due, valid, due_on, own = rows.loc[ok], due[ok], valid[ok], due_on[ok], own[ok]
    if rows.empty:
        return empty_signals()
    names = products.set_index("sku")["name"]
    name = rows["sku"].map(names)
    # Sentences and details as vectorised text (ISO dates, whole numbers): the same strings
    # a per-row f-string and json.dumps(sort_keys=True) make, without a Python loop.
    text = _text
    due_txt = text(pa.array(due_on.to_numpy().astype("datetime64[D]")))
    last_txt = text(pa.array(list(rows["last_day"]), pa.date32()))
    days_txt = text(pa.array(rows["interval"].to_numpy()))
    own_a = own.to_numpy()
    name_txt = pd.Series(name.astype(object).map(str).to_numpy(), dtype=str)
    reason = np.where(
        own_a,
        ("buys " + name_txt + " every " + days_txt + " days; last on " + last_txt
         + ", due around " + due_txt).to_numpy(dtype=object),
        (name_txt + " bought on " + last_txt + " usually lasts about " + days_txt
         + " days; due around " + due_txt).to_numpy(dtype=object))
    detail = ('{"due_on": "' + due_txt + '", "interval_days": ' + days_txt
              + ', "last_bought": "' + last_txt + '", "own_interval": '
              + pd.Series(np.where(own_a, "true", "false"), dtype=str) + "}")
    score = np.where(own, np.minimum(1.0, 0.5 + 0.1 * rows["days"]), 0.5)
    return frame(
        "replenish", rows["customer_id"], score, due, valid, reason, None,
        sku=rows["sku"].tolist(), product_name=name.tolist(),
        detail_json=detail.to_numpy(dtype=object))


def _text(values: pa.Array) -> pd.Series:
    return pd.Series(values.cast(pa.string()).to_pandas(), dtype=str)
