"""What tonight's decision would send one customer, without claiming or sending anything.

``tend preview --customer C --would`` asks it: the night's own path for that one customer
(``tend.programs.plan``): the signals due for them on the night, the newsletter's calendar,
the candidates deferred on earlier nights, then ``decide`` in its dry-run mode (consent,
suppressions, preferences, holdouts, caps, cooldowns, arbitration against what the ledger
already holds, the claim rolled back). The winner's render context is built as the night
builds it, so the preview shows that customer's real products, voucher and words.

The signals are detected over every customer, as the night detects them: several detectors
compare a customer with the whole shop (a season's lift, a product's repurchase interval,
co-purchase pairs), so one customer's history alone would give other answers. The features
are the store's when it holds that night, else computed from the shop's orders up to its end
(the replay guarantee: the same numbers as an ingest of that night).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pandas as pd

from tend.config import ShopSettings
from tend.errors import DataError
from tend.features.columns import FeatureSet
from tend.programs.registry import Registry, load_registry

#: The run id the dry-run claim carries (rolled back: it never reaches the ledger).
RUN_ID = "preview:would"


@dataclass
class Would:
    customer_id: str
    as_of: dt.date
    features_from: str  # "the store" or "the shop's orders"
    decided: pd.DataFrame  # program, fate, why: every candidate of the customer
    winner: dict[str, Any] | None = None  # the claimed row
    context: str | None = None  # the winner's render context (JSON), as the night stores it

    def lines(self) -> list[str]:
        out = [f"night {self.as_of} for {self.customer_id} (features from {self.features_from}"
               "; nothing claimed or sent):"]
        if self.decided.empty:
            out.append("  no program wants this customer that night: no signal is due for "
                       "them and nothing of theirs waits from an earlier night")
        for r in self.decided.itertuples():
            fate = "would be sent" if r.fate == "claimed" else r.fate
            out.append(f"  {r.program:<22} {fate:<28} {r.why}")
        claimed = self.decided.loc[self.decided["fate"] == "already_claimed", "program"]
        if len(claimed):
            out.append(f"  -> already claimed for this night: `tend preview {claimed.iloc[0]} "
                       f"--customer {self.customer_id}` shows the message as sent")
        elif self.winner is None and not self.decided.empty:
            out.append("  -> nothing would be sent: every candidate above is stopped")
        return out


def night_features(shop_url: str, store_url: str, as_of: dt.date) -> tuple[FeatureSet, str]:
    """The features the night ``as_of`` is decided on, and where they came from."""
    from tend.features.ingest import compute_from_shop
    from tend.features.store import read_feature_set, store_as_of

    if store_as_of(store_url) == as_of:
        return read_feature_set(store_url), "the store"
    fs, _ = compute_from_shop(shop_url, as_of)
    return fs, "the shop's orders"


def would_send(shop_url: str, store_url: str, customer_id: str, as_of: dt.date, *,
               settings: ShopSettings, secret: str, registry: Registry | None = None,
               features: tuple[FeatureSet, str] | None = None) -> Would:
    """The night ``as_of``'s decision for ``customer_id`` (see the module docstring)."""
    from tend.messages.contexts import ContextBuilder
    from tend.programs.plan import (
        _deferred,
        _merge,
        decide,
        due_signals,
        fresh_candidates,
    )
    from tend.shop import read as shop
    from tend.signals import detect
    from tend.store.db import require_current

    require_current(store_url)
    if shop.read_customers(shop_url, [customer_id]).empty:
        raise DataError(f"no customer {customer_id!r} in the shop database; check the id "
                        "(`tend why` lists a customer's nights)")
    registry = registry or load_registry()
    programs = registry.enabled()
    by_program = {p.name: p for p in programs}
    fs, source = features or night_features(shop_url, store_url, as_of)
    customers = fs.customers
    mine = customers.loc[customers["customer_id"] == customer_id]
    detected = due_signals(detect(fs, shop.read_products(shop_url), as_of), as_of)
    detected = detected.loc[detected["customer_id"] == customer_id].reset_index(drop=True)
    fresh = fresh_candidates(detected, mine, programs, as_of)
    waiting, _ = _deferred(store_url, as_of, by_program, forget=False)
    if not waiting.empty:
        waiting = waiting.loc[waiting["customer_id"] == customer_id]
    cands = _merge(fresh, waiting)
    if cands.empty:
        return Would(customer_id, as_of, source, pd.DataFrame(columns=["program", "fate", "why"]))
    decision = decide(cands, shop_url=shop_url, store_url=store_url, as_of=as_of,
                      run_id=RUN_ID, programs=by_program, caps=registry.caps,
                      contexts=lambda _: [], secret=secret, dry_run=True)
    decided = decision.decided.reset_index(drop=True)
    order = decided["fate"].ne("claimed")  # the winner first
    decided = decided.assign(_o=order).sort_values(["_o", "program"]).drop(columns="_o")
    out = Would(customer_id, as_of, source,
                decided[["program", "fate", "why"]].reset_index(drop=True))
    won = decided.loc[decided["fate"] == "claimed"]
    if len(won):
        build = ContextBuilder(shop_url=shop_url, programs=by_program, settings=settings,
                               secret=secret, as_of=as_of, features=mine)
        out.winner = won.iloc[0].to_dict()
        out.context = build(won.iloc[:1])[0]
    return out
