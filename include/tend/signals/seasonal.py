"""Seasonal reorder windows: a reminder shortly before a customer's own season opens again.

A customer is seasonal when their visits, taken one point per year, cluster around the same day
of the year (``season_r`` in ``tend.features.customer_range``) in at least ``min_years``
different years, most of their visits fall inside that window, and the window is theirs rather
than the shop's: either their share of visits inside it is ``shop_lift`` times the shop's own
share of orders in the same window (Christmas makes everybody buy in December; that alone is
not a season), or what they buy inside it is a seasonal product (its sales across customers
concentrate around a peak close to the window, more than the shop's sales as a whole do).
Services with an interval are left to the check-up signal.

**Chance cannot fake a season.** An occasional customer's orders land somewhere in the year,
and two or three of them will sometimes fall in the same weeks of different years. So the
yearly points must also be more concentrated than chance makes them: ``chance`` is the
probability that ``season_cycles`` points placed at random on the year circle have a mean
resultant length at least ``season_r`` (the Rayleigh statistic; exact for two points,
``2 arccos(r) / pi``, simulated once per number of points otherwise), and a season needs
``chance <= max_chance``. A year with orders at other times of the year (or several orders
spread out) pulls its point towards the circle's centre, so a customer who orders all year
long never passes. Two orders 329 days apart (36 days off in the calendar) have a chance of
0.2; three orders on 27 December, 25 December and 4 March of the next year a chance of 0.3.
For a customer whose yearly points are truly random, the rule's false-alarm rate is at most
``max_chance`` (docs/signals.md).

The reminder is due ``lead_days`` before the window opens and valid until its centre; nobody
who already ordered since then gets one.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache

import numpy as np
import pandas as pd

from tend.features.year import (
    SEASON_HALF_WIDTH,
    TWO_PI,
    YEAR_DAYS,
    circular_distance_days,
    phase,
)
from tend.signals import SignalParams, empty_signals, frame, in_window

_EPOCH = dt.date(1970, 1, 1)


def shop_share(daily: pd.DataFrame, centres: np.ndarray) -> np.ndarray:
    """The shop's share of orders within ``SEASON_HALF_WIDTH`` days of each centre angle."""
    if daily.empty:
        return np.full(len(centres), (2 * SEASON_HALF_WIDTH + 1) / YEAR_DAYS)
    days = np.array([(d - _EPOCH).days for d in daily["day"]], dtype=float)
    orders = daily["orders"].to_numpy(dtype=float)
    grid = np.linspace(0, TWO_PI, 366, endpoint=False)
    ang = phase(days)
    share = np.array([orders[circular_distance_days(ang, g) <= SEASON_HALF_WIDTH].sum()
                      for g in grid]) / orders.sum()
    idx = np.rint(np.mod(centres, TWO_PI) / TWO_PI * 366).astype(int) % 366
    return share[idx]


def _shop_harmonic(daily: pd.DataFrame) -> tuple[float, float]:
    if daily.empty:
        return 0.0, 0.0
    days = np.array([(d - _EPOCH).days for d in daily["day"]], dtype=float)
    w = daily["orders"].to_numpy(dtype=float)
    ang = phase(days)
    c, s = np.sum(w * np.cos(ang)) / w.sum(), np.sum(w * np.sin(ang)) / w.sum()
    return float(np.hypot(c, s)), float(np.arctan2(s, c))


def product_seasons(skus: pd.DataFrame) -> pd.DataFrame:
    """Per sku: concentration (0..1) and centre angle of its purchase days over all customers."""
    if skus.empty:
        return pd.DataFrame(columns=["r", "centre"])
    g = skus.groupby("sku")[["phase_cos", "phase_sin", "days"]].sum()
    return pd.DataFrame({"r": np.hypot(g["phase_cos"], g["phase_sin"]) / g["days"],
                         "centre": np.arctan2(g["phase_sin"], g["phase_cos"])})


_NULL_DRAWS = 200_000
_MAX_SIMULATED = 30


@lru_cache(maxsize=_MAX_SIMULATED)
def _null_resultants(m: int) -> np.ndarray:
    """Sorted mean resultant lengths of ``m`` uniformly random directions (a fixed seed: the
    same table every night)."""
    rng = np.random.default_rng(m)
    ang = rng.uniform(0.0, TWO_PI, size=(_NULL_DRAWS, m))
    return np.sort(np.hypot(np.cos(ang).mean(axis=1), np.sin(ang).mean(axis=1)))


def chance_of_season(r: np.ndarray, m: np.ndarray) -> np.ndarray:
    """P(mean resultant length >= r) for ``m`` random points on the year circle: the chance
    that a customer with ``m`` yearly points and no season looks at least this seasonal."""
    r = np.clip(np.asarray(r, float), 0.0, 1.0)
    m = np.asarray(m, np.int64)
    out = np.ones(len(r))
    two = m == 2
    out[two] = 2.0 * np.arccos(r[two]) / np.pi
    for k in np.unique(m[(m > 2) & (m <= _MAX_SIMULATED)]):
        at = m == k
        null = _null_resultants(int(k))
        out[at] = (len(null) - np.searchsorted(null, r[at], side="left")) / len(null)
    big = m > _MAX_SIMULATED
    if big.any():  # Wilkie's approximation to the Rayleigh test, good for many points
        n, rn = m[big].astype(float), r[big] * m[big]
        out[big] = np.exp(np.sqrt(1 + 4 * n + 4 * (n**2 - rn**2)) - (1 + 2 * n))
    return np.clip(out, 0.0, 1.0)


def seasonal_customers(fs: object, products: pd.DataFrame, params: SignalParams | None = None
                       ) -> pd.DataFrame:
    """Every seasonal customer with their window's centre (doy, angle) and evidence."""
    p = (params or SignalParams()).seasonal
    c = fs.customers  # type: ignore[attr-defined]
    cand = c.loc[(c["season_years"] >= p.min_years) & (c["season_r"] >= p.min_concentration)
                 & (c["season_share"] >= p.min_share)].copy()
    cand["chance"] = chance_of_season(cand["season_r"].to_numpy(),
                                      cand["season_cycles"].to_numpy())
    cand = cand.loc[cand["chance"] <= p.max_chance]
    if cand.empty:
        return cand.assign(centre=[], lift=[], product_tied=[])
    cand["centre"] = TWO_PI * (cand["season_doy"].to_numpy() - 1.0) / YEAR_DAYS
    base = shop_share(fs.daily, cand["centre"].to_numpy())  # type: ignore[attr-defined]
    cand["lift"] = cand["season_share"].to_numpy() / np.maximum(base, 1e-9)
    ps = product_seasons(fs.skus)  # type: ignore[attr-defined]
    sku_r = cand["season_sku"].map(ps["r"]).astype(float).fillna(0.0).to_numpy()
    sku_c = cand["season_sku"].map(ps["centre"]).astype(float).fillna(0.0).to_numpy()
    # The product must be more seasonal than the shop itself around this window: compare the
    # first harmonics (mean resultant vectors) projected on the window's direction.
    shop_r, shop_c = _shop_harmonic(fs.daily)  # type: ignore[attr-defined]
    mu = cand["centre"].to_numpy()
    excess = sku_r * np.cos(sku_c - mu) - shop_r * np.cos(shop_c - mu)
    cand["product_tied"] = (excess >= p.product_concentration) & (
        circular_distance_days(sku_c, mu) <= p.product_distance_days)
    services = set(products.loc[products["service_interval_days"].notna(), "sku"])
    keep = ((cand["lift"] >= p.shop_lift) | cand["product_tied"]) & ~cand["season_sku"].isin(
        services)
    return cand.loc[keep]


def detect(fs: object, products: pd.DataFrame, as_of: dt.date,
           params: SignalParams | None = None, seasons: pd.DataFrame | None = None
           ) -> pd.DataFrame:
    """The reminders due tonight; ``seasons``: ``seasonal_customers``' answer, when the caller
    has it already."""
    params = params or SignalParams()
    p = params.seasonal
    s = seasonal_customers(fs, products, params) if seasons is None else seasons
    if s.empty:
        return empty_signals()
    today = (as_of - _EPOCH).days
    # The next centre on or after as_of - half width (a window already open still counts).
    ahead = np.mod(s["centre"].to_numpy() - phase(np.array([today - SEASON_HALF_WIDTH])),
                   TWO_PI)
    centre_day = today - SEASON_HALF_WIDTH + np.rint(ahead / TWO_PI * YEAR_DAYS).astype(int)
    start = pd.to_datetime(centre_day - SEASON_HALF_WIDTH, unit="D")
    end = pd.to_datetime(centre_day + SEASON_HALF_WIDTH, unit="D")
    centre = pd.to_datetime(centre_day, unit="D")
    due = (start - pd.Timedelta(days=p.lead_days)).date
    valid = centre.date
    last = s["last_order_at"].dt.tz_convert("UTC").dt.tz_localize(None).dt.floor("D")
    already = (last >= pd.to_datetime(due)).to_numpy()
    ok = in_window(pd.Series(due), pd.Series(valid), as_of, params.horizon_days) & ~already
    if not ok.any():
        return empty_signals()
    s = s.loc[ok]
    names = products.set_index("sku")["name"]
    cats = products.set_index("sku")["category"]
    start_d, end_d = start[ok].date, end[ok].date
    around = pd.to_datetime(centre_day[ok], unit="D")
    reason = [
        f"ordered around {a:%B} {a.day} in {int(y)} different years (by chance: about 1 in "
        f"{_one_in(c)}); their window opens {st:%Y-%m-%d}"
        for a, y, c, st in zip(around, s["season_years"], s["chance"], start_d, strict=True)]
    score = (s["season_r"].to_numpy() * np.minimum(1.0, s["season_years"].to_numpy() / 3.0))
    return frame(
        "seasonal", s["customer_id"], score, np.array(due)[ok], np.array(valid)[ok], reason,
        [{"window_start": str(a), "window_end": str(b), "category": cats.get(k),
          "years": int(y)}
         for a, b, k, y in zip(start_d, end_d, s["season_sku"], s["season_years"],
                               strict=True)],
        sku=s["season_sku"].tolist(),
        product_name=[names.get(k) for k in s["season_sku"]],
    )


def _one_in(chance: float) -> str:
    """"1 in N" for a small probability, N rounded to two significant figures."""
    n = 1.0 / max(float(chance), 1e-6)
    return f"{float(f'{n:.2g}'):,.0f}"
