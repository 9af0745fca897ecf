"""Loyalty milestones and thank-yous, each with its own dates.

* ``first_purchase`` — the first order ever, thanked within a day: due on the order's day,
  valid until the day after.
* ``survey`` — the last order is ``survey_after_days`` old: ask how it went (about its most
  expensive product), valid ``survey_valid_days``.
* ``loyalty_nth_order`` — the customer's order count reached a multiple of ``nth_every`` with an
  order in the last ``recent_days``.
* ``loyalty_tier`` — cumulative spend crossed a tier threshold with the last visit.
* ``anniversary`` — a whole number of years since the first order, for customers who ordered
  within ``anniversary_active_days``: due on the day, valid ``anniversary_valid_days``.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from tend.signals import SignalParams, empty_signals, frame, in_window


def _day(ts: pd.Series) -> pd.Series:
    return ts.dt.tz_convert("UTC").dt.tz_localize(None).dt.floor("D")


def detect(fs: object, products: pd.DataFrame, as_of: dt.date,
           params: SignalParams | None = None) -> pd.DataFrame:
    params = params or SignalParams()
    p = params.loyalty
    c = fs.customers  # type: ignore[attr-defined]
    if c.empty:
        return empty_signals()
    today = pd.Timestamp(as_of)
    first, last = _day(c["first_order_at"]), _day(c["last_order_at"])
    recent = (today - last).dt.days <= p.recent_days
    frames = []

    # Windows are tested on whole-day timestamps; only the rows that pass become dates.
    # first purchase: thank-you within a day
    due_ts, valid_ts = first, first + pd.Timedelta(days=1)
    ok = (c["orders_count"] == 1).to_numpy() & in_window(due_ts, valid_ts, as_of, 0)
    due, valid = due_ts[ok].dt.date, valid_ts[ok].dt.date
    frames.append(frame(
        "first_purchase", c.loc[ok, "customer_id"], np.full(ok.sum(), 0.9), due, valid,
        [f"first order on {d}" for d in due],
        [{"order_date": str(d)} for d in due]))

    # satisfaction survey about the last order
    due_on = last + pd.Timedelta(days=p.survey_after_days)
    valid_ts = due_on + pd.Timedelta(days=p.survey_valid_days)
    ok = in_window(due_on, valid_ts, as_of, params.horizon_days)
    due, valid = due_on[ok].dt.date, valid_ts[ok].dt.date
    sku = _main_product(fs, products, c.loc[ok, "customer_id"], last[ok])
    names = products.set_index("sku")["name"]
    frames.append(frame(
        "survey", c.loc[ok, "customer_id"], np.full(ok.sum(), 0.4), due, valid,
        [f"order of {d:%Y-%m-%d} is {p.survey_after_days} days old: ask how it went"
         for d in last[ok]],
        [{"order_date": f"{d:%Y-%m-%d}", "due_on": str(u)} for d, u in zip(last[ok], due,
                                                                            strict=True)],
        sku=sku, product_name=[names.get(k) if k else None for k in sku]))

    # every nth order
    n = c["orders_count"].to_numpy()
    ok = (n % p.nth_every == 0) & (n > 0) & recent.to_numpy()
    due_ts = last + pd.Timedelta(days=1)
    valid_ts = last + pd.Timedelta(days=p.valid_days)
    in_time = in_window(due_ts, valid_ts, as_of, params.horizon_days)
    ok &= in_time
    frames.append(frame(
        "loyalty_nth_order", c.loc[ok, "customer_id"], np.minimum(1.0, 0.5 + n[ok] / 100.0),
        due_ts[ok].dt.date, valid_ts[ok].dt.date,
        [f"placed their {_ordinal(k)} order on {d:%Y-%m-%d}"
         for k, d in zip(n[ok], last[ok], strict=True)],
        [{"nth": int(k)} for k in n[ok]]))

    # spend tier crossed with the last visit
    spend = c["total_spent"].to_numpy(dtype=float)
    before = spend - c["last_day_spent"].to_numpy(dtype=float)
    tier = np.full(len(c), None, dtype=object)
    for threshold, name in sorted(p.tiers):
        tier[(before < threshold) & (spend >= threshold)] = name
    ok = (tier != None) & recent.to_numpy()  # noqa: E711 - elementwise
    ok &= in_time
    frames.append(frame(
        "loyalty_tier", c.loc[ok, "customer_id"], np.full(ok.sum(), 0.7), due_ts[ok].dt.date,
        valid_ts[ok].dt.date,
        [f"reached the {t} tier: {s:,.2f} spent in total" for t, s in zip(tier[ok], spend[ok],
                                                                            strict=True)],
        [{"tier": t, "spend": round(float(s), 2)} for t, s in zip(tier[ok], spend[ok],
                                                                  strict=True)]))

    # relationship anniversary (this year's, or next year's when this year's has passed)
    years = np.full(len(c), 0)
    anniv = pd.Series(pd.NaT, index=c.index, dtype="datetime64[us]")
    for offset in (0, 1):
        y = as_of.year + offset - first.dt.year
        date = _anniversary(first, as_of.year + offset)
        valid_y = date + pd.Timedelta(days=p.anniversary_valid_days)
        take = anniv.isna() & (valid_y >= today) & (y >= 1)
        anniv[take] = date[take]
        years = np.where(take, y, years)
    active = ((today - last).dt.days <= p.anniversary_active_days).to_numpy()
    valid_ts = anniv + pd.Timedelta(days=p.anniversary_valid_days)
    ok = anniv.notna().to_numpy() & active
    ok[ok] = in_window(anniv[ok], valid_ts[ok], as_of, params.horizon_days)
    frames.append(frame(
        "anniversary", c.loc[ok, "customer_id"], np.full(ok.sum(), 0.5), anniv[ok].dt.date,
        valid_ts[ok].dt.date,
        [f"{int(k)} year{'s' if k > 1 else ''} since their first order on {f:%Y-%m-%d}"
         for k, f in zip(years[ok], first[ok], strict=True)],
        [{"years": int(k), "first_order_date": f"{f:%Y-%m-%d}"}
         for k, f in zip(years[ok], first[ok], strict=True)]))
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else empty_signals()


def _anniversary(first: pd.Series, year: int) -> pd.Series:
    """The first order's month and day in ``year`` (29 February -> 28 February)."""
    day = np.where((first.dt.month == 2) & (first.dt.day == 29), 28, first.dt.day)
    return pd.to_datetime(pd.DataFrame({"year": year, "month": first.dt.month, "day": day}))


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _main_product(fs: object, products: pd.DataFrame, customer_ids: pd.Series,
                  last_day: pd.Series) -> list[str | None]:
    """The most expensive product of each customer's last order day."""
    skus = fs.skus  # type: ignore[attr-defined]
    if skus.empty or customer_ids.empty:
        return [None] * len(customer_ids)
    want = pd.DataFrame({"customer_id": customer_ids.to_numpy(),
                         "last_day": last_day.dt.date.to_numpy()})
    rows = skus.merge(want, on=["customer_id", "last_day"])
    rows["price"] = rows["sku"].map(products.set_index("sku")["price"])
    top = rows.sort_values(["customer_id", "price", "sku"], ascending=[True, False, True]
                           ).drop_duplicates("customer_id").set_index("customer_id")["sku"]
    found = customer_ids.map(top)
    return found.astype(object).where(found.notna(), None).tolist()
