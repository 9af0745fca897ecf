"""Cross-sell: a product that goes with something the customer bought recently.

Pairs come from the catalogue (``products.complements``: the shop said they belong together) and
from co-purchase (at least ``min_support`` customers bought both, with a lift of at least
``min_lift``, and both are in the same category — so a suggestion never comes out of nowhere).
A purchase of A in the last ``recent_days`` suggests B when the customer never bought B; due
``delay_days`` after the purchase, valid ``valid_days``; one suggestion per customer (the best).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from tend.signals import SignalParams, empty_signals, frame, in_window


def pairs(skus: pd.DataFrame, products: pd.DataFrame, params: SignalParams | None = None
          ) -> pd.DataFrame:
    """(because_sku, complement_sku, score, source) for every pair worth suggesting."""
    p = (params or SignalParams()).cross_sell
    known = set(products["sku"])
    listed = [(a, b) for a, comps in zip(products["sku"], products["complements"], strict=True)
              for b in comps if b in known and b != a]
    out = [pd.DataFrame(listed, columns=["because_sku", "complement_sku"]).assign(
        score=0.7, source="catalogue")]
    if len(skus):
        from scipy import sparse

        codes, uniq = pd.factorize(skus["sku"])
        cust, _ = pd.factorize(skus["customer_id"])
        # customers x products (bought or not); its Gram matrix counts customers per pair
        x = sparse.csr_matrix((np.ones(len(codes), np.float32), (cust, codes)),
                              shape=(int(cust.max()) + 1, len(uniq)))
        both = (x.T @ x).tocoo()
        off = both.row != both.col
        sx, sy, n = both.row[off], both.col[off], both.data[off].astype(np.int64)
        buyers = np.bincount(codes, minlength=len(uniq))
        total = int(cust.max()) + 1
        lift = n * total / (buyers[sx] * buyers[sy])
        cat = products.set_index("sku")["category"]
        a, b = uniq[sx], uniq[sy]
        services = set(products.loc[products["service_interval_days"].notna(), "sku"])
        good = ((n >= p.min_support) & (lift >= p.min_lift)
                & (pd.Series(a).map(cat).to_numpy() == pd.Series(b).map(cat).to_numpy())
                & ~pd.Series(b).isin(services).to_numpy())
        out.append(pd.DataFrame({
            "because_sku": a[good], "complement_sku": b[good],
            "score": np.minimum(0.9, 0.4 + 0.1 * lift[good]),
            "source": "co-purchase"}))
    allp = pd.concat(out, ignore_index=True)
    return allp.sort_values("score", ascending=False).drop_duplicates(
        ["because_sku", "complement_sku"]).reset_index(drop=True)


def detect(fs: object, products: pd.DataFrame, as_of: dt.date,
           params: SignalParams | None = None) -> pd.DataFrame:
    params = params or SignalParams()
    p = params.cross_sell
    skus = fs.skus  # type: ignore[attr-defined]
    if skus.empty:
        return empty_signals()
    since = pd.Timestamp(as_of) - pd.Timedelta(days=p.recent_days)
    recent = skus.loc[pd.to_datetime(skus["last_day"]) >= since,
                      ["customer_id", "sku", "last_day"]]
    cand = recent.merge(pairs(skus, products, params), left_on="sku", right_on="because_sku")
    if cand.empty:
        return empty_signals()
    owned = skus[["customer_id", "sku"]].rename(columns={"sku": "complement_sku"}).assign(
        owned=True)
    cand = cand.merge(owned, on=["customer_id", "complement_sku"], how="left")
    cand = cand.loc[cand["owned"].isna()]
    due_ts = pd.to_datetime(cand["last_day"]) + pd.Timedelta(days=p.delay_days)
    cand = cand.assign(due=due_ts.dt.date,
                       valid=(due_ts + pd.Timedelta(days=p.valid_days)).dt.date)
    cand = cand.loc[in_window(cand["due"], cand["valid"], as_of, params.horizon_days)]
    cand = cand.sort_values(["customer_id", "score", "last_day", "complement_sku"],
                            ascending=[True, False, False, True]).drop_duplicates("customer_id")
    if cand.empty:
        return empty_signals()
    names = products.set_index("sku")["name"]
    bn, cn = cand["because_sku"].map(names), cand["complement_sku"].map(names)
    return frame(
        "cross_sell", cand["customer_id"], cand["score"], cand["due"], cand["valid"],
        [f"bought {a} on {d}; {b} goes with it" for a, d, b in zip(bn, cand["last_day"], cn,
                                                                   strict=True)],
        [{"complement_sku": c, "complement_name": n, "because_sku": a, "because_name": m,
          "source": s}
         for c, n, a, m, s in zip(cand["complement_sku"], cn, cand["because_sku"], bn,
                                  cand["source"], strict=True)],
        sku=cand["complement_sku"].tolist(), product_name=cn.tolist())
