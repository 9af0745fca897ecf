"""The features of one range of customers, from its orders and lines in customer order.

Visits are distinct UTC order *days*: two orders on the same day are one visit for the purpose of
"how often does this customer come back". Every aggregate is vectorised over the range's
customers (positions 0..n-1): a ``bincount``, a sum over runs or a sorted-position pick, no
per-customer Python loop.

Seasonal window (circular statistics on the day of the year, ``tend.features.year``): each visit
day is a point on the year circle; the customer's visits are averaged per *cycle* (one point per
customer per year, so a year with three December orders counts once), and the cycles are
averaged again. The direction of that mean is the customer's season (``season_doy``), its
length ``season_r`` in [0, 1] says how consistently they come at that time (1: always the same
day; a regular who buys all year long is near 0). Cycles are years centred on the customer's
own season, so a window around New Year is not cut in two. ``season_years`` counts the cycles
with a visit within ``SEASON_HALF_WIDTH`` days of the season's centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tend.features.columns import SKU_COLUMNS
from tend.features.sorting import (
    Runs,
    bit_width,
    group_median,
    mostly_sorted,
    pack,
    radix_order,
    run_median,
    run_starts,
    run_sums,
    sort_order,
)
from tend.features.year import SEASON_HALF_WIDTH, TWO_PI, YEAR_DAYS, Days, phase_to_doy


@dataclass
class Visits:
    """A range's visits (distinct customer days) in (customer, day) order."""

    cust: np.ndarray  # customer (intp)
    off: np.ndarray  # day - Days.lo (intp)
    inside: np.ndarray  # inside the customer's seasonal window
    of_order: np.ndarray  # per order (sorted): its visit


def customer_columns(cust: np.ndarray, ts: np.ndarray, total: np.ndarray, off: np.ndarray,
                     n: int, to_us: int, days: Days) -> tuple[dict[str, np.ndarray], Visits]:
    """The customer columns of a range from its orders in (customer, day, row) order:
    ``cust`` 0..n-1, ``ts`` in the column's unit, ``off`` the day - ``days.lo``."""
    count = np.bincount(cust, minlength=n)
    ends = np.cumsum(count)
    starts = ends - count
    spent = np.bincount(cust, weights=total, minlength=n)

    # Visits: distinct (customer, day); a customer's first order starts one.
    new_day = run_starts(off)
    new_day[starts] = True
    of_order = np.cumsum(new_day, dtype=np.intp)
    of_order -= 1
    vcust, voff = cust[new_day], off[new_day]
    del new_day
    last_spent = np.bincount(of_order, weights=total)
    visits = np.bincount(vcust, minlength=n)
    vends = np.cumsum(visits)
    vstarts = vends - visits

    # Gaps between a customer's visits: every visit but its first closes one.
    later = np.ones(len(voff), bool)
    later[vstarts] = False
    gaps = np.diff(voff)[later[1:]]
    gcust = vcust[later]
    del later
    ngaps = visits - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        fgaps = gaps.astype(float)
        mean_gap = np.bincount(gcust, weights=fgaps, minlength=n) / ngaps
        logs = np.log(fgaps)
        del fgaps
        log_mean = np.bincount(gcust, weights=logs, minlength=n) / ngaps
        dev = log_mean[gcust]
        np.subtract(logs, dev, out=dev)
        dev *= dev
        log_var = np.bincount(gcust, weights=dev, minlength=n) / (ngaps - 1)
        del dev, logs
    log_var[ngaps < 2] = np.nan
    median_gap = run_median(gaps, ngaps)
    del gaps, gcust

    season, inside = _seasons(vcust, voff, vstarts, visits, n, days)
    first, last = np.minimum.reduceat(ts, starts), np.maximum.reduceat(ts, starts)
    if to_us != 1:
        first *= to_us
        last *= to_us
    customers = {
        "orders_count": count,
        "first_order_at": first,
        "last_order_at": last,
        "total_spent": spent,
        "avg_order_value": spent / count,
        "mean_interval_days": mean_gap,
        "median_interval_days": median_gap,
        "order_days": visits,
        "gap_log_mean": log_mean,
        "gap_log_var": log_var,
        "last_day_spent": last_spent[vends - 1],
        "season_doy": season["doy"],
        "season_r": season["r"],
        "season_cycles": season["cycles"],
        "season_years": season["years"],
        "season_share": season["share"],
        "season_sku": np.full(n, -1, np.int64),
    }
    return customers, Visits(vcust, voff, inside, of_order)


def _cycle_means(vcust: np.ndarray, vstarts: np.ndarray, cycle: np.ndarray, cos: np.ndarray,
                 sin: np.ndarray, n: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean over a customer's cycles of the cycle's mean unit vector (one point per year);
    also where each cycle starts and its customer."""
    new = run_starts(cycle)
    new[vstarts] = True
    gidx = np.cumsum(new, dtype=np.intp)
    gidx -= 1
    starts = np.flatnonzero(new)
    del new
    per = np.diff(starts, append=len(cycle))
    c = np.bincount(gidx, weights=cos) / per
    s = np.bincount(gidx, weights=sin) / per
    del gidx, per
    gcust = vcust[starts]
    ncycles = np.bincount(gcust, minlength=n)
    with np.errstate(invalid="ignore"):
        return (np.bincount(gcust, weights=c, minlength=n) / ncycles,
                np.bincount(gcust, weights=s, minlength=n) / ncycles, ncycles, starts, gcust)


def _mod_two_pi(x: np.ndarray) -> None:
    """``np.mod(x, TWO_PI, out=x)``, exactly, for the angle differences of the seasons.

    They lie in [0, 4 pi) (an angle in [0, 2 pi) minus a centre in [-pi, pi], plus pi), where
    the remainder is x or x - 2 pi, and that subtraction is exact (Sterbenz: x is within a
    factor of two of 2 pi), as is the remainder NumPy computes (fmod); only its sign of zero
    can differ, which the distance (an absolute value after subtracting pi) does not see.
    A test and a subtraction instead of a floating-point remainder per visit: the general
    remainder when anything falls outside (NaN included).
    """
    if not len(x):
        return
    lo, hi = x.min(), x.max()
    if not (lo >= 0.0 and hi < 2.0 * TWO_PI):
        np.mod(x, TWO_PI, out=x)
        return
    np.subtract(x, TWO_PI, out=x, where=x >= TWO_PI)


def _seasons(vcust: np.ndarray, voff: np.ndarray, vstarts: np.ndarray, visits: np.ndarray,
             n: int, days: Days) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The seasonal window per customer (see the module's docstring), and per visit whether
    it is inside."""
    cos, sin = days.cos[voff], days.sin[voff]
    # Pass 1: calendar-ish years give a first direction; pass 2 re-cuts the years around it.
    c1, s1, _, _, _ = _cycle_means(vcust, vstarts, days.cycle[voff], cos, sin, n)
    centre1 = np.arctan2(s1, c1)
    del c1, s1
    x = (centre1 / TWO_PI)[vcust]
    np.subtract(days.years[voff], x, out=x)
    cycle = np.rint(x, out=x).astype(np.int64)
    del x
    c, s, ncycles, cycle_starts, cycle_cust = _cycle_means(vcust, vstarts, cycle, cos, sin, n)
    del cos, sin, cycle
    centre = np.arctan2(s, c)
    # circular_distance_days(angle, centre[vcust]) <= SEASON_HALF_WIDTH, in place
    d = days.angle[voff]
    d -= centre[vcust]
    d += np.pi
    _mod_two_pi(d)
    d -= np.pi
    np.abs(d, out=d)
    d *= YEAR_DAYS
    d /= TWO_PI
    inside = d <= SEASON_HALF_WIDTH
    del d
    # A cycle counts once: the cycles with any visit inside the window.
    cycle_inside = run_sums(inside, cycle_starts) > 0
    return {
        "doy": np.round(phase_to_doy(centre), 1),
        "r": np.hypot(c, s),
        "cycles": ncycles,
        "years": np.bincount(cycle_cust[cycle_inside], minlength=n),
        "share": np.bincount(vcust[inside], minlength=n) / visits,
    }, inside


def _empty_skus() -> dict[str, np.ndarray]:
    floats = {"gap_median", "unit_gap_median", "phase_cos", "phase_sin"}
    return {k: np.zeros(0, float if k in floats else np.int64) for k in SKU_COLUMNS}


def sku_columns(lvisit: np.ndarray, sku: np.ndarray, qty: np.ndarray, visits: Visits,
                 days: Days) -> dict[str, np.ndarray]:
    """Per (customer, sku) of a range: visits, dates, quantities, own repurchase interval,
    phase sums, from its lines as (visit, sku, units).

    A line's visit stands for its (customer, day): visits are numbered in (customer, day)
    order, so (customer, sku, visit) sorts as (customer, sku, day), and the day's phase and
    window come from the visit instead of being computed again per line. The four are packed
    into one int64 and sorted as values when they fit.
    """
    if not len(lvisit):
        return _empty_skus()
    lc = visits.cust[lvisit]
    qbits = bit_width(int(qty.max())) if qty.dtype.kind in "iu" and qty.min() >= 0 else 0
    spans = [(0, int(visits.cust[-1])), (int(sku.min()), int(sku.max())),
             (0, len(visits.cust) - 1)]
    got = pack([lc, sku, lvisit], qbits, spans=spans) if qbits else None
    if got is not None:
        packed, ((_, _), (slo, sbits), (vlo, vbits)) = got
        packed |= qty
        if mostly_sorted(lc):  # the reader's order: timsort sorts within the customers
            packed.sort(kind="stable")
        else:  # lines in time order: by (customer, sku), then check that days follow
            packed = packed[radix_order(packed >> (qbits + vbits))]
            after = packed >> qbits
            if np.any(after[1:] < after[:-1]):
                packed.sort()
            del after
        del lc, sku, lvisit
        dq = packed & ((1 << qbits) - 1)
        key = packed
        key >>= qbits  # (customer, sku, visit)
    else:
        order = sort_order(lc, sku, lvisit)
        lc, sku, lvisit, dq = lc[order], sku[order], lvisit[order], qty[order]
        del order
        key = None
    # (customer, sku, visit) with the units bought that day
    new = run_starts(key) if key is not None else run_starts(lc, sku, lvisit)
    if key is not None and not new.all():
        # a few lines on the same day: their units (whole numbers) go to the day's first
        again = np.flatnonzero(~new)
        more = dq[again]
        dq = dq[new]
        again -= np.arange(1, len(again) + 1)  # the day's position among the days
        np.add.at(dq, again, more)
        key = key[new]
        del again, more
    elif not new.all():
        starts = np.flatnonzero(new)
        dq = np.add.reduceat(dq, starts)
        lc, sku, lvisit = lc[starts], sku[starts], lvisit[starts]
        del starts
    del new
    dq = dq.astype(np.int64, copy=False)
    if key is not None:
        dv = key & ((1 << vbits) - 1)
        dv += vlo
        key >>= vbits  # (customer, sku)
    else:
        dv = lvisit
    # (customer, sku) groups
    gnew = run_starts(key) if key is not None else run_starts(lc, sku)
    gstarts = np.flatnonzero(gnew)
    gends = np.append(gstarts[1:], len(dv))
    ng = len(gstarts)
    if key is not None:
        head = key[gstarts]
        gsku = (head & ((1 << sbits) - 1)) + slo
        gcust = visits.cust[dv[gstarts]]
        del key, head
    else:
        gsku, gcust = sku[gstarts].astype(np.int64), lc[gstarts].astype(np.int64)
    g = np.cumsum(gnew, dtype=np.intp)
    g -= 1
    doff = visits.off[dv]
    inside = visits.inside[dv]
    del dv
    later = ~gnew[1:]
    del gnew
    gap = np.diff(doff)[later]
    per = dq[:-1][later]
    unit_gap = gap.astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):  # units of 0: an infinite interval
        unit_gap /= per
    unit_gap *= 10.0  # to a tenth of a day, which keeps the median an integer sort
    np.round(unit_gap, out=unit_gap)
    ndays = gends - gstarts
    runs = Runs(ndays - 1, 3)  # the same groups for both medians
    if not len(per) or per.min() > 0:  # then whole, finite and positive
        unit_median = run_median(unit_gap.astype(np.int64), ndays - 1, runs)
    else:  # quantities that are not positive: the general median
        unit_median = group_median(g[1:][later], unit_gap, ng, grouped=True)
    del per, unit_gap, later
    return {
        "customer_id": gcust.astype(np.int64, copy=False),
        "sku": gsku.astype(np.int64, copy=False),
        "days": ndays,
        "first_day": doff[gstarts] + days.lo,
        "last_day": doff[gends - 1] + days.lo,
        "quantity": run_sums(dq, gstarts),
        "last_quantity": dq[gends - 1],
        "gap_median": run_median(gap, ndays - 1, runs),
        "unit_gap_median": unit_median / 10.0,
        "phase_cos": np.bincount(g, weights=days.cos[doff], minlength=ng),
        "phase_sin": np.bincount(g, weights=days.sin[doff], minlength=ng),
        "season_days": run_sums(inside, gstarts),
    }


def season_sku(skus: dict[str, np.ndarray], n: int) -> np.ndarray:
    """Per customer, the product bought on most days inside their window (ties: the first
    sku in sort order); -1 when none. Rows come in (customer, sku) order, so that is the
    first row of a customer holding the customer's largest count."""
    out = np.full(n, -1, np.int64)
    rows = np.flatnonzero(skus["season_days"] > 0)
    if not len(rows):
        return out
    c, sd, sk = skus["customer_id"][rows], skus["season_days"][rows], skus["sku"][rows]
    starts = np.flatnonzero(run_starts(c))
    best = np.maximum.reduceat(sd, starts)
    top = sd == np.repeat(best, np.diff(np.append(starts, len(c))))
    c, sk = c[top], sk[top]
    first = run_starts(c)
    out[c[first]] = sk[first]
    return out
