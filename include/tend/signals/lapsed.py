"""Lapsed customers: how likely each customer is not to order again, measured against their own
rhythm, with a value estimate beside it.

The model (fitted on the shop's own customers every night; no external package):

* **Rhythm.** The days between a customer's visits are log-normal around their own typical gap.
  Each customer's mean log-gap is shrunk towards the shop's (normal-normal empirical Bayes: a
  customer with two visits says little, one with twenty says a lot), and so is their spread
  (a scaled-inverse-chi-square prior worth ``PRIOR_DF`` gaps). The predictive distribution of the
  next gap is a Student t on the log scale; ``S(d)`` is the chance that a gap lasts more than
  ``d`` days. A one-time buyer has no gap yet and gets the shop's prior predictive: the typical
  time to a second order.
* **Drop-out.** After every purchase — including the first, unlike BG/NBD where a one-time buyer
  is alive by construction — a customer leaves for good with probability ``p``, with
  ``p ~ Beta(a, b)`` across customers. After ``n`` visits and ``s`` silent days,
  ``P(alive) = (b + n - 1) S(s) / ((b + n - 1) S(s) + a)``. (a, b) are fitted by maximum
  likelihood on the customers' own (n, S(s)) with SciPy.
* **What a first order tells.** Whether a customer leaves right after their *first* order
  depends on that order: its category (the product it was mostly about) and the month it was
  placed in (customers won in a holiday rush, or with a one-off gift, come back less often).
  ``P(gone after the first order) = sigmoid(b0 + b[category] + b[month])`` is fitted each night
  on every customer's first step — came back (whatever their number of orders since), or not yet
  after ``s`` days — as a mixture cure model: ``log(1 - pi)`` for those who came back,
  ``log(pi + (1 - pi) S(s))`` for the others, with a ridge penalty, so a small shop stays at the
  shop's own rate. A one-time buyer's ``P(alive)`` uses their own ``pi`` instead of the shop's
  ``a / (a + b)``: among one-time buyers silent for as long, the ranking is no longer recency.
* ``lapse_score`` = P(no order in the next ``horizon_days``) =
  ``1 - P(alive) (1 - S(s + H) / S(s))`` — a probability; with H large it is P(gone).
* ``expected_next_order`` = last visit + the predictive median gap (in the past when overdue).
* ``value`` = P(alive) × expected visits in the next year × the customer's average order value
  shrunk towards the shop's: an expected spend, so a lapsed big spender ranks first.
* **Lapsed flag** (the win-back trigger): ``lapse_score >= threshold``, overdue against their own
  rhythm (``S(s) < overdue_survival``: had they still been a customer, they would most likely have
  ordered by now), at least ``min_days`` silent, and never after ``max_days``; a seasonal
  customer only once a year and their window have passed without an order.

The ranking is validated against a fitted BG/NBD on a calibration/holdout split of the demo
shop (docs/signals.md; ``tests/unit/signals/test_lapsed.py``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy import optimize, special, stats

from tend.features.year import SEASON_HALF_WIDTH, YEAR_DAYS, days_between
from tend.signals import bounded_days

PRIOR_DF = 4.0  # the spread prior is worth this many gaps
_DEFAULT_MU = np.log(45.0)  # a shop with no repeat customers yet: a second order after ~45 days
_DEFAULT_TAU2 = 0.6
_DEFAULT_SIGMA2 = 0.35
_PRIOR_CUSTOMERS = 30.0  # below this many repeat customers the defaults weigh in


@dataclass(frozen=True)
class LapsedParams:
    horizon_days: int = 365
    threshold: float = 0.6
    overdue_survival: float = 0.2
    min_days: int = 60
    max_days: int = 730
    valid_days: int = 14
    one_time_days: int = 120  # a one-time buyer is never lapsed before this


_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")
_RIDGE = 2.0  # the first-order effects' penalty: worth a couple of customers per effect


@dataclass(frozen=True)
class FirstOrders:
    """What each customer's first order tells, row for row with the customer feature table."""

    category: np.ndarray  # object: the category of its dearest product ("" when unknown)
    month: np.ndarray  # 1..12: the UTC month it was placed in


@dataclass(frozen=True)
class FirstOrderModel:
    """logit P(gone after the first order) = intercept + category effect + month effect."""

    intercept: float
    categories: dict[str, float]
    months: tuple[float, ...]  # January first

    def gone(self, first: FirstOrders) -> np.ndarray:
        cat = pd.Series(first.category).map(self.categories).fillna(0.0).to_numpy(float)
        eta = self.intercept + cat + np.asarray(self.months)[first.month - 1]
        return special.expit(eta)


@dataclass(frozen=True)
class LapseModel:
    mu0: float
    tau2: float
    sigma2: float
    a: float
    b: float
    first_order: FirstOrderModel | None = None


def _visits(f: pd.DataFrame) -> np.ndarray:
    col = "order_days" if "order_days" in f and f["order_days"].notna().all() else "orders_count"
    return f[col].to_numpy(dtype=float)


def _gap_stats(f: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(number of gaps, mean log gap, variance of log gaps) per customer; the base feature
    table alone (no profile) falls back to the median gap and the prior spread."""
    n_gaps = np.maximum(_visits(f) - 1.0, 0.0)
    if "gap_log_mean" in f:
        m = f["gap_log_mean"].to_numpy(dtype=float)
        v = f["gap_log_var"].to_numpy(dtype=float)
    else:
        with np.errstate(divide="ignore"):
            m = np.log(f["median_interval_days"].to_numpy(dtype=float))
        v = np.full(len(f), np.nan)
    return n_gaps, m, v


def _hyper(n_gaps: np.ndarray, m: np.ndarray, v: np.ndarray) -> tuple[float, float, float]:
    rep = (n_gaps > 0) & np.isfinite(m)
    k = float(rep.sum())
    sig_ok = (n_gaps > 1) & np.isfinite(v)
    if sig_ok.any():
        sigma2 = float(np.sum((n_gaps[sig_ok] - 1) * v[sig_ok]) / np.sum(n_gaps[sig_ok] - 1))
    else:
        sigma2 = _DEFAULT_SIGMA2
    if k >= 2:
        mu = float(np.mean(m[rep]))
        tau2 = float(np.var(m[rep]) - np.mean(sigma2 / n_gaps[rep]))
    else:
        mu, tau2 = _DEFAULT_MU, _DEFAULT_TAU2
    w = k / (k + _PRIOR_CUSTOMERS)
    mu = w * mu + (1 - w) * _DEFAULT_MU
    tau2 = max(w * tau2 + (1 - w) * _DEFAULT_TAU2, 0.05)
    sigma2 = max(w * sigma2 + (1 - w) * _DEFAULT_SIGMA2, 0.02)
    return mu, tau2, sigma2


def _predictive(n_gaps: np.ndarray, m: np.ndarray, v: np.ndarray, mu0: float, tau2: float,
                sigma2: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Location, scale and degrees of freedom of each customer's next log-gap."""
    ss = np.where((n_gaps > 1) & np.isfinite(v), (n_gaps - 1) * np.nan_to_num(v), 0.0)
    extra = np.maximum(n_gaps - 1, 0)
    sig2 = (PRIOR_DF * sigma2 + ss) / (PRIOR_DF + extra)
    prec = 1.0 / tau2 + n_gaps / sig2
    loc = (mu0 / tau2 + n_gaps * np.nan_to_num(m) / sig2) / prec
    scale = np.sqrt(sig2 + 1.0 / prec)
    return loc, scale, PRIOR_DF + extra


def _log_s(days: np.ndarray, loc: np.ndarray, scale: np.ndarray, df: np.ndarray) -> np.ndarray:
    z = (np.log(np.maximum(days, 0.5)) - loc) / scale
    return stats.t.logsf(z, df)


def fit_dropout(n: np.ndarray, log_s: np.ndarray) -> tuple[float, float]:
    """ML (a, b) of the Beta drop-out on collapsed (n, log S) rows."""
    key = pd.DataFrame({"n": np.minimum(n, 60), "ls": np.round(log_s, 2)})
    c = key.groupby(["n", "ls"]).size().reset_index()
    nn, ls, w = c["n"].to_numpy(float), c["ls"].to_numpy(float), c[0].to_numpy(float)

    def nll(p: np.ndarray) -> float:
        a, b = np.exp(p)
        ll = np.logaddexp(special.betaln(a, b + nn) + ls,
                          special.betaln(a + 1, b + nn - 1)) - special.betaln(a, b)
        value = -float(np.sum(w * ll)) / w.sum()
        return value if np.isfinite(value) else 1e12

    res = optimize.minimize(nll, np.log([1.0, 2.0]), method="L-BFGS-B",
                            bounds=[(-6.0, 6.0), (-6.0, 8.0)])
    a, b = np.exp(res.x)
    return float(a), float(b)


def first_orders(fs: object, products: pd.DataFrame) -> FirstOrders:
    """Each customer's first order, from the feature set: the products bought on the day of
    their first order (``skus.first_day``), the dearest of them, and its category."""
    c = fs.customers  # type: ignore[attr-defined]
    first_at = c["first_order_at"].dt.tz_convert("UTC").dt.tz_localize(None)
    month = first_at.dt.month.to_numpy(dtype=np.int64)
    category = np.full(len(c), "", dtype=object)
    sk = fs.skus  # type: ignore[attr-defined]
    if not len(sk) or not len(products) or not len(c):
        return FirstOrders(category, month)
    first_day = first_at.to_numpy().astype("datetime64[D]").astype(np.int64)
    # Arrow's hash lookup: a quarter of pandas' get_indexer on millions of string ids
    pos = pc.index_in(pa.array(sk["customer_id"].astype(str)),
                      value_set=pa.array(c["customer_id"].astype(str))
                      ).fill_null(-1).to_numpy().astype(np.int64)
    day_codes, day_values = pd.factorize(sk["first_day"])  # a few thousand distinct days
    days = pd.to_datetime(pd.Series(day_values)).to_numpy().astype("datetime64[D]").astype(
        np.int64)[day_codes]
    ok = pos >= 0
    ok[ok] = days[ok] == first_day[pos[ok]]
    pos = pos[ok]
    sku_all, skus = pd.factorize(sk["sku"])
    sku_codes = sku_all[ok]
    catalogue = products.drop_duplicates("sku").set_index("sku")
    cats = catalogue["category"].reindex(skus).fillna("").to_numpy(dtype=object)[sku_codes]
    prices = catalogue["price"] if "price" in catalogue else pd.Series(0.0, catalogue.index)
    price = pd.to_numeric(prices.reindex(skus), errors="coerce").fillna(0.0).to_numpy(
        dtype=float)[sku_codes]
    order = np.lexsort((price, pos))  # per customer, dearest last
    pos, cats = pos[order], cats[order]
    last = np.ones(len(pos), bool)
    last[:-1] = pos[1:] != pos[:-1]
    category[pos[last]] = cats[last]
    return FirstOrders(category, month)


def fit_first_order(returned: np.ndarray, log_s: np.ndarray, first: FirstOrders,
                    a: float, b: float) -> FirstOrderModel:
    """The mixture cure model of the first step (see the module docstring), by penalised
    maximum likelihood on rows collapsed by (category, month, came back, log S)."""
    cat_codes, cats = pd.factorize(first.category)
    key = pd.DataFrame({"c": cat_codes, "m": first.month - 1, "r": returned,
                        "ls": np.where(returned, 0.0, np.round(log_s, 2))})
    g = key.groupby(["c", "m", "r", "ls"]).size().reset_index()
    cc, mm = g["c"].to_numpy(), g["m"].to_numpy()
    ret, s_now = g["r"].to_numpy(bool), np.exp(g["ls"].to_numpy(float))
    w = g[0].to_numpy(float)
    k = len(cats)
    prior = float(np.log(a / b))  # the shop's Beta drop-out: its mean is the ridge's centre

    def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        eta = theta[0] + theta[1:1 + k][cc] + theta[1 + k:][mm]
        log1p_e = np.logaddexp(0.0, eta)
        ll = np.where(ret, -log1p_e, np.logaddexp(eta, np.log(s_now)) - log1p_e)
        d = np.where(ret, 0.0, special.expit(eta - np.log(s_now))) - special.expit(eta)
        wd = w * d
        grad = np.concatenate(([wd.sum()], np.bincount(cc, wd, k), np.bincount(mm, wd, 12)))
        pen = theta.copy()
        pen[0] -= prior
        value = -float(np.sum(w * ll)) + 0.5 * _RIDGE * float(pen @ pen)
        return value, -grad + _RIDGE * pen

    theta0 = np.zeros(1 + k + 12)
    theta0[0] = prior
    res = optimize.minimize(nll, theta0, jac=True, method="L-BFGS-B")
    theta = res.x
    return FirstOrderModel(float(theta[0]),
                           {str(cat): float(v) for cat, v in zip(cats, theta[1:1 + k],
                                                                 strict=True)},
                           tuple(float(v) for v in theta[1 + k:]))


def fit_model(features: pd.DataFrame, as_of: dt.date, first: FirstOrders | None = None
              ) -> LapseModel:
    n_gaps, m, v = _gap_stats(features)
    mu0, tau2, sigma2 = _hyper(n_gaps, m, v)
    if len(features) < 20:  # too few customers to say how many leave: a neutral prior
        return LapseModel(mu0, tau2, sigma2, 1.0, 2.0)
    loc, scale, df = _predictive(n_gaps, m, v, mu0, tau2, sigma2)
    since = days_between(as_of, features["last_order_at"]).to_numpy(dtype=float)
    visits = _visits(features)
    log_s = _log_s(since, loc, scale, df)
    a, b = fit_dropout(visits, log_s)
    first_model = fit_first_order(visits >= 2, log_s, first, a, b) if first is not None \
        else None
    return LapseModel(mu0, tau2, sigma2, a, b, first_model)


def lapse_scores(features: pd.DataFrame, as_of: dt.date, params: LapsedParams | None = None,
                 model: LapseModel | None = None, *, fs: object | None = None,
                 products: pd.DataFrame | None = None,
                 seasonal: Iterable[str] | None = None) -> pd.DataFrame:
    """Per customer: lapse_score, p_alive, expected_next_order, value, lapsed, reason and the
    facts behind them. ``features`` is the customer feature table (base, or base + profile).
    With the feature set ``fs`` (whose customers ``features`` are) and the catalogue, what a
    first order tells goes in too (``first_orders``), and a seasonal customer
    (``tend.signals.seasonal``; ``seasonal``: their ids, when the caller has them) is not
    lapsed before their season has come and gone without an order."""
    p = params or LapsedParams()
    f = features.reset_index(drop=True)
    first = first_orders(fs, products) if fs is not None and products is not None else None
    if seasonal is None and fs is not None and products is not None:
        from tend.signals.seasonal import seasonal_customers

        seasonal = seasonal_customers(fs, products)["customer_id"]
    if f.empty:
        return pd.DataFrame(columns=["customer_id", "lapse_score", "p_alive",
                                     "expected_next_order", "value", "lapsed", "reason",
                                     "days_since_last_order", "orders_count", "last_order_date",
                                     "typical_interval_days"])
    model = model or fit_model(f, as_of, first)
    n_gaps, m, v = _gap_stats(f)
    n = _visits(f)
    loc, scale, df = _predictive(n_gaps, m, v, model.mu0, model.tau2, model.sigma2)
    since = days_between(as_of, f["last_order_at"]).to_numpy(dtype=float)
    log_s = _log_s(since, loc, scale, df)
    log_s_h = _log_s(since + p.horizon_days, loc, scale, df)
    s_now = np.exp(log_s)
    k = model.b + n - 1
    p_alive = k * s_now / (k * s_now + model.a)
    back: np.ndarray | None = None  # a one-time buyer's chance to come back at all
    if first is not None and model.first_order is not None:
        gone = model.first_order.gone(first)
        back = 1.0 - gone
        once = n < 2
        p_alive[once] = (back * s_now / (back * s_now + gone))[once]
    order_within = p_alive * (1.0 - np.exp(log_s_h - log_s))
    lapse = np.clip(1.0 - order_within, 0.0, 1.0)

    median_gap = np.exp(loc)
    last_day = f["last_order_at"].dt.tz_convert("UTC").dt.tz_localize(None).dt.floor("D")
    gap = pd.to_timedelta(bounded_days(median_gap, least=0), unit="D")
    expected_next = (last_day + gap).dt.date
    mean_gap = np.exp(loc + scale**2 / 2)
    aov = f["avg_order_value"].to_numpy(dtype=float)
    shop_aov = float(np.average(aov, weights=n)) if n.sum() > 0 else 0.0
    money = (n * aov + 2.0 * shop_aov) / (n + 2.0)
    value = p_alive * np.minimum(365.0 / mean_gap, 365.0) * money

    repeat = n >= 2
    typical = f["median_interval_days"].to_numpy(dtype=float)
    lapsed = ((lapse >= p.threshold) & (s_now < p.overdue_survival) & (since >= p.min_days)
              & (since <= p.max_days) & (repeat | (since >= p.one_time_days)))
    if seasonal is not None:  # a yearly customer is overdue once their season has passed
        waiting = f["customer_id"].isin(pd.Series(seasonal, dtype=object)).to_numpy()
        lapsed &= ~waiting | (since > YEAR_DAYS + SEASON_HALF_WIDTH)
    since_i = since.astype(np.int64)
    typical_txt = np.where(np.isfinite(typical), np.round(np.nan_to_num(typical)), 0).astype(
        np.int64)
    # Vectorised text (Arrow-backed strings): a million sentences without a Python loop.
    days_txt = pd.Series(since_i).astype(str)
    reason = np.empty(len(f), dtype=object)
    rep, once = np.flatnonzero(repeat), np.flatnonzero(~repeat)
    reason[rep] = ("last order " + days_txt.iloc[rep] + " days ago; usually orders every "
                   + pd.Series(typical_txt[rep]).astype(str).to_numpy() + " days"
                   ).to_numpy(dtype=object)
    once_txt = "one order only, " + days_txt.iloc[once] + " days ago"
    if back is not None and first is not None:
        once_txt = once_txt + _first_order_text(first, back)[once]
    reason[once] = once_txt.to_numpy(dtype=object)
    return pd.DataFrame({
        "customer_id": f["customer_id"].to_numpy(),
        "lapse_score": np.round(lapse, 4),
        "p_alive": np.round(p_alive, 4),
        "expected_next_order": expected_next,
        "value": np.round(value, 2),
        "lapsed": lapsed,
        "reason": reason.astype(object),
        "days_since_last_order": since_i,
        "orders_count": f["orders_count"].to_numpy(dtype=np.int64),
        "last_order_date": last_day.dt.date.to_numpy(),
        "typical_interval_days": typical,
    })


def _first_order_text(first: FirstOrders, back: np.ndarray) -> np.ndarray:
    """What the first order says, as the model learnt it from the shop's own customers: one
    sentence per (category, month) cell, made once per cell and gathered."""
    cells, cats = pd.factorize(first.category)
    key = cells * 12 + (first.month - 1)
    uniq, where = np.unique(key, return_inverse=True)
    at = np.zeros(len(uniq), np.int64)
    at[where] = np.arange(len(key))  # any row of the cell: its share is the cell's
    text = np.empty(len(uniq), dtype=object)
    for j, (k, row) in enumerate(zip(uniq, at, strict=True)):
        cat, month = cats[k // 12], _MONTHS[k % 12]
        what = f"first orders of {cat} in {month}" if cat else f"first orders in {month}"
        text[j] = f"; about {round(100 * float(back[row]))} % of customers with {what} come back"
    return text[where]


def detect_lapsed(
    features: pd.DataFrame, as_of: dt.date, params: LapsedParams | None = None,
    scored: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The lapsed customers tonight: customer_id, signal, score (= lapse_score), due_date (the
    day they became overdue), valid_until, reason, value, and the facts the win-back message
    shows (days_since_last_order, orders_count, last_order_date, typical_interval_days)."""
    p = params or LapsedParams()
    scored = scored if scored is not None else lapse_scores(features, as_of, p)
    out = scored.loc[scored["lapsed"]] if len(scored) else scored
    cols = ["customer_id", "signal", "score", "due_date", "valid_until", "reason", "value",
            "days_since_last_order", "orders_count", "last_order_date", "typical_interval_days",
            "lapse_score", "p_alive", "expected_next_order"]
    if out.empty:
        return pd.DataFrame(columns=cols)
    due = np.minimum(
        pd.to_datetime(out["expected_next_order"]).dt.date.to_numpy(),
        np.array([as_of] * len(out), dtype=object))
    return out.assign(
        signal="lapsed", score=out["lapse_score"], due_date=due,
        valid_until=as_of + dt.timedelta(days=p.valid_days),
    )[cols].reset_index(drop=True)
