"""Who a campaign is for: one row per customer of the chosen audience, before any rule.

Every audience is read from what Tend already knows — the stored features and the signals they
give (``tend.signals``), the shop's customers and catalogue, or a list uploaded to the store —
and gives the same frame: ``customer_id``, ``score`` (who first when ``max_recipients`` cuts the
list: the customer's expected spend) and ``reason``. Consent, suppressions, caps and holdouts
come after, in the same path as the nightly programs (``tend.programs.plan.decide``).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from sqlalchemy import String, cast, func, select

from tend.campaigns.form import AUDIENCES
from tend.campaigns.spec import CampaignSpec
from tend.errors import DataError
from tend.features.columns import FeatureSet
from tend.shop import schema as shop_schema
from tend.signals import LoyaltyParams, SignalParams, detect
from tend.store import campaigns as stored
from tend.store.db import connect

COLUMNS = ["customer_id", "score", "reason"]
_SIGNAL_OF = {"lapsed": "lapsed", "seasonal": "seasonal", "checkup": "checkup"}


def select_audience(spec: CampaignSpec, *, store_url: str, shop_url: str,
                    features: FeatureSet, products: pd.DataFrame,
                    features_as_of: dt.date) -> pd.DataFrame:
    """The audience's customers (``COLUMNS``), each once, best first.

    ``features_as_of``: the night the stored features were computed for; the signal audiences
    (lapsed, seasonal, check-up) are tonight's signals as of that night, due now.
    """
    c = features.customers
    kind = spec.audience
    if kind == "all":
        out = _consenting(shop_url)
        out["reason"] = "a customer with marketing consent"
    elif kind in _SIGNAL_OF:
        out = _signal(features, products, features_as_of, _SIGNAL_OF[kind])
    elif kind == "loyalty_tier":
        threshold = dict((name, spend) for spend, name in LoyaltyParams().tiers)[
            str(spec.audience_tier)]
        hit = c.loc[c["total_spent"].astype(float) >= threshold]
        out = pd.DataFrame({"customer_id": hit["customer_id"],
                            "reason": [f"spent {s:,.2f} in all, {spec.audience_tier} tier or "
                                       "above" for s in hit["total_spent"]]})
    elif kind == "category":
        out = _bought_category(features, products, features_as_of, str(spec.audience_category),
                               spec.audience_days)
    elif kind == "one_time":
        hit = c.loc[c["orders_count"] == 1]
        out = pd.DataFrame({"customer_id": hit["customer_id"],
                            "reason": "one order so far"})
    elif kind == "upload":
        with connect(store_url).connect() as conn:
            ids = stored.audience_ids(conn, str(spec.audience_upload))
        if not ids:
            raise DataError(f"no uploaded audience named {spec.audience_upload!r}; upload it "
                            f"first: `tend campaign upload-audience {spec.audience_upload} "
                            "FILE.csv` (one customer_id per line)")
        out = pd.DataFrame({"customer_id": ids,
                            "reason": f"in the uploaded list {spec.audience_upload}"})
    else:  # parse_spec refuses it first
        raise DataError(f"unknown audience {kind!r}; one of {', '.join(AUDIENCES)}")
    out = out.drop_duplicates("customer_id").reset_index(drop=True)
    out["customer_id"] = out["customer_id"].astype(str)
    # Who first when max_recipients cuts the list: the customers worth most to the shop.
    spent = c.set_index("customer_id")["total_spent"].astype(float) if len(c) else pd.Series(
        dtype=float)
    value = out["customer_id"].map(spent).fillna(0.0).to_numpy(dtype=float)
    out["score"] = value / (value.max() or 1.0) if len(out) else np.zeros(0)
    out = out.sort_values(["score", "customer_id"], ascending=[False, True], ignore_index=True)
    return out[COLUMNS]


def _consenting(shop_url: str) -> pd.DataFrame:
    """Every customer of the shop who gave marketing consent, with or without an order (a
    newsletter sign-up has none); the consent rules still decide each one later.

    The consent is matched whatever its case or surrounding spaces (``EXPRESS``, ``Implied ``):
    the consent rules (``tend.programs.consent``) read it lower-cased, so a narrower match here
    would silently leave out customers the nightly run treats as consenting."""
    cu = shop_schema.customers
    consent = func.lower(func.trim(cast(cu.c.marketing_consent, String)))
    with connect(shop_url).connect() as conn:
        ids = conn.execute(select(cu.c.customer_id).where(
            consent.in_(("express", "implied")))).scalars()
        return pd.DataFrame({"customer_id": [str(i) for i in ids]})


def _signal(features: FeatureSet, products: pd.DataFrame, as_of: dt.date, signal: str
            ) -> pd.DataFrame:
    sig = detect(features, products, as_of, SignalParams(signals=(signal,)))
    due = pd.to_datetime(sig["due_date"]).dt.date <= as_of
    sig = sig.loc[due & (sig["signal"] == signal)]
    sig = sig.sort_values("score", ascending=False).drop_duplicates("customer_id")
    return pd.DataFrame({"customer_id": sig["customer_id"], "reason": sig["reason"]})


def _bought_category(features: FeatureSet, products: pd.DataFrame, as_of: dt.date,
                     category: str, days: int) -> pd.DataFrame:
    known = sorted(products["category"].dropna().astype(str).unique())
    wanted = category.strip().lower()
    skus = set(products.loc[products["category"].astype(str).str.lower() == wanted, "sku"])
    if not skus:
        raise DataError(f"the shop has no category {category!r}; write one of: "
                        f"{', '.join(known) or '(no products)'}")
    s = features.skus
    since = as_of - dt.timedelta(days=days)
    last = pd.to_datetime(s["last_day"]).dt.date
    hit = s.loc[s["sku"].isin(skus) & (last > since) & (last <= as_of)]
    latest = hit.assign(last=last).sort_values("last").drop_duplicates("customer_id", keep="last")
    return pd.DataFrame({"customer_id": latest["customer_id"],
                         "reason": [f"bought {category} ({k}) on {d}" for k, d in
                                    zip(latest["sku"], latest["last"], strict=True)]})
