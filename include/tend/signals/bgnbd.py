"""BG/NBD (Fader, Hardie & Lee 2005), fitted here with SciPy: the baseline lapse ranking is
validated against.

Each customer is summarised as (x, t_x, T): repeat purchase days, the time of the last one and
the age of the customer, all measured from the first purchase, in weeks. Customers with the
same triple are collapsed into one row with a weight, so the fit costs the number of *distinct*
triples, not the number of customers. The log-likelihood is the paper's equation (6); it is
maximised over (log r, log alpha, log a, log b) with L-BFGS-B.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, special


@dataclass(frozen=True)
class BGNBD:
    r: float
    alpha: float
    a: float
    b: float

    def p_alive(self, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
        """P(alive | x, t_x, T); 1 for x = 0 by construction (the model's known weakness)."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        x = np.asarray(x, float)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = (a / (b + x - 1)) * ((alpha + T) / (alpha + t_x)) ** (r + x)
        return np.where(x > 0, 1.0 / (1.0 + ratio), 1.0)

    def expected_purchases(self, t: float, x: np.ndarray, t_x: np.ndarray, T: np.ndarray
                           ) -> np.ndarray:
        """E[purchases in (T, T + t] | x, t_x, T] (the paper's equation (10))."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        x = np.asarray(x, float)
        z = t / (alpha + T + t)
        hyp = special.hyp2f1(r + x, b + x, a + b + x - 1, z)
        first = (a + b + x - 1) / (a - 1)
        second = 1.0 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp
        with np.errstate(divide="ignore", invalid="ignore"):
            third = np.where(
                x > 0, 1.0 + (a / (b + x - 1)) * ((alpha + T) / (alpha + t_x)) ** (r + x), 1.0)
        return first * second / third


def summarise(features: pd.DataFrame, as_of: object, unit_days: float = 7.0) -> pd.DataFrame:
    """(customer_id, x, t_x, T) in ``unit_days`` units from the customer features."""
    end = pd.Timestamp(as_of) + pd.Timedelta(days=1)
    first = features["first_order_at"].dt.tz_convert("UTC").dt.tz_localize(None).dt.floor("D")
    last = features["last_order_at"].dt.tz_convert("UTC").dt.tz_localize(None).dt.floor("D")
    visits = features["order_days"] if "order_days" in features else features["orders_count"]
    return pd.DataFrame({
        "customer_id": features["customer_id"].to_numpy(),
        "x": (visits.to_numpy() - 1).astype(float),
        "t_x": ((last - first).dt.days / unit_days).to_numpy(),
        "T": ((end - first).dt.days / unit_days).to_numpy(),
    })


def collapse(rfm: pd.DataFrame) -> pd.DataFrame:
    """Distinct (x, t_x, T) rows with their customer counts as ``weight``."""
    return rfm.groupby(["x", "t_x", "T"], sort=False).size().rename("weight").reset_index()


def log_likelihood(params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray,
                   w: np.ndarray) -> float:
    r, alpha, a, b = np.exp(params)
    common = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    term1 = special.betaln(a, b + x) - special.betaln(a, b) - (r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore", invalid="ignore"):
        term2 = np.where(
            x > 0,
            special.betaln(a + 1, b + x - 1) - special.betaln(a, b)
            - (r + x) * np.log(alpha + t_x),
            -np.inf)
    ll = common + np.logaddexp(term1, term2)
    return float(np.sum(w * ll))


def fit(rfm: pd.DataFrame) -> BGNBD:
    """Maximum likelihood on the collapsed rows of ``summarise``'s frame."""
    c = collapse(rfm)
    x, t_x, T, w = (c[k].to_numpy(float) for k in ("x", "t_x", "T", "weight"))

    def nll(p: np.ndarray) -> float:
        value = -log_likelihood(p, x, t_x, T, w) / w.sum()
        return value if np.isfinite(value) else 1e12

    start = np.log([1.0, max(float(np.mean(T)), 1.0), 1.0, 3.0])
    res = optimize.minimize(nll, start, method="L-BFGS-B",
                            bounds=[(-8.0, 8.0), (-8.0, 12.0), (-8.0, 8.0), (-8.0, 8.0)])
    r, alpha, a, b = np.exp(res.x)
    return BGNBD(float(r), float(alpha), float(a), float(b))
