"""Per-customer features from order history, maintained incrementally in the contact store.

Each night only customers with new orders since the watermark are recomputed, from their own
full history, so the result is identical to a full rebuild (tested). Everything here is
vectorised over integer-coded customers: rows are sorted by (customer, time) and every
aggregate is a ``bincount``/``reduceat``/sorted-position pick — no per-customer Python loop, no
``groupby().apply``.

A full rebuild (a million customers, twenty million order lines) is computed in ranges of
customers (``feature_parts``): the rows are dealt out to the ranges once, then each range is
computed on its own, so every temporary is the size of a range (glibc reuses the memory from
one range to the next instead of the kernel faulting fresh pages for every 20M-element array),
and the caller can write one range while the next is computed. Put together the ranges are
bit for bit the whole computation: every floating-point sum adds the same numbers in the same
order (tested against the one-pass computation it replaced).

Three frames come out (``FeatureSet``):

* ``customers`` — one row per customer with at least one clean order: the base columns
  (``FEATURE_COLUMNS``) and the profile the signals need (``PROFILE_COLUMNS``): the rhythm of
  their visits on the log scale, what they spent on their last visit, and their seasonal window.
* ``skus`` — one row per customer and product bought (``SKU_COLUMNS``): when, how often, how
  much, the customer's own repurchase interval (per unit), and the phase of the purchase days.

The store keeps all three in ``customer_features`` (one row per customer, the products packed
into it; see ``tend.store.tables``) and ``shop_daily``.
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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

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
    ``sku``, ``quantity``), as ``tend.shop.read.read_history`` returns them."""
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


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


def _empty_columns() -> FeatureColumns:
    """What the features of no orders are (no customers, no products, no days)."""
    return FeatureColumns(pa.array([], pa.string()), {}, pa.array([], pa.string()),
                          {"days": np.zeros(0, np.int64)}, {})


def _bits(x: int) -> int:
    return max(int(x).bit_length(), 1)


# -- the whole computation, and the same in customer ranges ----------------------------------

def compute_columns(orders: pd.DataFrame, lines: pd.DataFrame | None) -> FeatureColumns:
    """Every feature as arrays (see ``FeatureColumns``)."""
    return consume_frames([orders, lines])


def consume_frames(frames: list[pd.DataFrame | None]) -> FeatureColumns:
    """``compute_columns`` over ``[orders, lines]`` that empties the list as soon as it has
    taken the columns it needs: a caller that hands over its only references (the ingest)
    does not hold a million customers' frames and their arrays at once.

    Computed in customer ranges (``feature_parts``) and put together: every temporary is the
    size of a range, not of the whole history."""
    return concat_parts(feature_parts(frames, part_lines=_CONSUME_PART_LINES))


#: Ranges of ``consume_frames``: smaller ranges than the default of ``feature_parts`` keep
#: more of each range's arrays in the CPU caches (~10% faster on the 1M-customer benchmark);
#: a caller that writes ranges wants fewer, larger ones.
_CONSUME_PART_LINES = 500_000


def concat_parts(parts: Iterable[FeatureColumns]) -> FeatureColumns:
    """The parts of ``feature_parts`` as one ``FeatureColumns``: the whole computation's.

    Each column is put together and then dropped from the parts before the next one, so the
    result and its parts are not all held twice at once."""
    parts = list(parts)
    if len(parts) <= 1:
        return parts[0] if parts else _empty_columns()
    first = parts[0]
    offsets = np.cumsum([0] + [len(p) for p in parts[:-1]])
    customers: dict[str, np.ndarray] = {}
    for k in list(first.customers):
        customers[k] = np.concatenate([p.customers.pop(k) for p in parts])
    skus: dict[str, np.ndarray] = {}
    for k in list(first.skus):
        cols = [p.skus.pop(k) for p in parts]
        if k == "customer_id":
            cols = [c + off for c, off in zip(cols, offsets, strict=True)]
        skus[k] = np.concatenate(cols)
    ids = pa.concat_arrays([p.customer_ids for p in parts])
    return FeatureColumns(ids, customers, first.sku_ids, skus, first.daily)


def feature_parts(frames: list[pd.DataFrame | None], *, part_lines: int = 2_000_000
                  ) -> Iterator[FeatureColumns]:
    """``consume_frames`` in consecutive ranges of customers (ascending ids), each with about
    ``part_lines`` order lines (orders when there are no lines): the caller writes one range
    while the next is computed, and every temporary is the size of a range, so the same few
    tens of MB of glibc's heap serve every range instead of fresh pages for each
    20M-element array.

    Takes ``frames`` = ``[orders, lines]`` over at once (it empties the list). A range holds at
    least one customer (one with more lines is a range of its own). Per range: its sorted
    ``customer_ids`` and their ``customers`` columns; ``skus`` with ``customer_id`` a position
    in the range and ``sku`` a position in ``sku_ids``, the whole catalogue (the same for every
    range); ``daily`` is the shop's, over all orders, in the first range only (``{}`` in the
    others). No orders: one empty ``FeatureColumns``. Put together (``concat_parts``) the
    ranges are exactly ``consume_frames``: every sum over a customer adds the same numbers in
    the same order.
    """
    if part_lines < 1:
        raise ValueError(f"part_lines must be at least 1, not {part_lines}")
    orders, lines = frames[0], frames[1]
    frames[0] = frames[1] = None
    assert orders is not None
    if orders.empty:
        return iter([_empty_columns()])
    src = _Input.take(orders, lines)
    del orders, lines
    return _parts(src, part_lines)


_TO_US = {"s": 1_000_000, "ms": 1_000, "us": 1}
#: Rows per block of a pass over a whole column, so its temporaries come from glibc's heap
#: (reused) rather than fresh mappings.
_BLOCK = 1 << 21
#: Up to this many ranges, the rows of a range are found by one scan of a byte per row
#: (cheaper than sorting them by range, and nothing the size of the column is kept).
_SCAN_PARTS = 32


@dataclass
class _Input:
    """The columns the features read, taken from the frames without copies where the frames'
    own arrays do (codes, times in their own unit, totals, lines' columns)."""

    codes: np.ndarray  # per order: position of its customer in ids (int32)
    ids: pa.Array
    ts: np.ndarray  # per order: int64 time in the column's unit
    to_us: int  # that unit -> µs
    unit_day: int  # one day in that unit
    total: np.ndarray
    line_order: np.ndarray | None  # per line: row of its order (None: no lines)
    sku: np.ndarray | None  # per line: position in sku_ids
    qty: np.ndarray | None
    sku_ids: pa.Array

    @classmethod
    def take(cls, orders: pd.DataFrame, lines: pd.DataFrame | None) -> _Input:
        codes, ids = _customer_codes(orders["customer_id"])
        at = orders["ordered_at"].dt.tz_convert("UTC")
        unit = at.array.unit
        if unit in _TO_US:  # whole multiples of a µs: converted per customer, not per order
            ts, to_us = at.array.asi8, _TO_US[unit]
        else:
            ts, to_us = at.dt.as_unit("us").array.asi8, 1
        total = orders["total"].to_numpy(dtype=float)
        line_order = sku = qty = None
        sku_ids = pa.array([], pa.string())
        if lines is not None and len(lines):
            line_order = lines["order"].to_numpy()
            if isinstance(lines["sku"].dtype, pd.CategoricalDtype) and \
                    lines["sku"].cat.categories.is_monotonic_increasing:  # the reader's codes
                sku = lines["sku"].cat.codes.to_numpy()
                sku_ids = pa.array(lines["sku"].cat.categories.to_numpy(dtype=object),
                                   pa.string())
            else:
                sku, uniq = pd.factorize(lines["sku"].astype(str), sort=True)
                sku_ids = pa.array(np.asarray(uniq, dtype=object), pa.string())
            qty = lines["quantity"].to_numpy()
        return cls(codes, ids, ts, to_us, _US_PER_DAY // to_us, total, line_order, sku, qty,
                   sku_ids)


def _customer_codes(ids: pd.Series) -> tuple[np.ndarray, pa.Array]:
    """Customers as positions 0..n-1 in their sorted ids (only those present)."""
    cat = ids.dtype
    if isinstance(cat, pd.CategoricalDtype):
        names = _sorted_names(cat.categories)
        if names is not None:
            codes = ids.cat.codes.to_numpy()
            present = _counts(codes, len(cat.categories)) > 0
            if present.all():  # the reader's categories are the customers with orders
                return codes.astype(np.int32, copy=False), names
            remap = (np.cumsum(present) - 1).astype(np.int32)
            return remap[codes], names.filter(pa.array(present))
    codes, uniq = pd.factorize(ids.astype(str), sort=True)
    return codes.astype(np.int32), pa.array(np.asarray(uniq, dtype=object), pa.string())


def _counts(codes: np.ndarray, n: int) -> np.ndarray:
    """``np.bincount(codes, minlength=n)`` a block at a time: bincount copies int32 codes to
    int64 first, which for a whole column is a fresh 100 MB."""
    out = np.zeros(n, np.int64)
    for a in range(0, len(codes), _BLOCK):
        out += np.bincount(codes[a:a + _BLOCK], minlength=n)
    return out


def _sorted_names(categories: pd.Index) -> pa.Array | None:
    """The categories as Arrow strings when they are sorted, else None. Arrow-backed ones are
    checked and converted in Arrow: a million ids as Python strings cost ~0.2 s."""
    dtype = categories.dtype
    if isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow":
        arr = pa.array(categories)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if len(arr) > 1 and not pc.all(pc.less_equal(arr[:-1], arr[1:])).as_py():
            return None
        return arr.cast(pa.string())
    if not categories.is_monotonic_increasing:
        return None
    return pa.array(categories.to_numpy(dtype=object), pa.string())


def _part_bounds(weights: np.ndarray, part_lines: int) -> np.ndarray:
    """Customer positions where the ranges start, and the end: greedily as many customers as
    fit in ``part_lines`` (by ``weights``), at least one."""
    cum = np.cumsum(weights)
    bounds, start, base, n = [0], 0, 0, len(weights)
    while start < n:
        end = max(int(np.searchsorted(cum, base + part_lines, side="right")), start + 1)
        bounds.append(end)
        base, start = int(cum[end - 1]), end
    return np.asarray(bounds, np.int64)


class _Rows:
    """The rows of each range (ascending), from the range of every row.

    Rows mostly come in range order (the reader's order is the shop's, by customer, but
    "C1000000" sorts before "C100001"): then a range is a block of rows, less the few rows
    that came late (after a later range's rows began), plus its own late rows — slices and
    small fix-ups, one pass over the column. Otherwise, one scan per range (few ranges) or a
    radix order by range (many).
    """

    def __init__(self, part: np.ndarray, nparts: int) -> None:
        self.part: np.ndarray | None = None
        self.perm: np.ndarray | None = None
        self.late = np.zeros(0, np.int64)
        top = np.maximum.accumulate(part)  # the latest range begun so far
        late = np.flatnonzero(part != top)
        if len(late) * 64 <= len(part):  # (searched in the column's own type: no copy)
            self.bounds = np.append(np.searchsorted(top, np.arange(nparts, dtype=top.dtype)),
                                    len(part))
            self.late, self.late_part = late, part[late]
        elif nparts <= _SCAN_PARTS:
            self.part = part
        else:
            self.perm = np.argsort(part, kind="stable")  # a radix sort of 8 or 16 bits
            self.bounds = np.concatenate(([0], np.cumsum(np.bincount(part, minlength=nparts))))

    def __call__(self, p: int) -> slice | np.ndarray:
        if self.part is not None:
            return np.flatnonzero(self.part == p)
        a, b = int(self.bounds[p]), int(self.bounds[p + 1])
        if self.perm is not None:
            return self.perm[a:b]
        i, j = np.searchsorted(self.late, [a, b])
        own = self.late[self.late_part == p] if len(self.late) else self.late
        if i == j and not len(own):
            return slice(a, b)
        rows = np.arange(a, b, dtype=np.int64)
        if j > i:  # rows of earlier ranges inside the block
            keep = np.ones(b - a, bool)
            keep[self.late[i:j] - a] = False
            rows = rows[keep]
        if len(own):  # two ascending runs: timsort merges them in one pass
            rows = np.concatenate((rows, own))
            rows.sort(kind="stable")
        return rows


@dataclass
class _Days:
    """Everything that depends on the day alone, once per day of the history (a few thousand)
    instead of once per order or line: the same numbers as computing them per row."""

    lo: int  # first day (days since 1970-01-01)
    angle: np.ndarray  # phase
    cos: np.ndarray
    sin: np.ndarray
    years: np.ndarray  # day / YEAR_DAYS
    cycle: np.ndarray  # its floor: the calendar-ish year of the first seasonal pass

    @classmethod
    def span(cls, lo: int, hi: int) -> _Days:
        days = np.arange(lo, hi + 1, dtype=np.int64)
        angle = phase(days)
        years = days / YEAR_DAYS
        return cls(lo, angle, np.cos(angle), np.sin(angle), years,
                   np.floor(years).astype(np.int64))


def _parts(src: _Input, part_lines: int) -> Iterator[FeatureColumns]:
    """``feature_parts`` once the columns are taken: ranges, rows dealt out, daily totals,
    then one range at a time."""
    n = len(src.ids)
    codes, lo = src.codes, src.line_order
    if lo is not None:
        weights = np.zeros(n, np.int64)
        for a in range(0, len(lo), _BLOCK):
            weights += np.bincount(codes[lo[a:a + _BLOCK]], minlength=n)
    else:
        weights = _counts(codes, n)
    bounds = _part_bounds(weights, part_lines)
    del weights
    nparts = len(bounds) - 1
    ptype = np.uint8 if nparts <= 1 << 8 else np.uint16 if nparts <= 1 << 16 else np.int32
    opart = np.repeat(np.arange(nparts, dtype=ptype), np.diff(bounds))[codes]
    order_rows = _Rows(opart, nparts)
    line_rows = _Rows(opart[lo], nparts) if lo is not None else None
    del opart

    # First every range's orders in (customer, day) order, for the shop's daily totals: the
    # revenue of a day adds its orders in that order over all customers, as the whole
    # computation does, and that must be done before the first range goes out.
    ts, unit_day = src.ts, src.unit_day
    days = _Days.span(int(ts.min()) // unit_day, int(ts.max()) // unit_day)
    per_day = np.zeros(len(days.angle), np.int64)
    revenue = np.zeros(len(days.angle))
    sorted_rows: list[np.ndarray | None] = []
    for p in range(nparts):
        rows = order_rows(p)
        off = ts[rows] // unit_day
        off -= days.lo
        perm = _order_by_customer_day(codes[rows], off)
        srows = perm + rows.start if isinstance(rows, slice) else rows[perm]
        off = off[perm]
        per_day += np.bincount(off, minlength=len(per_day))
        np.add.at(revenue, off, src.total[srows])  # in order, as one bincount would
        sorted_rows.append(srows)
    del order_rows
    has_day = np.flatnonzero(per_day)
    daily = {"day": has_day + days.lo, "orders": per_day[has_day],
             "revenue": revenue[has_day]}
    del per_day, revenue

    # Then each range: its orders, their visits, and its lines, which find their visit
    # through the order they belong to (``visit``, one int32 per order, reused by all ranges).
    visit = np.empty(len(codes), np.int32) if lo is not None else None
    for p in range(nparts):
        srows = sorted_rows[p]
        sorted_rows[p] = None
        assert srows is not None
        c0, c1 = int(bounds[p]), int(bounds[p + 1])
        cust = codes[srows].astype(np.intp)
        cust -= c0
        t = ts[srows]
        off = t // unit_day
        off -= days.lo
        customers, visits = _customer_columns(cust, t, src.total[srows], off, c1 - c0,
                                              src.to_us, days)
        del cust, t, off
        skus: dict[str, np.ndarray] = {"days": np.zeros(0, np.int64)}
        if visit is not None and line_rows is not None:
            assert lo is not None and src.sku is not None and src.qty is not None
            visit[srows] = visits.of_order
            lrows = line_rows(p)
            skus = _sku_columns(visit[lo[lrows]].astype(np.intp), src.sku[lrows],
                                src.qty[lrows], visits, days)
            if len(skus["days"]):
                customers["season_sku"] = _season_sku(skus, c1 - c0)
        del srows, visits
        yield FeatureColumns(src.ids.slice(c0, c1 - c0), customers, src.sku_ids, skus,
                             daily if p == 0 else {})


# -- one range of customers ------------------------------------------------------------------

@dataclass
class _Visits:
    """A range's visits (distinct customer days) in (customer, day) order."""

    cust: np.ndarray  # customer (intp)
    off: np.ndarray  # day - _Days.lo (intp)
    inside: np.ndarray  # inside the customer's seasonal window
    of_order: np.ndarray  # per order (sorted): its visit


def _customer_columns(cust: np.ndarray, ts: np.ndarray, total: np.ndarray, off: np.ndarray,
                      n: int, to_us: int, days: _Days
                      ) -> tuple[dict[str, np.ndarray], _Visits]:
    """The customer columns of a range from its orders in (customer, day, row) order:
    ``cust`` 0..n-1, ``ts`` in the column's unit, ``off`` the day - ``days.lo``."""
    count = np.bincount(cust, minlength=n)
    ends = np.cumsum(count)
    starts = ends - count
    spent = np.bincount(cust, weights=total, minlength=n)

    # Visits: distinct (customer, day); a customer's first order starts one.
    new_day = np.empty(len(off), bool)
    new_day[0] = True
    np.not_equal(off[1:], off[:-1], out=new_day[1:])
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
    median_gap = _run_median(gaps, ngaps)
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
    return customers, _Visits(vcust, voff, inside, of_order)


def _cycle_means(vcust: np.ndarray, vstarts: np.ndarray, cycle: np.ndarray, cos: np.ndarray,
                 sin: np.ndarray, n: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean over a customer's cycles of the cycle's mean unit vector (one point per year);
    also where each cycle starts and its customer."""
    new = np.empty(len(cycle), bool)
    new[0] = True
    np.not_equal(cycle[1:], cycle[:-1], out=new[1:])
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


def _seasons(vcust: np.ndarray, voff: np.ndarray, vstarts: np.ndarray, visits: np.ndarray,
             n: int, days: _Days) -> tuple[dict[str, np.ndarray], np.ndarray]:
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
    cycle_inside = _run_sums(inside, cycle_starts) > 0
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


def _sku_columns(lvisit: np.ndarray, sku: np.ndarray, qty: np.ndarray, visits: _Visits,
                 days: _Days) -> dict[str, np.ndarray]:
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
    qbits = _bits(int(qty.max())) if qty.dtype.kind in "iu" and qty.min() >= 0 else 0
    spans = [(0, int(visits.cust[-1])), (int(sku.min()), int(sku.max())),
             (0, len(visits.cust) - 1)]
    got = _pack([lc, sku, lvisit], qbits, spans=spans) if qbits else None
    if got is not None:
        packed, ((_, _), (slo, sbits), (vlo, vbits)) = got
        packed |= qty
        if _mostly_sorted(lc):  # the reader's order: timsort sorts within the customers
            packed.sort(kind="stable")
        else:  # lines in time order: by (customer, sku), then check that days follow
            packed = packed[_radix_order(packed >> (qbits + vbits))]
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
    new = np.empty(len(dq), bool)
    new[0] = True
    if key is not None:
        np.not_equal(key[1:], key[:-1], out=new[1:])
    else:
        new[1:] = (lc[1:] != lc[:-1]) | (sku[1:] != sku[:-1]) | (lvisit[1:] != lvisit[:-1])
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
    gnew = np.empty(len(dv), bool)
    gnew[0] = True
    if key is not None:
        np.not_equal(key[1:], key[:-1], out=gnew[1:])
    else:
        gnew[1:] = (lc[1:] != lc[:-1]) | (sku[1:] != sku[:-1])
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
    runs = _Runs(ndays - 1, 3)  # the same groups for both medians
    if not len(per) or per.min() > 0:  # then whole, finite and positive
        unit_median = _run_median(unit_gap.astype(np.int64), ndays - 1, runs)
    else:  # quantities that are not positive: the general median, as before
        unit_median = _median(g[1:][later], unit_gap, ng, grouped=True)
    del per, unit_gap, later
    return {
        "customer_id": gcust.astype(np.int64, copy=False),
        "sku": gsku.astype(np.int64, copy=False),
        "days": ndays,
        "first_day": doff[gstarts] + days.lo,
        "last_day": doff[gends - 1] + days.lo,
        "quantity": _run_sums(dq, gstarts),
        "last_quantity": dq[gends - 1],
        "gap_median": _run_median(gap, ndays - 1, runs),
        "unit_gap_median": unit_median / 10.0,
        "phase_cos": np.bincount(g, weights=days.cos[doff], minlength=ng),
        "phase_sin": np.bincount(g, weights=days.sin[doff], minlength=ng),
        "season_days": _run_sums(inside, gstarts),
    }


def _run_sums(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """``np.add.reduceat(x, starts)`` for integers or booleans and runs that are not empty,
    as int64 differences of one cumulative sum: exact, without reduceat's cost per run."""
    total = np.cumsum(x, dtype=np.int64)
    ends = total[np.append(starts[1:], len(x)) - 1]
    return np.diff(ends, prepend=0)


def _season_sku(skus: dict[str, np.ndarray], n: int) -> np.ndarray:
    """Per customer, the product bought on most days inside their window (ties: the first
    sku in sort order); -1 when none. Rows come in (customer, sku) order, so that is the
    first row of a customer holding the customer's largest count."""
    out = np.full(n, -1, np.int64)
    rows = np.flatnonzero(skus["season_days"] > 0)
    if not len(rows):
        return out
    c, sd, sk = skus["customer_id"][rows], skus["season_days"][rows], skus["sku"][rows]
    first = np.ones(len(c), bool)
    first[1:] = c[1:] != c[:-1]
    starts = np.flatnonzero(first)
    best = np.maximum.reduceat(sd, starts)
    top = sd == np.repeat(best, np.diff(np.append(starts, len(c))))
    c, sk = c[top], sk[top]
    first = np.ones(len(c), bool)
    first[1:] = c[1:] != c[:-1]
    out[c[first]] = sk[first]
    return out


# -- sorting and medians ---------------------------------------------------------------------

def _pack(keys: Sequence[np.ndarray], extra_bits: int = 0, *, small: bool = False,
          spans: Sequence[tuple[int, int]] | None = None
          ) -> tuple[np.ndarray, list[tuple[int, int]]] | None:
    """Integer keys packed into one integer (first key most significant, each shifted by its
    minimum) with ``extra_bits`` free at the bottom; None when they do not fit in 62 bits.
    ``small``: in an int32 when they fit in 31 bits (half the memory to sort); ``spans``: each
    key's (min, max) when the caller knows them (two passes less per key)."""
    shifts, bits = [], extra_bits
    lows = []
    for i, k in enumerate(keys):
        if spans is not None:
            lo, hi = spans[i]
        else:
            lo = int(k.min()) if len(k) else 0
            hi = int(k.max()) if len(k) else 0
        width = _bits(hi - lo)
        lows.append(lo)
        shifts.append(width)
        bits += width
    if bits > 62:
        return None
    small = small and bits <= 31 and all(-(1 << 31) < lo < 1 << 31 for lo in lows)
    packed = np.zeros(len(keys[0]), np.int32 if small else np.int64)
    for k, lo, width in zip(keys, lows, shifts, strict=True):
        packed <<= width
        if lo:
            packed -= lo
        packed += k  # in place (the low bits are free): no int64 copy of each key
    packed <<= extra_bits
    return packed, list(zip(lows, shifts, strict=True))


def _mostly_sorted(lead: np.ndarray) -> bool:
    """Rows mostly in the order of their leading key (grouped by customer, say)."""
    return np.count_nonzero(lead[1:] < lead[:-1]) * 16 <= len(lead)


def _radix_order(key: np.ndarray) -> np.ndarray:
    """Stable order of non-negative integer keys: 16 bits at a time from the least
    significant, each pass NumPy's radix sort (a stable argsort of 16 bits or fewer), several
    times faster than sorting keys in random order."""
    bits = _bits(int(key.max())) if len(key) else 1
    perm: np.ndarray | None = None
    for shift in range(0, bits, 16):
        k = key if perm is None else key[perm]
        digit = (k >> shift) if shift else k
        digit = (digit & 0xFFFF).astype(np.uint16 if bits - shift > 8 else np.uint8)
        step = np.argsort(digit, kind="stable")
        perm = step if perm is None else perm[step]
    assert perm is not None
    return perm


def _order_by_customer_day(cust: np.ndarray, off: np.ndarray) -> np.ndarray:
    """``_sort_order(cust, off)``: rows by (customer, day, row). Rows in time order (a shop
    that writes its orders as they come) need only a stable order by customer, a radix sort."""
    if len(cust) > 1 and not _mostly_sorted(cust) and not np.any(off[1:] < off[:-1]):
        lo = int(cust.min())
        return _radix_order(cust - lo if lo else cust)
    return _sort_order(cust, off)


def _sort_values(packed: np.ndarray, lead: np.ndarray | None = None) -> None:
    """Sort packed keys in place. Timsort when the leading key ``lead`` is (mostly) in order
    already, as it is when rows come grouped by customer: it then only sorts within the
    groups (several times faster than quicksort); quicksort otherwise. Either gives the same
    values in the same order."""
    n = len(packed)
    if n < 2:
        return
    mostly_sorted = lead is not None and np.count_nonzero(lead[1:] < lead[:-1]) * 16 <= n
    packed.sort(kind="stable" if mostly_sorted else "quicksort")


def _sort_order(*keys: np.ndarray) -> np.ndarray:
    n = len(keys[0])
    ibits = _bits(n - 1) if n else 1
    got = _pack(keys, ibits)
    if got is None:
        return np.lexsort(tuple(reversed(keys)))
    packed = got[0]
    packed |= np.arange(n, dtype=np.int64)
    _sort_values(packed, keys[0])
    packed &= (1 << ibits) - 1
    return packed


def sort_order(*keys: np.ndarray) -> np.ndarray:
    """Stable order by several integer keys (first key most significant).

    The keys and the row number are packed into one int64 and sorted with NumPy's plain
    sort, several times faster than a stable argsort; the row number in the low bits
    makes equal keys keep their order. Falls back to ``np.lexsort`` when they do not fit.
    """
    return _sort_order(*keys)


def group_median(groups: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """Median of ``values`` per integer group 0..n_groups-1 (NaN for an empty group)."""
    return _median(groups, values, n_groups)


def _median(groups: np.ndarray, values: np.ndarray, n_groups: int, *, grouped: bool = False
            ) -> np.ndarray:
    """``group_median``; ``grouped``: the groups come in order (timsort then only sorts
    within them). Integer values (or whole non-negative floats) are sorted packed with their
    group, as plain integers."""
    out = np.full(n_groups, np.nan)
    if len(values) == 0:
        return out
    ints: np.ndarray | None = None
    if values.dtype.kind in "iu":
        ints = values
    elif bool(np.all(values == np.floor(values))) and values.min() >= 0 and \
            np.isfinite(values.max()):
        ints = values.astype(np.int64)
    got = _pack([groups, ints], small=True) if ints is not None else None
    if got is not None:  # sorted values come straight out of the packed keys
        packed, ((_, _), (vlo, vbits)) = got
        if grouped:
            packed.sort(kind="stable")
        else:
            _sort_values(packed, groups)
        packed &= (1 << vbits) - 1
        v = packed.astype(float)
        if vlo:
            v += vlo
    else:
        v = values[np.lexsort((values, groups))]
    counts = np.bincount(groups, minlength=n_groups)
    starts = np.cumsum(counts) - counts
    has = counts > 0
    lo = starts[has] + (counts[has] - 1) // 2
    hi = starts[has] + counts[has] // 2
    out[has] = (v[lo] + v[hi]) / 2.0
    return out


#: Narrowest row of a row-wise sort (log2): NumPy sorts short rows with SIMD networks, but
#: each row costs ~20 ns whatever its width, so narrower rows would not be cheaper.
_ROW_MIN_BITS = 4


class _Runs:
    """Runs of consecutive values (``counts`` per run) laid out as the rows of padded
    matrices, one per power-of-two width, all in one buffer, to sort every run at once.

    NumPy sorts rows of up to a few hundred integers with SIMD sorting networks (~1 ns a
    value) where one sort of millions costs 30-60 ns a value on this machine (timsort over
    runs ~12). Runs shorter than ``shortest`` are left out (their values go to spare slots
    after the matrices, never read).
    """

    def __init__(self, counts: np.ndarray, shortest: int = 1) -> None:
        starts = np.cumsum(counts)
        starts -= counts
        self.runs = np.flatnonzero(counts >= max(shortest, 1))
        c = counts[self.runs]
        bits = np.frexp(c - 1)[1].astype(np.int64)  # bit length of c - 1: 2**bits >= c
        np.maximum(bits, _ROW_MIN_BITS, out=bits)
        self.first = np.empty(len(c), np.int64)  # per run: where its first value goes
        self.classes: list[tuple[int, int, int]] = []  # (offset, rows, width)
        offset = 0
        for b in np.flatnonzero(np.bincount(bits)).tolist():
            at = np.flatnonzero(bits == b)
            self.first[at] = offset + np.arange(len(at), dtype=np.int64) * (1 << b)
            self.classes.append((offset, len(at), 1 << b))
            offset += len(at) << b
        self.size = offset
        self.spare = max(shortest - 1, 0)
        # Per value, where it goes: one more than the value before it, except at the start of
        # a run, which jumps to its row (or to the spare slots): a cumulative sum of jumps.
        target = np.full(len(counts), offset, np.int64)
        target[self.runs] = self.first
        filled = np.flatnonzero(counts)
        target, c = target[filled], counts[filled]
        jump = target.copy()
        jump[1:] -= target[:-1] + c[:-1] - 1
        self.dest = np.ones(int(counts.sum()), np.int64)
        self.dest[starts[filled]] = jump
        np.cumsum(self.dest, out=self.dest)

    def sort(self, values: np.ndarray) -> np.ndarray:
        """The buffer with every run's values sorted at the start of its row (``values`` must
        stay below their dtype's maximum, the padding); ``buffer[dest]`` is ``values`` with
        each run sorted in place."""
        buf = np.full(self.size + self.spare, np.iinfo(values.dtype).max, values.dtype)
        buf[self.dest] = values
        for offset, rows, width in self.classes:
            buf[offset:offset + rows * width].reshape(rows, width).sort(axis=1)
        return buf


def _run_median(values: np.ndarray, counts: np.ndarray, runs: _Runs | None = None
                ) -> np.ndarray:
    """``group_median`` of integer ``values`` stored group after group, ``counts`` per group
    (``runs``: their layout, ``_Runs(counts, 3)``, when the caller has it): the same numbers.

    A group of one or two values needs no sort (the mean of the two is the same either way);
    larger ones are sorted as rows (``_Runs``) and only their middle values read.
    """
    out = np.full(len(counts), np.nan)
    if not len(values):
        return out
    small = np.flatnonzero((counts > 0) & (counts < 3))
    if len(small):
        starts = np.cumsum(counts)
        starts -= counts
        a = values[starts[small] + ((counts[small] - 1) >> 1)].astype(float)
        a += values[starts[small] + (counts[small] >> 1)]
        a /= 2.0
        out[small] = a
    runs = runs if runs is not None else _Runs(counts, 3)
    if not len(runs.runs):
        return out
    vlo, vhi = int(values.min()), int(values.max())
    if vlo >= -(1 << 31) and vhi < (1 << 31) - 1:
        values = values.astype(np.int32)  # half the bytes to move and sort
    elif vhi >= np.iinfo(np.int64).max:
        return _median(np.repeat(np.arange(len(counts)), counts), values, len(counts),
                       grouped=True)
    buf = runs.sort(values)
    c = counts[runs.runs]
    a = buf[runs.first + ((c - 1) >> 1)].astype(float)
    a += buf[runs.first + (c >> 1)]
    a /= 2.0
    out[runs.runs] = a
    return out


# -- the year circle -------------------------------------------------------------------------

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


def circular_distance_days(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Shortest distance in days between two angles on the year circle."""
    d = np.mod(a - b + np.pi, TWO_PI) - np.pi
    return np.abs(d) * YEAR_DAYS / TWO_PI


def days_between(later: dt.date, earlier: pd.Series) -> pd.Series:
    """Whole days from each timestamp's UTC date to ``later`` (vectorised)."""
    return (pd.Timestamp(later) - earlier.dt.tz_convert("UTC").dt.tz_localize(None).dt.floor("D")
            ).dt.days
