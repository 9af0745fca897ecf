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
* ``lapse_score`` = P(no order in the next ``horizon_days``) =
  ``1 - P(alive) (1 - S(s + H) / S(s))`` — a probability; with H large it is P(gone).
* ``expected_next_order`` = last visit + the predictive median gap (in the past when overdue).
* ``value`` = P(alive) × expected visits in the next year × the customer's average order value
  shrunk towards the shop's: an expected spend, so a lapsed big spender ranks first.
* **Lapsed flag** (the win-back trigger): ``lapse_score >= threshold``, overdue against their own
  rhythm (``S(s) < overdue_survival``: had they still been a customer, they would most likely have
  ordered by now), at least ``min_days`` silent, and never after ``max_days``.

The ranking is validated against a fitted BG/NBD on a calibration/holdout split of the demo
shop (docs/signals.md; ``tests/unit/signals/test_lapsed.py``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

from tend.features.year import days_between
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


@dataclass(frozen=True)
class LapseModel:
    mu0: float
    tau2: float
    sigma2: float
    a: float
    b: float


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


def fit_model(features: pd.DataFrame, as_of: dt.date) -> LapseModel:
    n_gaps, m, v = _gap_stats(features)
    mu0, tau2, sigma2 = _hyper(n_gaps, m, v)
    if len(features) < 20:  # too few customers to say how many leave: a neutral prior
        return LapseModel(mu0, tau2, sigma2, 1.0, 2.0)
    loc, scale, df = _predictive(n_gaps, m, v, mu0, tau2, sigma2)
    since = days_between(as_of, features["last_order_at"]).to_numpy(dtype=float)
    a, b = fit_dropout(_visits(features), _log_s(since, loc, scale, df))
    return LapseModel(mu0, tau2, sigma2, a, b)


def lapse_scores(features: pd.DataFrame, as_of: dt.date, params: LapsedParams | None = None,
                 model: LapseModel | None = None) -> pd.DataFrame:
    """Per customer: lapse_score, p_alive, expected_next_order, value, lapsed, reason and the
    facts behind them. ``features`` is the customer feature table (base, or base + profile)."""
    p = params or LapsedParams()
    f = features.reset_index(drop=True)
    if f.empty:
        return pd.DataFrame(columns=["customer_id", "lapse_score", "p_alive",
                                     "expected_next_order", "value", "lapsed", "reason",
                                     "days_since_last_order", "orders_count", "last_order_date",
                                     "typical_interval_days"])
    model = model or fit_model(f, as_of)
    n_gaps, m, v = _gap_stats(f)
    n = _visits(f)
    loc, scale, df = _predictive(n_gaps, m, v, model.mu0, model.tau2, model.sigma2)
    since = days_between(as_of, f["last_order_at"]).to_numpy(dtype=float)
    log_s = _log_s(since, loc, scale, df)
    log_s_h = _log_s(since + p.horizon_days, loc, scale, df)
    s_now = np.exp(log_s)
    k = model.b + n - 1
    p_alive = k * s_now / (k * s_now + model.a)
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
    since_i = since.astype(np.int64)
    typical_txt = np.where(np.isfinite(typical), np.round(np.nan_to_num(typical)), 0).astype(
        np.int64)
    # Vectorised text (Arrow-backed strings): a million sentences without a Python loop.
    days_txt = pd.Series(since_i).astype(str)
    reason = np.where(
        repeat,
        ("last order " + days_txt + " days ago; usually orders every "
         + pd.Series(typical_txt).astype(str) + " days").to_numpy(dtype=object),
        ("one order only, " + days_txt + " days ago").to_numpy(dtype=object),
    )
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
