"""Lift: per program (and per month), what the contacted group did beyond its holdout.

``summarise`` turns attributed units (tend.results.attribution) into one row per group of
``keys`` with the figures of ``COLUMNS``; ``compute`` reads the store and the shop and does
the whole thing for a range of nights. Ledger program names may later be campaigns: a campaign
is grouped like a program, by its name.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tend.programs.caps import holdout_period
from tend.programs.registry import Registry, load_registry
from tend.results import attribution, stats

if TYPE_CHECKING:
    from sqlalchemy import Connection

#: The figures of one row, in the order the csv gives them.
COLUMNS = (
    "program", "contacted", "held_out", "response_rate", "holdout_response_rate", "lift",
    "lift_low", "lift_high", "revenue_per_contacted", "revenue_per_held_out", "responses",
    "holdout_responses", "revenue_lift", "revenue_lift_low", "revenue_lift_high",
    "direct_responses", "reactivation_rate", "messages", "contacts_per_customer",
    "unsubscribe_rate", "complaint_rate", "window_days", "open_windows", "note",
)
#: Programs whose response is a lapsed customer coming back (their response rate is the
#: reactivation rate).
REACTIVATION_SIGNALS = frozenset({"lapsed"})
ALL = "(all)"


def summarise(units: pd.DataFrame, keys: Sequence[str] = ("program",), *,
              reactivation: frozenset[str] = frozenset()) -> pd.DataFrame:
    """One row per group of ``keys`` (e.g. program, or month and program).

    ``units``: attributed units with ``unsubscribed``/``complained`` on contacted ones.
    Rates are shares of the group's customers; lift is the contacted rate minus the held-out
    rate with Newcombe's 95 % interval, revenue lift the difference of revenue per customer
    with Welch's; both are left empty (NaN) with a ``note`` when ``stats.too_small`` says the
    holdout cannot support them.
    """
    keys = list(keys)
    rows = []
    for key, g in units.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(keys, key, strict=True))
        rows.append(_row(row, g, reactivation))
    out = pd.DataFrame(rows, columns=[*[k for k in keys if k != "program"], *COLUMNS])
    return out


def _row(row: dict, g: pd.DataFrame, reactivation: frozenset[str]) -> dict:
    c = g.loc[g["group"] == "contacted"]
    h = g.loc[g["group"] == "held_out"]
    n1, n2 = len(c), len(h)
    x1, x2 = int(c["responded"].sum()), int(h["responded"].sum())
    row.update(contacted=n1, held_out=n2, responses=x1, holdout_responses=x2,
               response_rate=x1 / n1 if n1 else np.nan,
               holdout_response_rate=x2 / n2 if n2 else np.nan,
               revenue_per_contacted=float(c["revenue"].mean()) if n1 else np.nan,
               revenue_per_held_out=float(h["revenue"].mean()) if n2 else np.nan,
               direct_responses=int(c["direct"].sum()),
               messages=int(c["messages"].sum()) if "messages" in c else n1,
               unsubscribe_rate=float(c["unsubscribed"].mean()) if n1 and "unsubscribed" in c
               else np.nan,
               complaint_rate=float(c["complained"].mean()) if n1 and "complained" in c
               else np.nan,
               window_days=int(g["window_days"].max()) if len(g) else np.nan,
               open_windows=int(g["window_open"].sum()))
    # messages of the program per contacted customer (a unit is one customer)
    row["contacts_per_customer"] = row["messages"] / n1 if n1 else np.nan
    row["reactivation_rate"] = row["response_rate"] if row.get("program") in reactivation \
        else np.nan
    for col in ("lift", "lift_low", "lift_high", "revenue_lift", "revenue_lift_low",
                "revenue_lift_high"):
        row[col] = np.nan
    note = stats.too_small(x1, n1, x2, n2)
    row["note"] = note or ""
    if note is None:
        d = stats.rate_difference(x1, n1, x2, n2)
        row.update(lift=d.estimate, lift_low=d.low, lift_high=d.high)
        r = stats.mean_difference(c["revenue"].to_numpy(), h["revenue"].to_numpy())
        if r is not None:
            row.update(revenue_lift=r.estimate, revenue_lift_low=r.low,
                       revenue_lift_high=r.high)
    if row["open_windows"]:
        extra = f"{row['open_windows']} window(s) still open"
        row["note"] = f"{row['note']}; {extra}" if row["note"] else extra
    return row


@dataclass
class Results:
    """What ``compute`` found for the nights ``start``..``end``, orders known up to ``until``."""

    start: dt.date
    end: dt.date
    until: dt.date
    programs: pd.DataFrame  # one row per program, plus ALL (every program together)
    months: pd.DataFrame  # one row per (month, program), plus ALL per month


def compute(shop_url: str, store_url: str, start: dt.date, end: dt.date, *,
            until: dt.date | None = None, registry: Registry | None = None) -> Results:
    """Attribute the exposures of the nights ``start``..``end`` and summarise them.

    Orders are known up to ``until`` (default: ``end`` plus the longest attribution window,
    but never after today): a unit whose window reaches past it is counted with what is known,
    and the rows say how many windows are still open. Campaigns (ledger programs
    ``campaign:NAME``) take their voucher prefix from their stored form.
    """
    from tend.shop import read as shop
    from tend.store import ledger
    from tend.store import suppressions as suppressed
    from tend.store.db import connect, require_current

    require_current(store_url)
    registry = registry or load_registry()
    programs = {p.name: p for p in registry.programs}
    windows = {name: p.window_days for name, p in programs.items()}
    longest = max(windows.values(), default=7)
    if until is None:
        until = min(end + dt.timedelta(days=longest), dt.datetime.now(dt.UTC).date())
    with connect(store_url).connect() as conn:
        # from the start of the holdout period: who was exposed before the range is not new;
        # up to the last known orders: a later unit of the same program ends a unit's window
        raw = ledger.exposures(conn, attribution.period_start(start), max(end, until))
        since = dt.datetime.combine(start, dt.time(), tzinfo=dt.UTC)
        outs = suppressed.opt_outs(conn, since)
        prefixes = {n: p.offer.code_prefix for n, p in programs.items() if p.offer is not None}
        prefixes |= _campaign_prefixes(conn, raw["program"].unique())
    unit_frame = attribution.units(raw)
    unit_frame = unit_frame.loc[unit_frame["night"].between(start, end)].reset_index(drop=True)
    # an opt-out about any of a unit's messages is the unit's, also one sent after --to
    quarter_sent = raw.loc[raw["group"] == "contacted"]
    raw = raw.loc[raw["night"].between(start, end)]
    orders = pd.DataFrame(columns=["customer_id", "ordered_at", "total"])
    if len(unit_frame):
        customers = sorted(unit_frame["customer_id"].unique())
        orders, _ = shop.read_orders(shop_url, until, customers)
        orders = shop.with_discount_codes(shop_url, orders)
    attributed = attribution.attribute(unit_frame, orders, windows, until=until,
                                       code_prefixes=prefixes)
    sent = raw.loc[raw["group"] == "contacted"].assign(
        month=[f"{d:%Y-%m}" for d in raw.loc[raw["group"] == "contacted", "night"]])
    attributed = attribution.opted_out(attributed, outs, quarter_sent)
    attributed = _with_messages(attributed, sent)
    reactivation = frozenset(n for n, p in programs.items()
                             if set(p.signals) & REACTIVATION_SIGNALS)
    by_program = summarise(attributed, ["program"], reactivation=reactivation)
    by_month = summarise(attributed, ["month", "program"], reactivation=reactivation)
    total = _everyone(attributed, sent)
    by_program = pd.concat([by_program, total(None)], ignore_index=True)
    month_totals = [total(m) for m in sorted(attributed["month"].unique())] \
        if len(attributed) else []
    by_month = pd.concat([by_month, *month_totals], ignore_index=True).sort_values(
        ["month", "program"], key=lambda s: s.map(lambda v: (v == ALL, v)), kind="stable"
    ).reset_index(drop=True) if len(by_month) else by_month
    return Results(start, end, until, by_program, by_month)


def campaign_code_prefix(name: str, params: Mapping[str, Any] | None) -> str | None:
    """The voucher prefix of campaign ``name`` with the stored form ``params``, or None when it
    offers no voucher."""
    from tend.campaigns.spec import code_prefix

    offer = (params or {}).get("offer")
    if not isinstance(offer, str) or offer.strip() in ("", "none"):
        return None
    return code_prefix(name)


def _campaign_prefixes(conn: Connection, programs: Iterable[str]) -> dict[str, str]:
    """The voucher prefix of each campaign among the ledger's ``programs``, by that name, from
    the campaigns table: the registry knows no campaign."""
    from tend.store import campaigns as stored
    from tend.store.ledger import CAMPAIGN_PREFIX

    out = {}
    for program in programs:
        if not str(program).startswith(CAMPAIGN_PREFIX):
            continue
        name = str(program)[len(CAMPAIGN_PREFIX):]
        row = stored.read(conn, name)
        prefix = campaign_code_prefix(name, row["params"]) if row else None
        if prefix:
            out[program] = prefix
    return out


def _with_messages(units: pd.DataFrame, sent: pd.DataFrame) -> pd.DataFrame:
    """Each contacted unit's count of messages its program sent the customer in the range
    and the unit's holdout period (a unit is the first of them)."""
    key = attribution.UNIT_KEY
    if units.empty or sent.empty:
        return units.assign(messages=0)
    counts = sent.assign(period=[holdout_period(d) for d in sent["night"]]).groupby(
        key).size().rename("messages")
    out = units.join(counts, on=key)
    out["messages"] = out["messages"].fillna(0).astype(int)
    return out


def _everyone(units: pd.DataFrame, sent: pd.DataFrame):  # type: ignore[no-untyped-def]
    """A row for every program together (``ALL``) over one month or the whole range: messages,
    customers contacted, contacts per customer, unsubscribe and complaint rates; the lift is a
    per-program figure and is left empty."""

    def total(month: str | None) -> pd.DataFrame:
        u = units if month is None else units.loc[units["month"] == month]
        s = sent if month is None else sent.loc[sent["month"] == month]
        c = u.loc[u["group"] == "contacted"]
        customers = c["customer_id"].nunique()
        # every message sent, over the customers who got one, month by month
        customer_months = len(s.drop_duplicates(["customer_id", "month"]))
        per_customer = c.groupby("customer_id")[["unsubscribed", "complained"]].any()
        row = {"program": ALL, "contacted": customers,
               "held_out": int(u.loc[u["group"] == "held_out", "customer_id"].nunique()),
               "messages": len(s),
               "contacts_per_customer": len(s) / customer_months if customer_months
               else np.nan,
               "unsubscribe_rate": float(per_customer["unsubscribed"].mean())
               if customers else np.nan,
               "complaint_rate": float(per_customer["complained"].mean())
               if customers else np.nan,
               "responses": int(c.groupby("customer_id")["responded"].any().sum()),
               "direct_responses": int(c["direct"].sum()),
               "open_windows": int(u["window_open"].sum()), "note": ""}
        if month is not None:
            row["month"] = month
        return pd.DataFrame([row])

    return total
