"""How good the targeting is, measured: ROC AUC, precision and recall, and the targeting
benchmark's measurements against a demo shop's ground truth (``bench/bench_targeting.py``,
the signal quality tests).

The lapse ranking is judged the way a shop would judge it: features as of a calibration night
``holdout`` days before the last night, and the label "did not order in the holdout". It sits
beside two baselines computed from the same features: a BG/NBD fitted on the calibration
features (``tend.signals.bgnbd``; its expected purchases in the holdout, fewer = more likely
silent) and plain recency (days since the last order).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import numpy as np
import pandas as pd
from scipy.stats import rankdata


def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for the positive ``label``: the chance a random
    positive scores above a random negative, ties counting half (NaN without both)."""
    label = np.asarray(label, bool)
    pos, neg = int(label.sum()), int((~label).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(score, float))
    return float((ranks[label].sum() - pos * (pos + 1) / 2) / (pos * neg))


def precision_recall(found: Iterable[object], true: Iterable[object]) -> tuple[float, float]:
    """(precision, recall) of a set of found items against the true ones; NaN when a
    denominator is empty."""
    found, true = set(found), set(true)
    hit = len(found & true)
    precision = hit / len(found) if found else float("nan")
    recall = hit / len(true) if true else float("nan")
    return precision, recall


def lapse_aucs(shop_url: str, night: dt.date, holdout: int = 180,
               truth: pd.DataFrame | None = None) -> pd.DataFrame:
    """ROC AUC of "no order in the last ``holdout`` days before ``night``" for the lapse score,
    a fitted BG/NBD and recency, from features as of ``night - holdout``: one row per group
    (all, repeat buyers, one-time buyers at calibration), one column per ranking, and the
    group's size and share of silent customers. With a demo's ``truth``, one more group: the
    repeat buyers of the occasional archetype, whose purchases BG/NBD itself generated (no
    rhythm for the lapse score to use)."""
    from tend.features.ingest import compute_from_shop
    from tend.shop.read import read_products
    from tend.signals import bgnbd
    from tend.signals.lapsed import LapsedParams, lapse_scores

    cal = night - dt.timedelta(days=holdout)
    fs, _ = compute_from_shop(shop_url, cal)
    now, _ = compute_from_shop(shop_url, night)
    c = fs.customers
    last = now.customers.set_index("customer_id")["last_order_at"]
    silent = last.reindex(c["customer_id"]).dt.date.to_numpy() <= cal
    ours = lapse_scores(c, cal, LapsedParams(horizon_days=holdout), fs=fs,
                        products=read_products(shop_url))["lapse_score"].to_numpy()
    rfm = bgnbd.summarise(c, cal)
    model = bgnbd.fit(rfm)
    expected = model.expected_purchases(holdout / 7, rfm["x"].to_numpy(),
                                        rfm["t_x"].to_numpy(), rfm["T"].to_numpy())
    since = (pd.Timestamp(cal) - c["last_order_at"].dt.tz_convert(None).dt.floor("D")
             ).dt.days.to_numpy()
    visits = c["order_days"].to_numpy()
    groups = [("all", np.ones(len(c), bool)), ("repeat", visits >= 2),
              ("one-time", visits == 1)]
    if truth is not None:
        occasional = (truth["archetype"].reindex(c["customer_id"]) == "occasional").to_numpy()
        groups.append(("repeat, occasional", (visits >= 2) & occasional))
    rows = []
    for group, mask in groups:
        rows.append({"group": group, "customers": int(mask.sum()),
                     "silent": float(silent[mask].mean()) if mask.any() else float("nan"),
                     "lapse_score": roc_auc(ours[mask], silent[mask]),
                     "bgnbd": roc_auc(-expected[mask], silent[mask]),
                     "recency": roc_auc(since[mask], silent[mask])})
    return pd.DataFrame(rows).set_index("group")


def seasonal_quality(fs: object, products: pd.DataFrame, truth: pd.DataFrame
                     ) -> dict[str, float]:
    """Seasonal customers found against the truth's seasonal archetype: precision, recall, and
    the false-alarm rate among occasional customers (those with orders in at least two
    different years, where chance has something to fake) and among all non-seasonal ones."""
    from tend.signals.seasonal import seasonal_customers

    found = set(seasonal_customers(fs, products)["customer_id"])
    true = set(truth.index[truth["archetype"] == "seasonal"])
    precision, recall = precision_recall(found, true)
    c = fs.customers.set_index("customer_id")  # type: ignore[attr-defined]
    arche = truth["archetype"].reindex(c.index)
    occasional = c.index[(arche.isin(["occasional", "one_time"])).to_numpy()
                         & (c["season_cycles"] >= 2).to_numpy()]
    others = c.index[(arche != "seasonal").to_numpy()]
    return {"precision": precision, "recall": recall,
            "false_alarm_occasional": len(found.intersection(occasional)) / max(len(occasional),
                                                                                1),
            "occasional_multi_year": float(len(occasional)),
            "false_alarm_all": len(found.intersection(others)) / max(len(others), 1)}


def checkup_quality(signals: pd.DataFrame, truth: pd.DataFrame, night: dt.date
                    ) -> tuple[float, float]:
    """Check-up reminders against the truth: precision over the (customer, service) pairs
    signalled, recall over the services truly due from 7 days before to 14 days after the
    night."""
    got = signals.loc[signals["signal"] == "checkup"]
    pairs = set(zip(got["customer_id"], got["sku"], strict=True))
    svc = truth.loc[truth["archetype"] == "service"]
    true = set(zip(svc.index, svc["service_sku"], strict=True))
    precision = len(pairs & true) / len(pairs) if pairs else float("nan")
    nxt = pd.to_datetime(svc["next_due_on"])
    due = svc.loc[(nxt >= pd.Timestamp(night - dt.timedelta(days=7)))
                  & (nxt <= pd.Timestamp(night + dt.timedelta(days=14)))]
    recall = float(np.mean([(c, k) in pairs for c, k in zip(due.index, due["service_sku"],
                                                            strict=True)])) if len(due) else \
        float("nan")
    return precision, recall
