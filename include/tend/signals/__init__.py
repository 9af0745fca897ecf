"""Signals: who is worth contacting, about what, from when until when, and why.

The contract the programs stage consumes::

    tend.signals.detect_all(store_url, shop_url, as_of, params=None) -> pandas.DataFrame

One row per (customer, signal[, sku]) with the columns ``SIGNAL_COLUMNS``:

==============  ==========================================================================
customer_id     str
signal          str, one of ``KNOWN_SIGNALS``
score           float in [0, 1], higher = more worth contacting
due_date        date: contact from this day on (a row with due_date > as_of is upcoming:
                defer it); rows are emitted when due within ``SignalParams.horizon_days``
valid_until     date: after it the signal has expired (never earlier than as_of)
reason          a short English sentence ("last order 142 days ago; usually orders every
                35 days")
value           float: the customer's expected spend over the next year (for ranking)
sku             str or None: the product the signal is about
product_name    str or None
detail          str: ``json.dumps`` of the facts a template may need, per signal:
                lapsed {days_since_last_order, orders_count, last_order_date, lapse_score,
                expected_next_order}; seasonal {window_start, window_end, category, years};
                replenish and checkup {due_on, last_bought, interval_days}; first_purchase
                {order_date}; survey {order_date, due_on}; loyalty_nth_order {nth};
                loyalty_tier {tier, spend}; anniversary {years, first_order_date};
                cross_sell {complement_sku, complement_name, because_sku, because_name}
==============  ==========================================================================

Signals only use data up to the end of ``as_of`` (UTC): ``detect_all`` refuses a store whose
features were computed for another night, and ``detect`` works on features computed from the
shop as of that night (``tend.features.ingest.compute_from_shop``) — the ``--as-of`` replay
guarantee. Each detector is a pure, vectorised function of the feature tables
(``tend.features``) and the product catalogue; none knows about programs, consent or caps.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

SIGNAL_COLUMNS = ["customer_id", "signal", "score", "due_date", "valid_until", "reason",
                  "value", "sku", "product_name", "detail"]
KNOWN_SIGNALS = ("lapsed", "seasonal", "replenish", "checkup", "first_purchase", "survey",
                 "loyalty_nth_order", "loyalty_tier", "anniversary", "cross_sell")


@dataclass(frozen=True)
class SeasonalParams:
    lead_days: int = 14  # the reminder goes out this long before the window opens
    min_years: int = 2
    min_concentration: float = 0.8  # season_r: one point per year, averaged over the years
    min_share: float = 0.6  # of the customer's visits inside the window
    shop_lift: float = 3.0  # window share / the shop's own share of orders in that window
    product_concentration: float = 0.25  # a product this much more concentrated than the shop

    product_distance_days: float = 30.0  # ... around a peak this close to the window
    # chance that random yearly points are this concentrated (tend.signals.seasonal)
    max_chance: float = 0.05


@dataclass(frozen=True)
class ReplenishParams:
    lead_days: int = 7
    grace_days: int = 21
    min_own_purchases: int = 3  # the customer's own interval wins from this many purchases
    min_product_customers: int = 20  # customers who re-bought, to trust the data's interval
    min_repurchase_share: float = 0.25


@dataclass(frozen=True)
class CheckupParams:
    lead_days: int = 21
    grace_days: int = 45


@dataclass(frozen=True)
class LoyaltyParams:
    nth_every: int = 10
    tiers: tuple[tuple[float, str], ...] = ((500.0, "silver"), (1000.0, "gold"),
                                            (2500.0, "platinum"))
    recent_days: int = 7  # a milestone reached this long ago is still worth a thank-you
    valid_days: int = 14
    survey_after_days: int = 14
    survey_valid_days: int = 7
    anniversary_valid_days: int = 7
    anniversary_active_days: int = 365  # only customers who ordered within this


@dataclass(frozen=True)
class CrossSellParams:
    recent_days: int = 30  # a purchase this recent can trigger a suggestion ...
    delay_days: int = 3  # ... this many days after it
    valid_days: int = 21
    min_support: int = 20  # customers who bought both, for a co-purchase pair
    min_lift: float = 2.0


def _lapsed_default():  # type: ignore[no-untyped-def]
    from tend.signals.lapsed import LapsedParams

    return LapsedParams()


@dataclass(frozen=True)
class SignalParams:
    horizon_days: int = 7
    signals: tuple[str, ...] = KNOWN_SIGNALS
    lapsed: object = field(default_factory=_lapsed_default)
    seasonal: SeasonalParams = field(default_factory=SeasonalParams)
    replenish: ReplenishParams = field(default_factory=ReplenishParams)
    checkup: CheckupParams = field(default_factory=CheckupParams)
    loyalty: LoyaltyParams = field(default_factory=LoyaltyParams)
    cross_sell: CrossSellParams = field(default_factory=CrossSellParams)


def empty_signals() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in SIGNAL_COLUMNS})


def frame(signal: str, customer_id: Iterable[object], score: Iterable[float],
          due_date: Iterable[object], valid_until: Iterable[object], reason: Iterable[str],
          detail: Iterable[dict[str, object]] | None, sku: Iterable[object] | None = None,
          product_name: Iterable[object] | None = None,
          detail_json: Iterable[str] | None = None) -> pd.DataFrame:
    """Rows of one signal in the contract's shape (value is filled in by ``detect``).

    ``detail_json``: the details already serialised exactly as ``json.dumps(d,
    sort_keys=True)`` would (a detector that builds them vectorised), instead of ``detail``.
    """
    ids = list(customer_id)
    n = len(ids)
    out = pd.DataFrame({
        "customer_id": pd.Series(ids, dtype=object).astype(str),
        "signal": signal,
        "score": np.clip(np.asarray(list(score), dtype=float), 0.0, 1.0) if n else [],
        "due_date": list(due_date),
        "valid_until": list(valid_until),
        "reason": list(reason),
        "value": np.nan,
        "sku": list(sku) if sku is not None else [None] * n,
        "product_name": list(product_name) if product_name is not None else [None] * n,
        "detail": list(detail_json) if detail_json is not None else
        [json.dumps(d, default=str, sort_keys=True) for d in detail or ()],
    })
    return out[SIGNAL_COLUMNS] if n else empty_signals()


#: However odd the data, a signal's dates stay within this many days of a purchase: a date
#: further away is never within a horizon, and the arithmetic stays inside pandas' calendar
#: (which ends in 2262) for any purchase from 1970 on (the shop's rows are bounded there).
MAX_SIGNAL_DAYS = 36_500


def bounded_days(days: object, least: int = 1) -> np.ndarray:
    """Day counts as whole numbers in [least, MAX_SIGNAL_DAYS] (NaN or infinite: the maximum),
    so that adding them to a date can never overflow."""
    d = np.rint(np.asarray(days, dtype=float))
    return np.clip(np.nan_to_num(d, nan=MAX_SIGNAL_DAYS, posinf=MAX_SIGNAL_DAYS, neginf=least),
                   least, MAX_SIGNAL_DAYS).astype(np.int64)


def in_window(due: pd.Series, valid_until: pd.Series, as_of: dt.date, horizon_days: int
              ) -> np.ndarray:
    """Due within the horizon and not expired."""
    last_due = as_of + dt.timedelta(days=horizon_days)
    return ((pd.to_datetime(due) <= pd.Timestamp(last_due))
            & (pd.to_datetime(valid_until) >= pd.Timestamp(as_of))).to_numpy()


def detect(features: object, products: pd.DataFrame, as_of: dt.date,
           params: SignalParams | None = None) -> pd.DataFrame:
    """Every signal from a ``FeatureSet`` computed as of ``as_of`` and the catalogue."""
    from tend.signals import checkups, cross_sell, loyalty, replenish, seasonal
    from tend.signals.lapsed import detect_lapsed, lapse_scores

    p = params or SignalParams()
    fs = features
    customers = fs.customers  # type: ignore[attr-defined]
    if customers.empty:
        return empty_signals()
    from tend.signals.seasonal import seasonal_customers

    seasons = seasonal_customers(fs, products, p)
    scored = lapse_scores(customers, as_of, p.lapsed, fs=fs,  # type: ignore[arg-type]
                          products=products, seasonal=seasons["customer_id"])
    frames: list[pd.DataFrame] = []
    wanted = set(p.signals)
    if "lapsed" in wanted:
        lap = detect_lapsed(customers, as_of, p.lapsed, scored)  # type: ignore[arg-type]
        frames.append(frame(
            "lapsed", lap["customer_id"], lap["score"], lap["due_date"], lap["valid_until"],
            lap["reason"],
            [{"days_since_last_order": int(d), "orders_count": int(n),
              "last_order_date": str(last), "lapse_score": float(s),
              "expected_next_order": str(e)}
             for d, n, last, s, e in zip(lap["days_since_last_order"], lap["orders_count"],
                                         lap["last_order_date"], lap["lapse_score"],
                                         lap["expected_next_order"], strict=True)]))
    if "seasonal" in wanted:
        frames.append(seasonal.detect(fs, products, as_of, p, seasons))
    if "replenish" in wanted:
        frames.append(replenish.detect(fs, products, as_of, p))
    if "checkup" in wanted:
        frames.append(checkups.detect(fs, products, as_of, p))
    frames.append(loyalty.detect(fs, products, as_of, p))
    if "cross_sell" in wanted:
        frames.append(cross_sell.detect(fs, products, as_of, p))
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_signals()
    out = pd.concat(frames, ignore_index=True)
    out = out.loc[out["signal"].isin(wanted)]
    value = scored.set_index("customer_id")["value"]
    out["value"] = out["customer_id"].map(value).astype(float).fillna(0.0)
    return out.sort_values(["customer_id", "signal", "sku"], na_position="first",
                           ignore_index=True)[SIGNAL_COLUMNS]


def detect_all(store_url: str, shop_url: str, as_of: dt.date,
               params: SignalParams | None = None, features: object | None = None
               ) -> pd.DataFrame:
    """Every signal tonight, from the store's feature tables and the shop's catalogue.

    ``features``: the store's ``FeatureSet`` when the caller has already read it (the programs
    stage needs the customer table too), so the tables are not read twice.
    """
    from tend.errors import DataError
    from tend.features.store import read_feature_set, store_as_of
    from tend.shop.read import read_products

    stored = store_as_of(store_url)
    if stored != as_of:
        raise DataError(
            f"the store's features are for {stored or 'no night yet'}, not {as_of}: run "
            f"`tend ingest --as-of {as_of}` first (signals only see data up to their night)")
    fs = features if features is not None else read_feature_set(store_url)
    return detect(fs, read_products(shop_url), as_of, params)
