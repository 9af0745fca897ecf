"""Per-customer features from order history, maintained incrementally in the contact store.

Each night only customers with new orders since the watermark are recomputed, from their own
full history, so the result is identical to a full rebuild (tested). Everything here is
vectorised over integer-coded customers: rows are sorted once by (customer, time) and every
aggregate is a ``bincount``/``reduceat``/sorted-position pick — no per-customer Python loop, no
``groupby().apply``.

Three frames come out (``FeatureSet``):

* ``customers`` — one row per customer with at least one clean order: the base columns
  (``FEATURE_COLUMNS``, the ``customer_features`` table) and the profile the signals need
  (``PROFILE_COLUMNS``, the ``customer_profile`` table): the rhythm of their visits on the log
  scale, what they spent on their last visit, and their seasonal window.
* ``skus`` — one row per customer and product bought (``SKU_COLUMNS``): when, how often, how
  much, the customer's own repurchase interval (per unit), and the phase of the purchase days.
* ``daily`` — the shop's clean orders and revenue per UTC day (``DAILY_COLUMNS``): the shop's
  own seasonality, so a customer's window can be compared with it.

Visits are distinct UTC order *days*: two orders on the same day are one visit for the purpose of
"how often does this customer come back".

Seasonal window (circular statistics on the day of the year): each visit day is a point on the
year circle; the customer's visits are averaged per *cycle* (one point per customer per year, so
a year with three December orders counts once), and the cycles are averaged again. The
direction of that mean is the customer's season (``season_doy``), its length ``season_r`` in
[0, 1] says how consistently they come at that time (1: always the same day; a regular who buys
all year long is near 0). Cycles are years centred on the customer's own season, so a window
around New Year is not cut in two. ``season_years`` counts the cycles with a visit within
``SEASON_HALF_WIDTH`` days of the season's centre.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

FEATURE_COLUMNS = [
    "customer_id",
    "orders_count",
    "first_order_at",
    "last_order_at",
    "total_spent",
    "avg_order_value",
    "mean_interval_days",
    "median_interval_days",
]
PROFILE_COLUMNS = [
    "customer_id",
    "order_days",  # distinct order days (visits)
    "gap_log_mean",  # mean of log(days between visits); NaN with one visit
    "gap_log_var",  # sample variance of those logs; NaN with fewer than three visits
    "last_day_spent",  # spent on the last visit (tells which spend tier was crossed)
    "season_doy",  # centre of the customer's seasonal window, day of the year (1-366)
    "season_r",  # concentration of visits around it, 0..1 (mean resultant length)
    "season_cycles",  # years (cycles) with a visit
    "season_years",  # cycles with a visit inside the window
    "season_share",  # share of visits inside the window
    "season_sku",  # the product most bought inside the window (None without order lines)
]
SKU_COLUMNS = [
    "customer_id",
    "sku",
    "days",  # distinct days the customer bought it
    "first_day",
    "last_day",
    "quantity",  # units in total
    "last_quantity",  # units bought on the last of those days
    "gap_median",  # median days between two purchases of it; NaN when bought once
    "unit_gap_median",  # median of (days to the next purchase / units bought before it)
    "phase_cos",  # sum over purchase days of cos(2 pi day-of-year phase)
    "phase_sin",
    "season_days",  # purchase days inside the customer's seasonal window
]
DAILY_COLUMNS = ["day", "orders", "revenue"]

#: Half width, in days, of a seasonal window ("the same calendar window": ±3 weeks).
SEASON_HALF_WIDTH = 21
YEAR_DAYS = 365.2425
_US_PER_DAY = 86_400_000_000
TWO_PI = 2.0 * np.pi


@dataclass
class FeatureSet:
    customers: pd.DataFrame  # FEATURE_COLUMNS + PROFILE_COLUMNS[1:]
    skus: pd.DataFrame  # SKU_COLUMNS
    daily: pd.DataFrame  # DAILY_COLUMNS


@dataclass
class FeatureColumns:
    """The same features as plain arrays, before any pandas object column exists: what the
    ingest writes to the store (a million customers' dates as Python objects would cost more
    than computing them). ``FeatureSet`` is this, as frames.

    Customers are positions in ``customer_ids`` (sorted); products positions in ``sku_ids``
    (sorted); times are integers: microseconds (orders) or days since 1970-01-01 (days).
    """

    customer_ids: pa.Array
    customers: dict[str, np.ndarray]  # FEATURE/PROFILE columns, first/last_order_at in µs,
    # season_sku as a position in sku_ids (-1: none)
    sku_ids: pa.Array
    skus: dict[str, np.ndarray]  # SKU_COLUMNS, customer_id and sku as positions
    daily: dict[str, np.ndarray]  # DAILY_COLUMNS, day in days

    def __len__(self) -> int:
        return len(self.customer_ids)


def compute_features(orders: pd.DataFrame) -> pd.DataFrame:
    """One row per customer from clean orders (customer_id, order_id, ordered_at UTC, total).

    The base columns and the profile; ``season_sku`` is None (that needs order lines, see
    ``compute_feature_set``).
    """
    return compute_feature_set(orders, None).customers


def compute_feature_set(orders: pd.DataFrame, lines: pd.DataFrame | None) -> FeatureSet:
    """Every feature from clean orders and their clean lines (``order`` = row in ``orders``,
    ``sku``, ``quantity``), as ``tend.shop.read_history`` returns them."""
    return to_frames(compute_columns(orders, lines))


def to_frames(fc: FeatureColumns) -> FeatureSet:
    """``FeatureColumns`` as the frames the signals read (see ``FeatureSet``)."""
    customers_cols = [*FEATURE_COLUMNS, *PROFILE_COLUMNS[1:]]
    if not len(fc):
        return FeatureSet(_empty(customers_cols), _empty(SKU_COLUMNS), _empty(DAILY_COLUMNS))
    c = fc.customers
    n = len(fc)
    sku_names = np.asarray(fc.sku_ids.to_pylist(), dtype=object)
    season_sku = pd.Series([None] * n, dtype=object)
    has = c["season_sku"] >= 0
    if has.any():
        season_sku[has] = sku_names[c["season_sku"][has]]
    customers = pd.DataFrame({
        "customer_id": pd.Series(fc.customer_ids.to_pandas(), dtype=str),
        "orders_count": c["orders_count"],
        "first_order_at": pd.to_datetime(c["first_order_at"], unit="us", utc=True),
        "last_order_at": pd.to_datetime(c["last_order_at"], unit="us", utc=True),
        **{k: c[k] for k in customers_cols[4:-1]},
        "season_sku": season_sku,
    })
    sk = fc.skus
    skus = _empty(SKU_COLUMNS)
    if len(sk["days"]):
        skus = pd.DataFrame({
            "customer_id": pd.Series(fc.customer_ids.take(pa.array(sk["customer_id"]))
                                     .to_pandas(), dtype=str),
            "sku": pd.Series(sku_names[sk["sku"]], dtype=str),
            "days": sk["days"],
            "first_day": _dates(sk["first_day"]),
            "last_day": _dates(sk["last_day"]),
            **{k: sk[k] for k in SKU_COLUMNS[5:]},
        })
    daily = pd.DataFrame({"day": _dates(fc.daily["day"]), "orders": fc.daily["orders"],
                          "revenue": fc.daily["revenue"]})
    return FeatureSet(customers, skus, daily)


def _dates(days: np.ndarray) -> np.ndarray:
    return pd.to_datetime(days, unit="D").date


def _customer_codes(ids: pd.Series) -> tuple[np.ndarray, pa.Array]:
    """Customers as positions 0..n-1 in their sorted ids (only those present)."""
    cat = ids.dtype
    if isinstance(cat, pd.CategoricalDtype) and cat.categories.is_monotonic_increasing:
        codes = ids.cat.codes.to_numpy()
        present = np.bincount(codes, minlength=len(cat.categories)) > 0
        remap = (np.cumsum(present) - 1).astype(np.int32)
        names = pa.array(cat.categories.to_numpy(dtype=object)[present], pa.string())
        return remap[codes], names
    codes, uniq = pd.factorize(ids.astype(str), sort=True)
    return codes.astype(np.int32), pa.array(np.asarray(uniq, dtype=object), pa.string())


def _bits(x: int) -> int:
    return max(int(x).bit_length(), 1)


def compute_columns(orders: pd.DataFrame, lines: pd.DataFrame | None) -> FeatureColumns:
    """Every feature as arrays (see ``FeatureColumns``): one sort of the orders by (customer,
    day), one of the lines by (customer, product, day), then bincounts and sorted picks."""
    return consume_frames([orders, lines])


def consume_frames(frames: list[pd.DataFrame | None]) -> FeatureColumns:
    """``compute_columns`` over ``[orders, lines]`` that empties the list as soon as it has
    taken the columns it needs: a caller that hands over its only references (the ingest)
    does not hold a million customers' frames and their arrays at once."""
    orders, lines = frames[0], frames[1]
    frames[0] = frames[1] = None
    assert orders is not None
    if orders.empty:
        return FeatureColumns(pa.array([], pa.string()), {}, pa.array([], pa.string()),
                              {"days": np.zeros(0, np.int64)}, {})
    codes, ids = _customer_codes(orders["customer_id"])
    n = len(ids)
    ts = orders["ordered_at"].dt.tz_convert("UTC").dt.as_unit("us").array.asi8
    total = orders["total"].to_numpy(dtype=float)
    del orders
    day = (ts // _US_PER_DAY).astype(np.int32)
    order = sort_order(codes, day)
    cust, ts, total, day = codes[order], ts[order], total[order], day[order]

    count = np.bincount(cust, minlength=n)
    ends = np.cumsum(count)
    starts = ends - count
    spent = np.bincount(cust, weights=total, minlength=n)

    # Visits: distinct (customer, day).
    new_day = np.ones(len(day), bool)
    new_day[1:] = (cust[1:] != cust[:-1]) | (day[1:] != day[:-1])
    day_idx = np.cumsum(new_day) - 1
    vcust, vday = cust[new_day], day[new_day]
    vspent = np.bincount(day_idx, weights=total)
    del day_idx
    visits = np.bincount(vcust, minlength=n)
    vends = np.cumsum(visits)

    same = vcust[1:] == vcust[:-1]
    gaps = (vday[1:] - vday[:-1])[same].astype(float)
    gcust = vcust[1:][same]
    ngaps = np.bincount(gcust, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_gap = np.bincount(gcust, weights=gaps, minlength=n) / ngaps
        logs = np.log(gaps)
        log_mean = np.bincount(gcust, weights=logs, minlength=n) / ngaps
        dev = logs - log_mean[gcust]
        log_var = np.bincount(gcust, weights=dev * dev, minlength=n) / (ngaps - 1)
    log_var[ngaps < 2] = np.nan
    median_gap = group_median(gcust, gaps, n)

    season = _seasons(vcust, vday, n)

    customers = {
        "orders_count": count.astype(np.int64),
        "first_order_at": np.minimum.reduceat(ts, starts),
        "last_order_at": np.maximum.reduceat(ts, starts),
        "total_spent": spent,
        "avg_order_value": spent / count,
        "mean_interval_days": mean_gap,
        "median_interval_days": median_gap,
        "order_days": visits.astype(np.int64),
        "gap_log_mean": log_mean,
        "gap_log_var": log_var,
        "last_day_spent": vspent[vends - 1],
        "season_doy": season["doy"],
        "season_r": season["r"],
        "season_cycles": season["cycles"],
        "season_years": season["years"],
        "season_share": season["share"],
        "season_sku": np.full(n, -1, np.int64),
    }

    d0 = int(day.min())
    per_day = np.bincount(day - d0)
    has_day = np.flatnonzero(per_day)
    daily = {"day": has_day + d0, "orders": per_day[has_day].astype(np.int64),
             "revenue": np.bincount(day - d0, weights=total)[has_day]}

    sku_ids = pa.array([], pa.string())
    skus: dict[str, np.ndarray] = {"days": np.zeros(0, np.int64)}
    if lines is not None and len(lines):
        inv = np.empty(len(order), np.int64)
        inv[order] = np.arange(len(order))
        line_order = inv[lines["order"].to_numpy()]
        del inv, order
        if isinstance(lines["sku"].dtype, pd.CategoricalDtype) and \
                lines["sku"].cat.categories.is_monotonic_increasing:  # the reader's codes
            sku_codes = lines["sku"].cat.codes.to_numpy().astype(np.int32)
            sku_ids = pa.array(lines["sku"].cat.categories.to_numpy(dtype=object), pa.string())
        else:
            sku_codes, uniq = pd.factorize(lines["sku"].astype(str), sort=True)
            sku_ids = pa.array(np.asarray(uniq, dtype=object), pa.string())
        qty = lines["quantity"].to_numpy()
        del lines
        skus = _sku_features(cust[line_order], day[line_order], sku_codes, qty,
                             season["centre"])
        if len(skus["days"]):
            customers["season_sku"] = _season_sku(skus, n)
    return FeatureColumns(ids, customers, sku_ids, skus, daily)


def _season_sku(skus: dict[str, np.ndarray], n: int) -> np.ndarray:
    """Per customer, the product bought on most days inside their window (ties: the first
    sku in sort order); -1 when none."""
    out = np.full(n, -1, np.int64)
    rows = np.flatnonzero(skus["season_days"] > 0)
    if not len(rows):
        return out
    c, sd, sk = skus["customer_id"][rows], skus["season_days"][rows], skus["sku"][rows]
    order = sort_order(c, sd.max() - sd, sk)
    c, sk = c[order], sk[order]
    first = np.ones(len(c), bool)
    first[1:] = c[1:] != c[:-1]
    out[c[first]] = sk[first]
    return out


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


def _pack(keys: Sequence[np.ndarray], extra_bits: int = 0
          ) -> tuple[np.ndarray, list[tuple[int, int]]] | None:
    """Non-negative-after-shift integer keys packed into one int64 (first key most
    significant) with ``extra_bits`` free at the bottom; None when they do not fit."""
    shifts, bits = [], extra_bits
    lows = []
    for k in keys:
        lo = int(k.min()) if len(k) else 0
        width = _bits(int(k.max()) - lo) if len(k) else 1
        lows.append(lo)
        shifts.append(width)
        bits += width
    if bits > 62:
        return None
    packed = np.zeros(len(keys[0]), np.int64)
    for k, lo, width in zip(keys, lows, shifts, strict=True):
        packed <<= width
        packed += k  # in place (the low bits are free): no int64 copy of each key
        if lo:
            packed -= lo
    packed <<= extra_bits
    return packed, list(zip(lows, shifts, strict=True))


def sort_order(*keys: np.ndarray) -> np.ndarray:
    """Stable order by several integer keys (first key most significant).

    The keys and the row number are packed into one int64 and sorted with NumPy's plain
    (SIMD) sort, several times faster than a stable argsort; the row number in the low bits
    makes equal keys keep their order. Falls back to ``np.lexsort`` when they do not fit.
    """
    n = len(keys[0])
    ibits = _bits(n - 1) if n else 1
    got = _pack(keys, ibits)
    if got is None:
        return np.lexsort(tuple(reversed(keys)))
    packed = got[0]
    packed |= np.arange(n, dtype=np.int64)
    packed.sort()
    packed &= (1 << ibits) - 1
    return packed


def group_median(groups: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """Median of ``values`` per integer group 0..n_groups-1 (NaN for an empty group)."""
    out = np.full(n_groups, np.nan)
    if len(values) == 0:
        return out
    integral = bool(np.all(values == np.floor(values))) and values.min() >= 0
    got = _pack([groups, values.astype(np.int64)]) if integral else None
    if got is not None:  # sorted values come straight out of the packed keys
        packed, ((_, _), (vlo, vbits)) = got
        packed.sort()
        v = ((packed & ((1 << vbits) - 1)) + vlo).astype(float)
    else:
        v = values[np.lexsort((values, groups))]
    counts = np.bincount(groups, minlength=n_groups)
    starts = np.cumsum(counts) - counts
    has = counts > 0
    lo = starts[has] + (counts[has] - 1) // 2
    hi = starts[has] + counts[has] // 2
    out[has] = (v[lo] + v[hi]) / 2.0
    return out


def phase(day: np.ndarray) -> np.ndarray:
    """Position of a day (days since 1970-01-01) in its year, as an angle in [0, 2 pi)."""
    return TWO_PI * np.mod(day / YEAR_DAYS, 1.0)


def phase_to_doy(angle: np.ndarray | float) -> np.ndarray:
    """The inverse of ``phase``: 1 = 1 January."""
    return np.mod(np.asarray(angle) / TWO_PI, 1.0) * YEAR_DAYS + 1.0


def day_phase(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``phase`` of each day with its cosine and sine, computed once per distinct day (a few
    thousand) and gathered: the same numbers as computing them per row, for a fraction of the
    time on millions of rows."""
    if not len(days):
        empty = np.zeros(0)
        return empty, empty, empty
    d0 = int(days.min())
    table = phase(np.arange(d0, int(days.max()) + 1, dtype=np.int64))
    at = days - d0
    return table[at], np.cos(table)[at], np.sin(table)[at]


def circular_distance_days(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Shortest distance in days between two angles on the year circle."""
    d = np.mod(a - b + np.pi, TWO_PI) - np.pi
    return np.abs(d) * YEAR_DAYS / TWO_PI


def _cycle_means(vcust: np.ndarray, cycle: np.ndarray, cos: np.ndarray, sin: np.ndarray,
                 n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over a customer's cycles of the cycle's mean unit vector (one point per year)."""
    new = np.ones(len(cycle), bool)
    new[1:] = (vcust[1:] != vcust[:-1]) | (cycle[1:] != cycle[:-1])
    gidx = np.cumsum(new) - 1
    per = np.bincount(gidx)
    c = np.bincount(gidx, weights=cos) / per
    s = np.bincount(gidx, weights=sin) / per
    gcust = vcust[new]
    ncycles = np.bincount(gcust, minlength=n)
    with np.errstate(invalid="ignore"):
        return (np.bincount(gcust, weights=c, minlength=n) / ncycles,
                np.bincount(gcust, weights=s, minlength=n) / ncycles, ncycles)


def _seasons(vcust: np.ndarray, vday: np.ndarray, n: int) -> dict[str, np.ndarray]:
    angle, cos, sin = day_phase(vday)
    # Pass 1: calendar-ish years give a first direction; pass 2 re-cuts the years around it.
    c1, s1, _ = _cycle_means(vcust, np.floor(vday / YEAR_DAYS).astype(np.int64), cos, sin, n)
    centre1 = np.arctan2(s1, c1)
    cycle = np.rint(vday / YEAR_DAYS - centre1[vcust] / TWO_PI).astype(np.int64)
    c, s, ncycles = _cycle_means(vcust, cycle, cos, sin, n)
    del cos, sin
    centre = np.arctan2(s, c)
    inside = circular_distance_days(angle, centre[vcust]) <= SEASON_HALF_WIDTH
    visits = np.bincount(vcust, minlength=n)
    first_in_cycle = np.ones(len(cycle), bool)
    first_in_cycle[1:] = (vcust[1:] != vcust[:-1]) | (cycle[1:] != cycle[:-1])
    # A cycle counts once: mark the cycles that have any visit inside the window.
    cyc_id = np.cumsum(first_in_cycle) - 1
    cyc_inside = np.bincount(cyc_id, weights=inside.astype(float)) > 0
    years = np.bincount(vcust[first_in_cycle], weights=cyc_inside.astype(float), minlength=n)
    return {
        "centre": centre,
        "doy": np.round(phase_to_doy(centre), 1),
        "r": np.hypot(c, s),
        "cycles": ncycles.astype(np.int64),
        "years": years.astype(np.int64),
        "share": np.bincount(vcust, weights=inside.astype(float), minlength=n) / visits,
    }


def _sku_features(lc: np.ndarray, ld: np.ndarray, ls: np.ndarray, qty: np.ndarray,
                  centre: np.ndarray) -> dict[str, np.ndarray]:
    """Per (customer, sku): visits, dates, quantities, own repurchase interval, phase sums.

    Lines only need their (customer, sku, day, units) in sorted order, not their positions: the
    four are packed into one int64 and sorted as values when they fit.
    """
    got = _pack([lc, ls, ld], _bits(int(qty.max())) if len(qty) else 1) \
        if len(qty) and qty.min() >= 0 else None
    if got is not None:
        packed, ((clo, _), (slo, sb), (dlo, db)) = got
        qbits = _bits(int(qty.max()))
        packed |= qty
        del qty, lc, ls, ld
        packed.sort()

        def field(shift: int, bits: int, lo: int) -> np.ndarray:
            out = np.right_shift(packed, shift, out=tmp)
            out &= (1 << bits) - 1
            out += lo
            return out.astype(np.int32)

        tmp = np.empty_like(packed)
        qty = field(0, qbits, 0)
        ld = field(qbits, db, dlo)
        ls = field(qbits + db, sb, slo)
        lc = np.right_shift(packed, qbits + db + sb, out=tmp).astype(np.int32) + clo
        del tmp
        packed >>= qbits
        key = packed  # (customer, sku, day)
    else:
        order = sort_order(lc, ls, ld)
        lc, ls, ld, qty = lc[order], ls[order], ld[order], qty[order]
        key = None
    # (customer, sku, day) with the units bought that day
    new = np.ones(len(lc), bool)
    if key is not None:
        new[1:] = key[1:] != key[:-1]
    else:
        new[1:] = (lc[1:] != lc[:-1]) | (ls[1:] != ls[:-1]) | (ld[1:] != ld[:-1])
    starts = np.flatnonzero(new)
    dq = np.add.reduceat(qty, starts).astype(np.int64) if len(starts) else qty[:0]
    dc, ds, dd = lc[new], ls[new], ld[new]
    del lc, ls, ld, qty, key, new
    # (customer, sku) groups
    gnew = np.ones(len(dc), bool)
    gnew[1:] = (dc[1:] != dc[:-1]) | (ds[1:] != ds[:-1])
    g = np.cumsum(gnew) - 1
    ng = int(g[-1]) + 1 if len(g) else 0
    days = np.bincount(g, minlength=ng)
    gends = np.cumsum(days)
    gstarts = gends - days
    same = g[1:] == g[:-1]
    gap = (dd[1:] - dd[:-1]).astype(float)[same]
    unit_gap = gap / dq[:-1][same]
    gg = g[1:][same]
    angle, cos, sin = day_phase(dd)
    inside = circular_distance_days(angle, centre[dc]) <= SEASON_HALF_WIDTH
    del angle
    return {
        "customer_id": dc[gnew].astype(np.int64),
        "sku": ds[gnew].astype(np.int64),
        "days": days.astype(np.int64),
        "first_day": dd[gstarts].astype(np.int64),
        "last_day": dd[gends - 1].astype(np.int64),
        "quantity": np.bincount(g, weights=dq, minlength=ng).astype(np.int64),
        "last_quantity": dq[gends - 1],
        "gap_median": group_median(gg, gap, ng),
        # to a tenth of a day, which keeps the median an integer sort
        "unit_gap_median": group_median(gg, np.round(unit_gap * 10.0), ng) / 10.0,
        "phase_cos": np.bincount(g, weights=cos, minlength=ng),
        "phase_sin": np.bincount(g, weights=sin, minlength=ng),
        "season_days": np.bincount(g, weights=inside.astype(float), minlength=ng
                                   ).astype(np.int64),
    }


def days_between(later: dt.date, earlier: pd.Series) -> pd.Series:
    """Whole days from each timestamp's UTC date to ``later`` (vectorised)."""
    return (pd.Timestamp(later) - earlier.dt.tz_convert("UTC").dt.tz_localize(None).dt.floor("D")
            ).dt.days


def feature_parts(frames: list[pd.DataFrame | None]) -> Iterator[FeatureColumns]:
    """The features of consecutive customer ranges (for now: one range, all customers)."""
    yield consume_frames(frames)
