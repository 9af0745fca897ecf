"""Demo truth for lift: customers of the demo shop who answer their contacts, at a known rate.

After each demo night, every customer first exposed to a program that night (tend.results'
unit: a customer, a program, a holdout period) draws whether they order within the program's
attribution window: at the program's ``base`` rate when held out, at its ``contacted`` rate
when the message was sent. The true uplift is the difference, so the report's lift and its
95 % interval can be checked against it. Draws are seeded by (seed, night, program, customer):
the same nights give the same orders, whatever else ran.

A responding contacted customer of a program with a voucher redeems it in ``redeem_share``
of the cases (the order carries the message's real voucher code), which is what the report's
direct responses count.

The demo shop's own history ends on the day it was generated, so after it these are the only
orders: a held-out customer's response rate is the base rate exactly. The simulator writes
into the shop database; never point it at a real shop.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import pandas as pd
from sqlalchemy import select

from tend.dev.demo import CURRENCY
from tend.programs.registry import Registry, load_registry
from tend.results import attribution
from tend.shop import schema as shop_schema
from tend.store.db import connect


@dataclass(frozen=True)
class Uplift:
    """The truth of one program: the chance of an order within its window."""

    base: float  # held out (and what the customer would have done anyway)
    contacted: float  # after the message

    @property
    def uplift(self) -> float:
        return self.contacted - self.base


#: The simulated truth per program. Only the programs with a holdout in programs.yaml answer:
#: an order simulated for another program lands in the windows of the same customer's other
#: programs too, and since a held-out customer is free to get another program's message that
#: night while a contacted one is capped, those orders would reach the held-out group more
#: often and pull the measured lift below the truth set here.
DEMO_TRUTH: dict[str, Uplift] = {
    "winback": Uplift(base=0.08, contacted=0.18),
    "cross_sell": Uplift(base=0.12, contacted=0.20),
}
REDEEM_SHARE = 0.6


def _uniforms(seed: int, night: dt.date, program: str, customers: list[str]) -> np.ndarray:
    """Four uniforms in [0, 1) per customer, from a hash of (seed, night, program, customer):
    a customer's draws do not depend on who else was exposed that night."""
    digests = b"".join(hashlib.sha256(f"{seed}\x1f{night}\x1f{program}\x1f{c}".encode()).digest()
                       for c in customers)
    words = np.frombuffer(digests, dtype="<u8").reshape(len(customers), 4)
    return (words >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def draw_responses(units: pd.DataFrame, truth: Mapping[str, Uplift], windows: Mapping[str, int],
                   *, seed: int, prices: pd.DataFrame,
                   codes: Mapping[str, str] | None = None,
                   redeem_share: float = REDEEM_SHARE) -> pd.DataFrame:
    """The orders the exposed ``units`` (customer_id, program, night, group, message_id) place
    under ``truth``: order_id, customer_id, ordered_at (UTC), total, sku, discount_code.

    ``prices``: sku, price (what a response buys: one product, drawn per customer);
    ``codes``: message_id -> the voucher code that message carried.
    """
    frames = []
    codes = codes or {}
    for (program, night), g in units.groupby(["program", "night"], sort=True):
        if program not in truth:
            continue
        t = truth[program]
        customers = g["customer_id"].astype(str).tolist()
        u = _uniforms(seed, night, program, customers)
        rate = np.where(g["group"].to_numpy() == "contacted", t.contacted, t.base)
        hit = u[:, 0] < rate
        if not hit.any():
            continue
        window = int(windows.get(program, 7))
        days = 1 + np.floor(u[hit, 1] * window).astype(int)
        pick = np.floor(u[hit, 2] * len(prices)).astype(int)
        chosen = g.loc[hit]
        when = [dt.datetime.combine(night + dt.timedelta(days=int(k)), dt.time(15, 0),
                                    tzinfo=dt.UTC) for k in days]
        redeem = [(grp == "contacted" and mid in codes and x < redeem_share)
                  for grp, mid, x in zip(chosen["group"], chosen["message_id"], u[hit, 3],
                                         strict=True)]
        frames.append(pd.DataFrame({
            "order_id": [f"R{night:%Y%m%d}-{program}-{c}" for c in chosen["customer_id"]],
            "customer_id": chosen["customer_id"].astype(str).to_numpy(),
            "ordered_at": when,
            "total": prices["price"].to_numpy()[pick],
            "sku": prices["sku"].to_numpy()[pick],
            "discount_code": [codes[m] if r else None
                              for m, r in zip(chosen["message_id"], redeem, strict=True)],
        }))
    cols = ["order_id", "customer_id", "ordered_at", "total", "sku", "discount_code"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)


def simulate_night(shop_url: str, store_url: str, night: dt.date, *, seed: int = 7,
                   truth: Mapping[str, Uplift] | None = None, secret: str | None = None,
                   registry: Registry | None = None) -> int:
    """Add to the demo shop the orders of the customers first exposed on ``night``; the number
    of orders added. Idempotent: a night simulated twice adds nothing the second time."""
    from tend import config
    from tend.messages.tokens import voucher_code
    from tend.shop import read as shop
    from tend.store import ledger

    truth = DEMO_TRUTH if truth is None else truth
    registry = registry or load_registry()
    programs = {p.name: p for p in registry.programs}
    with connect(store_url).connect() as conn:
        raw = ledger.exposures(conn, attribution.period_start(night), night)
    exposed = attribution.units(raw)
    exposed = exposed.loc[exposed["night"] == night]
    secret = secret or config.unsubscribe_secret()
    codes = {m: voucher_code(secret, m, programs[p].offer.code_prefix)
             for m, p in zip(exposed["message_id"], exposed["program"], strict=True)
             if m is not None and p in programs and programs[p].offer is not None}
    prices = pd.DataFrame(shop.read_price_list(shop_url), columns=["sku", "name", "price"])
    prices["price"] = prices["price"].astype(float)
    orders = draw_responses(exposed, truth, {n: p.window_days for n, p in programs.items()},
                            seed=seed, prices=prices.sort_values("sku", ignore_index=True),
                            codes=codes)
    if orders.empty:
        return 0
    o, ln = shop_schema.orders_with_codes, shop_schema.order_lines
    with connect(shop_url).begin() as conn:
        shop_schema.add_discount_code(conn)
        have = {r[0] for r in conn.execute(
            select(o.c.order_id).where(o.c.order_id.in_(orders["order_id"].tolist())))}
        new = orders.loc[~orders["order_id"].isin(have)]
        if new.empty:
            return 0
        conn.execute(o.insert(), [
            {"order_id": r.order_id, "customer_id": r.customer_id, "ordered_at": r.ordered_at,
             "total": Decimal(f"{r.total:.2f}"), "currency": CURRENCY,
             "discount_code": r.discount_code} for r in new.itertuples()])
        conn.execute(ln.insert(), [
            {"order_id": r.order_id, "sku": r.sku, "quantity": 1,
             "unit_price": Decimal(f"{r.total:.2f}")} for r in new.itertuples()])
    return len(new)
