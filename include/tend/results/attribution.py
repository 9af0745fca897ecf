"""Attribution: which contacts (and which holdouts) were followed by an order.

The unit is an **exposure**: a customer and a program in a holdout period (the calendar quarter
in which the holdout draw keeps a customer in or out of a program, tend.programs.caps), in one
of two groups:

* ``contacted``: the program's message to the customer was ``sent`` (the contact ledger);
* ``held_out``: the customer was eligible, drew the control group and was logged ``held_out``
  (the decision log), so nothing was sent.

The draw is made per (customer, program, quarter), so that is the experiment's unit, and a
customer counts once per program and quarter, from their first night of it: a held-out customer
whose signal fires again the next night is logged ``held_out`` again, while a contacted one is
kept quiet by the program's cooldown, so counting every night would give the holdout many more
chances to "respond" than the contacted group. A unit belongs to the month of its first night.

The same rule decides a response in both groups: **an order placed on one of the
``window_days`` days after the night** (the night's own orders were already known when it
decided). The window is the program's ``attribution_days`` (tend.programs.registry). What the
contacted group buys beyond what the held-out group buys is what the contact caused.

A **direct response** is an order in the window that redeemed the program's voucher (a
``discount_code`` starting with the offer's ``code_prefix``), when the shop's orders carry
discount codes. Held-out customers never receive a code, so direct responses are reported
beside the lift, never in it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import numpy as np
import pandas as pd

from tend.programs.caps import holdout_period

UNIT_KEY = ["program", "customer_id", "period"]
GROUPS = ("contacted", "held_out")


def period_start(day: dt.date) -> dt.date:
    """The first night of ``day``'s holdout period (its calendar quarter): exposures must be
    read from there for ``units`` to know who was already exposed before a report's range."""
    return dt.date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)


def units(exposures: pd.DataFrame) -> pd.DataFrame:
    """One row per (program, customer, holdout period): the first exposure of it, with its
    ``period`` and ``month``.

    ``exposures``: customer_id, program, night (date), group, message_id (from
    ``tend.store.ledger.exposures``), read from the start of a period. When a customer has both
    kinds on one night (a holdout share changed mid-quarter), the contact wins: it is the one
    that can have caused something.
    """
    if exposures.empty:
        return exposures.assign(period=pd.Series(dtype=object),
                                month=pd.Series(dtype=object)).reset_index(drop=True)
    e = exposures.copy()
    nights = pd.Series(e["night"].unique())  # a few nights, many rows: label each night once
    e["period"] = e["night"].map(dict(zip(nights, nights.map(holdout_period), strict=True)))
    e["month"] = e["night"].map(dict(zip(nights, nights.map(lambda d: f"{d:%Y-%m}"),
                                         strict=True)))
    e["_rank"] = (e["group"] != "contacted").astype(int)
    e = e.sort_values(["night", "_rank"], kind="stable")
    return e.drop_duplicates(UNIT_KEY, keep="first").drop(columns="_rank").reset_index(drop=True)


def attribute(exposure_units: pd.DataFrame, orders: pd.DataFrame, windows: Mapping[str, int],
              *, until: dt.date, code_prefixes: Mapping[str, str] | None = None
              ) -> pd.DataFrame:
    """Each unit with what followed it: ``responded``, ``revenue`` (the orders' totals in the
    window), ``orders``, ``direct`` (a voucher of the program redeemed in the window) and
    ``window_open`` (the window ends after ``until``, the last day whose orders are known).

    ``orders``: customer_id, ordered_at (UTC timestamps), total, and optionally
    discount_code. ``windows``: days per program (a program not listed gets 7).
    """
    u = exposure_units.reset_index(drop=True).copy()
    u["window_days"] = u["program"].map(lambda p: int(windows.get(p, 7))).astype(int)
    nights = pd.to_datetime(pd.Series(u["night"], dtype=object))
    u["window_end"] = (nights + pd.to_timedelta(u["window_days"], unit="D")).dt.date
    u["window_open"] = u["window_end"] > until
    for col, dtype in (("responded", bool), ("direct", bool), ("orders", np.int64),
                       ("revenue", float)):
        u[col] = np.zeros(len(u), dtype=dtype)
    if u.empty or orders.empty:
        return u
    o = orders[["customer_id", "ordered_at", "total"]].copy()
    o["code"] = (orders["discount_code"] if "discount_code" in orders
                 else pd.Series([None] * len(orders), index=orders.index))
    o["customer_id"] = o["customer_id"].astype(str)
    o["day"] = pd.to_datetime(o["ordered_at"], utc=True).dt.tz_localize(None).dt.normalize()
    o = o.loc[o["day"] <= pd.Timestamp(until)]
    pairs = u[["customer_id", "program", "night", "window_end"]].reset_index(names="unit").merge(
        o[["customer_id", "day", "total", "code"]], on="customer_id", how="inner")
    if pairs.empty:
        return u
    night = pd.to_datetime(pd.Series(pairs["night"], dtype=object))
    end = pd.to_datetime(pd.Series(pairs["window_end"], dtype=object))
    inside = (pairs["day"] > night) & (pairs["day"] <= end)
    hits = pairs.loc[inside]
    if hits.empty:
        return u
    per_unit = hits.groupby("unit").agg(orders=("total", "size"), revenue=("total", "sum"))
    u.loc[per_unit.index, "orders"] = per_unit["orders"].to_numpy()
    u.loc[per_unit.index, "revenue"] = per_unit["revenue"].astype(float).to_numpy()
    u.loc[per_unit.index, "responded"] = True
    prefixes = code_prefixes or {}
    if prefixes:
        wanted = hits["program"].map(lambda p: f"{prefixes[p]}-" if p in prefixes else None)
        codes = hits["code"].astype(object)
        redeemed = [isinstance(c, str) and isinstance(w, str) and c.upper().startswith(w.upper())
                    for c, w in zip(codes, wanted, strict=True)]
        direct_units = hits.loc[redeemed, "unit"].unique()
        u.loc[direct_units, "direct"] = True
    return u


def opted_out(contacted: pd.DataFrame, opt_outs: pd.DataFrame) -> pd.DataFrame:
    """Per contacted unit: ``unsubscribed`` and ``complained`` when the customer did so about
    that message (its id), or, when the record names no message, from the night of the contact
    to the end of its attribution window."""
    c = contacted.reset_index(drop=True).copy()
    c["unsubscribed"] = False
    c["complained"] = False
    if c.empty or opt_outs.empty:
        return c
    o = opt_outs.copy()
    o["day"] = pd.to_datetime(o["at"], utc=True).dt.tz_localize(None).dt.normalize()
    pairs = c[["customer_id", "message_id", "night", "window_end"]].reset_index(
        names="unit").merge(o, on="customer_id", how="inner", suffixes=("", "_out"))
    if pairs.empty:
        return c
    night = pd.to_datetime(pd.Series(pairs["night"], dtype=object))
    end = pd.to_datetime(pd.Series(pairs["window_end"], dtype=object))
    same_message = pairs["message_id_out"].notna() & (
        pairs["message_id_out"].astype(str) == pairs["message_id"].astype(str))
    in_window = pairs["message_id_out"].isna() & (pairs["day"] >= night) & (pairs["day"] <= end)
    hit = pairs.loc[same_message | in_window]
    for kind, col in (("unsubscribe", "unsubscribed"), ("complaint", "complained")):
        c.loc[hit.loc[hit["kind"] == kind, "unit"].unique(), col] = True
    return c
