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
decided). The window is the program's ``attribution_days`` (tend.programs.registry), cut short
where the same customer's next unit of the program takes over: it ends on that unit's night, whose
message can only have caused what was ordered after it, so an order counts for at most one unit
of a program. What the contacted group buys beyond what the held-out group buys is what the
contact caused.

A **direct response** is an order in the window that redeemed the program's voucher (a
``discount_code`` starting with the offer's ``code_prefix``), when the shop's orders carry
discount codes. Held-out customers never receive a code, so direct responses are reported
beside the lift, never in it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from tend.programs.caps import holdout_period

UNIT_KEY = ["program", "customer_id", "period"]
GROUPS = ("contacted", "held_out")


def period_start(day: dt.date) -> dt.date:
    """The first night of ``day``'s holdout period (its calendar quarter): exposures must be
    read from there for ``units`` to know who was already exposed before a report's range."""
    return dt.date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)


def _per_night(nights: pd.Series, label: Callable[[dt.date], str]) -> pd.Series:
    """Each night's ``label`` (a few nights, many rows: label each night once)."""
    unique = pd.Series(nights.unique())
    return nights.map(dict(zip(unique, unique.map(label), strict=True)))


def units(exposures: pd.DataFrame) -> pd.DataFrame:
    """One row per (program, customer, holdout period): the first exposure of it, with its
    ``period``, ``month`` and ``next_night``, the night of the same customer's next unit of the
    program (None when there is none), where this unit's windows end.

    ``exposures``: customer_id, program, night (date), group, message_id (from
    ``tend.store.ledger.exposures``), read from the start of a period, and as far past the
    nights of interest as orders are known, so that ``next_night`` does not depend on the range
    a report asks for. When a customer has both kinds on one night (a holdout share changed
    mid-quarter), the contact wins: it is the one that can have caused something.
    """
    if exposures.empty:
        return exposures.assign(period=pd.Series(dtype=object), month=pd.Series(dtype=object),
                                next_night=pd.Series(dtype=object)).reset_index(drop=True)
    e = exposures.copy()
    e["period"] = _per_night(e["night"], holdout_period)
    e["month"] = _per_night(e["night"], lambda d: f"{d:%Y-%m}")
    e["_rank"] = (e["group"] != "contacted").astype(int)
    e = e.sort_values(["night", "_rank"], kind="stable")
    u = e.drop_duplicates(UNIT_KEY, keep="first").drop(columns="_rank").reset_index(drop=True)
    # sorted by night: the next row of a customer and program is its next period's unit
    following = u.groupby(["program", "customer_id"], sort=False)["night"].shift(-1)
    u["next_night"] = following.astype(object).where(following.notna(), None)
    return u


def _dates(values: pd.Series) -> pd.Series:
    """Dates (or None) as timestamps (NaT), to compare with order and opt-out days."""
    return pd.to_datetime(pd.Series(values, dtype=object))


def attribute(exposure_units: pd.DataFrame, orders: pd.DataFrame, windows: Mapping[str, int],
              *, until: dt.date, code_prefixes: Mapping[str, str] | None = None
              ) -> pd.DataFrame:
    """Each unit with what followed it: ``responded``, ``revenue`` (the orders' totals in the
    window), ``orders``, ``direct`` (a voucher of the program redeemed in the window) and
    ``window_open`` (the window ends after ``until``, the last day whose orders are known).

    ``exposure_units``: from ``units``; a window ends at ``window_days`` after the night, or on
    the unit's ``next_night`` when that comes first. ``orders``: customer_id, ordered_at (UTC
    timestamps), total, and optionally discount_code. ``windows``: days per program (a program
    not listed gets 7).
    """
    u = exposure_units.reset_index(drop=True).copy()
    u["window_days"] = u["program"].map(lambda p: int(windows.get(p, 7))).astype(int)
    nights = _dates(u["night"])
    end = nights + pd.to_timedelta(u["window_days"], unit="D")
    if "next_night" in u:
        # the next unit's message was sent after the orders of its night were known: the
        # orders up to that night are this unit's, the later ones the next unit's
        following = _dates(u["next_night"])
        end = end.mask(following < end, following)
    u["window_end"] = end.dt.date
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


def opted_out(contacted: pd.DataFrame, opt_outs: pd.DataFrame, sent: pd.DataFrame
              ) -> pd.DataFrame:
    """Per contacted unit: ``unsubscribed`` and ``complained`` when the customer did so about
    one of the unit's messages (its id), or, when the record names no message, from the unit's
    night to the end of the window of its last message.

    A unit is every message its program sent the customer in its holdout period (the count in
    ``messages``), so an opt-out about the second message of a quarter is the unit's as much as
    one about the first. ``contacted``: attributed units (``attribute``); ``sent``: the messages
    (``tend.store.ledger.exposures`` rows of group ``contacted``) of the same nights. The span
    of a record without a message id stops the day before the same customer's next unit of the
    program (``next_night``), which claims that record from its own night on.
    """
    c = contacted.reset_index(drop=True).copy()
    c["unsubscribed"] = False
    c["complained"] = False
    if c.empty or opt_outs.empty:
        return c
    o = opt_outs.copy()
    o["day"] = pd.to_datetime(o["at"], utc=True).dt.tz_localize(None).dt.normalize()
    # every message of each unit: its own, and those sent later in its holdout period
    own = c.loc[c["message_id"].notna(), ["customer_id", "night", "message_id"]].reset_index(
        names="unit")
    if len(sent):
        later = sent[["customer_id", "program", "night", "message_id"]].assign(
            period=_per_night(sent["night"], holdout_period)).merge(
            c[UNIT_KEY].reset_index(names="unit"), on=UNIT_KEY)
        own = pd.concat([own, later[["unit", "customer_id", "night", "message_id"]]],
                        ignore_index=True)
    own = own.loc[own["message_id"].notna()]
    own = own.assign(message_id=own["message_id"].astype(str))

    named = o.loc[o["message_id"].notna()]
    by_message = named.assign(message_id=named["message_id"].astype(str)).merge(
        own[["unit", "customer_id", "message_id"]], on=["customer_id", "message_id"])

    last = _dates(c["night"])
    if len(own):
        last_sent = _dates(own["night"]).groupby(own["unit"].to_numpy()).max().reindex(c.index)
        last = last.mask(last_sent > last, last_sent)
    span_end = last + pd.to_timedelta(c["window_days"], unit="D")
    if "next_night" in c:
        stop = _dates(c["next_night"]) - pd.Timedelta(days=1)
        span_end = span_end.mask(stop < span_end, stop)
    spans = c[["customer_id"]].assign(start=_dates(c["night"]), end=span_end).reset_index(
        names="unit")
    pairs = spans.merge(o.loc[o["message_id"].isna()], on="customer_id", how="inner")
    unnamed = pairs.loc[(pairs["day"] >= pairs["start"]) & (pairs["day"] <= pairs["end"])]

    hit = pd.concat([by_message[["unit", "kind"]], unnamed[["unit", "kind"]]],
                    ignore_index=True)
    for kind, col in (("unsubscribe", "unsubscribed"), ("complaint", "complained")):
        c.loc[hit.loc[hit["kind"] == kind, "unit"].unique(), col] = True
    return c
