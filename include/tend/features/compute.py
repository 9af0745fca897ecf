"""The feature engine: per-customer features from order history, as columns.

Everything here is vectorised over integer-coded customers: rows are sorted by (customer,
time) and every aggregate is a ``bincount``/``reduceat``/sorted-position pick — no
per-customer Python loop, no ``groupby().apply``. What comes out is described in
``tend.features.columns``; a range of customers is computed by
``tend.features.customer_range``.

A full rebuild (a million customers, twenty million order lines) is computed in ranges of
customers (``feature_parts``): the rows are dealt out to the ranges once, then each range is
computed on its own, so every temporary is the size of a range (glibc reuses the memory from
one range to the next instead of the kernel faulting fresh pages for every 20M-element array),
and the caller can write one range while the next is computed. Put together the ranges are
bit for bit the whole computation: every floating-point sum adds the same numbers in the same
order (tested against a plain one-pass reference computation).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tend.features.columns import FeatureColumns, FeatureSet, empty_columns, to_frames
from tend.features.customer_range import customer_columns, season_sku, sku_columns
from tend.features.sorting import mostly_sorted, radix_order, sort_order
from tend.features.year import Days

_US_PER_DAY = 86_400_000_000


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
#: more of each range's arrays in the CPU caches; a caller that writes ranges wants fewer,
#: larger ones.
_CONSUME_PART_LINES = 500_000


def concat_parts(parts: Iterable[FeatureColumns]) -> FeatureColumns:
    """The parts of ``feature_parts`` as one ``FeatureColumns``: the whole computation's.

    Each column is put together and then dropped from the parts before the next one, so the
    result and its parts are not all held twice at once."""
    parts = list(parts)
    if len(parts) <= 1:
        return parts[0] if parts else empty_columns()
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
        return iter([empty_columns()])
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
    checked and converted in Arrow: a million ids as Python strings are slow to make."""
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
    days = Days.span(int(ts.min()) // unit_day, int(ts.max()) // unit_day)
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
        customers, visits = customer_columns(cust, t, src.total[srows], off, c1 - c0,
                                              src.to_us, days)
        del cust, t, off
        skus: dict[str, np.ndarray] = {"days": np.zeros(0, np.int64)}
        if visit is not None and line_rows is not None:
            assert lo is not None and src.sku is not None and src.qty is not None
            visit[srows] = visits.of_order
            lrows = line_rows(p)
            skus = sku_columns(visit[lo[lrows]].astype(np.intp), src.sku[lrows],
                                src.qty[lrows], visits, days)
            if len(skus["days"]):
                customers["season_sku"] = season_sku(skus, c1 - c0)
        del srows, visits
        yield FeatureColumns(src.ids.slice(c0, c1 - c0), customers, src.sku_ids, skus,
                             daily if p == 0 else {})


def _order_by_customer_day(cust: np.ndarray, off: np.ndarray) -> np.ndarray:
    """``sort_order(cust, off)``: rows by (customer, day, row). Rows in time order (a shop
    that writes its orders as they come) need only a stable order by customer, a radix sort."""
    if len(cust) > 1 and not mostly_sorted(cust) and not np.any(off[1:] < off[:-1]):
        lo = int(cust.min())
        return radix_order(cust - lo if lo else cust)
    return sort_order(cust, off)
