"""The row checks of a night's read, on whole columns: which order rows and lines are usable.

Every reading path (the generic SQLAlchemy one and the SQLite fast path) hands its columns to
these checks, so both quarantine the same rows with the same reasons (the reasons and bounds
are the row rules of ``rules``). Orders are screened part by part as they are read
(``_screen_order_part``), then across parts (``_screen_orders``: customer codes, duplicated
order ids); lines are matched to the screened orders part by part (``_LineMatcher``).
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tend.shop import rules
from tend.shop.columns import (
    _NAT,
    _blank,
    _chained,
    _encode,
    _index_or_minus_one,
    _missing,
    _ms_text,
    _positions,
    _sorted_unique,
    _strictly_increasing,
)


@dataclass(frozen=True)
class Quarantined:
    source: str
    record_key: str | None
    reason: str
    payload: dict[str, object]


@dataclass
class History:
    """Clean orders and lines of one night, and every row that was set aside."""

    #: customer_id (categorical over the sorted ids), order_id, ordered_at (UTC), total
    orders: pd.DataFrame
    #: order (row number in ``orders``), sku (categorical over the sorted catalogue), quantity
    lines: pd.DataFrame
    quarantined: list[Quarantined] = field(default_factory=list)
    rows_read: int = 0  # order rows read, good and bad

    @classmethod
    def empty(cls) -> History:
        """No orders and no lines: a night in which no customer changed."""
        return cls(_empty_orders(), _empty_lines())


def end_of_day(as_of: dt.date) -> dt.datetime:
    """The exclusive upper bound of night ``as_of``: orders before it exist for the night."""
    return dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def future_cutoff(now: dt.datetime | None = None) -> pd.Timestamp:
    """Orders at or after this instant are in the future for the run happening ``now``.

    The run's own date (wall clock, UTC) is the reference, not ``as_of``: replaying an old night
    must not call last week's orders "future", they simply do not exist yet for that night.
    """
    now = now or dt.datetime.now(dt.UTC)
    return pd.Timestamp(end_of_day(now.astimezone(dt.UTC).date()))


def quarantine_records(source: str, raw: pd.DataFrame, bad: np.ndarray, reasons: pd.Series,
                       *key_cols: str) -> list[Quarantined]:
    """One record per bad row, with the row as it was read (text) as its payload."""
    rows = raw.loc[bad]
    out = []
    for rec, reason in zip(rows.to_dict("records"), reasons.loc[bad], strict=True):
        parts = [rec.get(k) for k in key_cols]
        key = None if all(_missing(p) for p in parts) else ":".join(
            "" if _missing(p) else str(p) for p in parts)
        out.append(Quarantined(  # as text any store holds (no NUL byte: PostgreSQL)
            source=source,
            record_key=None if key is None else rules.printable(key, rules.RECORD_TEXT_MAX),
            reason=rules.printable(str(reason)),
            payload={k: (None if _missing(v) else rules.printable(str(v), rules.RECORD_TEXT_MAX))
                     for k, v in rec.items()}))
    return out


def _empty_orders() -> pd.DataFrame:
    return pd.DataFrame({"customer_id": pd.Series([], dtype=str),
                         "order_id": pd.Series([], dtype=str),
                         "ordered_at": pd.Series([], dtype="datetime64[us, UTC]"),
                         "total": pd.Series([], dtype=float)})


def _empty_lines() -> pd.DataFrame:
    return pd.DataFrame({"order": np.zeros(0, np.int32), "sku": pd.Series([], dtype=str),
                         "quantity": np.zeros(0, np.int32)})


_ORDER_COLS = ["order_id", "customer_id", "ordered_at", "total"]
#: The reasons an order row is set aside, by code (0: usable); "{future}" is the night's own.
_ORDER_REASONS = (
    "", rules.ORDER_WITHOUT_ID, rules.ORDER_WITHOUT_CUSTOMER, rules.ORDER_UNKNOWN_CUSTOMER,
    rules.ORDERED_AT.unparseable, rules.TOTAL.not_a_number, rules.TOTAL.negative,
    rules.TOTAL.too_large, "{future}", rules.ORDER_DUPLICATE,
    rules.NUL_BYTE.format(column="order_id"),
    rules.TOO_LONG.format(column="order_id", limit=rules.LENGTHS["orders"]["order_id"]),
    rules.ORDERED_AT.too_early, rules.ORDERED_AT.too_late,
)
_EARLIEST_MS = int(rules.EARLIEST.timestamp()) * 1000
_LATEST_MS = int(rules.LATEST.timestamp()) * 1000
_TOTAL_MAX = float(rules.TOTAL.maximum or np.inf)
#: The reasons an order line is set aside, by code (0: usable).
_LINE_REASONS = ("", rules.LINE_UNKNOWN_ORDER, rules.LINE_UNKNOWN_SKU, rules.LINE_BAD_QUANTITY,
                 rules.LINE_ABSURD_QUANTITY)


def _text_codes(a: pa.Array, table: str, column: str, nul: int, long: int) -> np.ndarray:
    """Per value: ``nul`` for a NUL byte, ``long`` for a value longer than its column, else 0
    (``rules.text_problem`` on whole columns)."""
    limit = rules.LENGTHS[table][column]
    out = np.zeros(len(a), np.int8)
    if not len(a):
        return out
    # Usually nothing to find: no value has more bytes than the limit has characters and the
    # text holds no zero byte (a scan of the bytes, no per-value work).
    if (pc.max(pc.binary_length(a)).as_py() or 0) > limit:
        out[pc.greater(pc.utf8_length(a), limit).fill_null(False).to_numpy(
            zero_copy_only=False)] = long
    if isinstance(a, pa.ChunkedArray):
        a = a.combine_chunks()
    _, offsets_buf, data = a.buffers()
    offsets = np.frombuffer(offsets_buf, np.int64 if pa.types.is_large_string(a.type)
                            else np.int32)[a.offset : a.offset + len(a) + 1]
    text = np.frombuffer(data, np.uint8)[offsets[0]:offsets[-1]] if data is not None \
        else np.ones(0, np.uint8)
    if not text.all():
        out[pc.match_substring(a, "\x00").fill_null(False).to_numpy(
            zero_copy_only=False)] = nul
    return out


def usable_ids(a: pa.Array, table: str, column: str) -> pa.Array:
    """The ids a row may be referenced by: one that cannot be stored (a NUL byte, too long)
    names a row the CSV import would have quarantined, so a reference to it is unknown."""
    if a.null_count:
        a = a.drop_null()
    bad = _text_codes(a, table, column, 1, 1)
    return a.filter(pa.array(bad == 0)) if bad.any() else a


@dataclass(frozen=True)
class _Checks:
    """What the order checks need besides the rows: the same for every part of a read."""

    known: pa.Array  # the known customers' ids: sorted, distinct, no NULL
    future_ms: int  # an order at or after this instant (UTC ms) is in the future: quarantined
    end_ms: int  # an order at or after this instant does not exist yet for the night
    future_reason: str

    @classmethod
    def of(cls, known: pa.Array, as_of: dt.date, now: dt.datetime | None) -> _Checks:
        future = future_cutoff(now)
        known = usable_ids(known, "customers", "customer_id")
        return cls(_sorted_unique(known), future.value // 1_000_000,
                   pd.Timestamp(end_of_day(as_of)).value // 1_000_000,
                   rules.ORDER_IN_FUTURE.format(date=(future - pd.Timedelta(days=1)).date()))


@dataclass
class _OrderPart:
    """A part of the order rows as read, with every check that needs no other row done."""

    order_id: pa.Array  # every row as read
    cust: np.ndarray  # int32: each row's customer as a position in cust_dict (-1: NULL)
    cust_dict: pa.Array  # the part's distinct customer ids
    cust_known: np.ndarray  # each of cust_dict as a position in the known customers, or -1
    ms: np.ndarray  # int64 UTC milliseconds (_NAT: unparseable)
    total: np.ndarray  # float64 (NaN: not a number)
    reason: np.ndarray  # int8 index into _ORDER_REASONS, 0 = usable (duplicates come later)
    keep: np.ndarray  # usable and before the end of the night
    kept_ids: pa.Array  # order_id of the rows kept
    increasing: bool  # _strictly_increasing(order_id)
    ts_text: dict[int, str | None]  # ordered_at as read where it did not parse (fast path)
    total_text: dict[int, str | None]  # total as read where SQLite did not type it (fast path)

    def release(self) -> None:
        """Let go of the per-row arrays once the clean orders hold what they need of them."""
        self.cust = self.ms = self.total = self.reason = self.keep = np.zeros(0, np.int8)
        self.kept_ids = self.order_id.slice(0, 0)


def _screen_order_part(oid: pa.Array, cid: pa.Array, ms: np.ndarray, total: np.ndarray,
                       checks: _Checks, ts_text: dict[int, str | None] | None = None,
                       total_text: dict[int, str | None] | None = None) -> _OrderPart:
    """The order checks that look at one row at a time (every reading path shares them): a
    reason per row, the first that applies, and which rows exist for the night.

    Customer ids are classified once per distinct id (blank, unknown), not once per row.
    """
    cust, cust_dict = _encode(cid)
    cust_known = _positions(cust_dict, checks.known)
    # per distinct customer id: 2 blank, 3 unknown; the extra last slot is NULL (cust -1)
    per_id = np.where(_blank(cust_dict), 2, np.where(cust_known < 0, 3, 0))
    reason = np.append(per_id, 2).astype(np.int8)[cust]
    oid_text = _text_codes(oid, "orders", "order_id", 10, 11)
    np.copyto(reason, oid_text, where=oid_text > 0)
    reason[_blank(oid)] = 1
    # the checks of the values, the last first so that the first that applies stays
    values = np.zeros(len(ms), np.int8)
    values[ms >= checks.future_ms] = 8  # never _NAT, the smallest int64
    with np.errstate(invalid="ignore"):
        values[total > _TOTAL_MAX] = 7
        values[total < 0] = 6  # rules.TOTAL.negative
    values[np.isnan(total)] = 5
    values[ms >= _LATEST_MS] = 13
    values[(ms < _EARLIEST_MS) & (ms != _NAT)] = 12
    nat = np.flatnonzero(ms == _NAT)
    values[nat] = 4
    for r in nat.tolist():  # beyond pandas' calendar: the rules tell which side
        text = (ts_text or {}).get(r)
        if isinstance(text, str):
            _, problem, _ = rules.ORDERED_AT.parse(text.strip())
            if problem and problem.startswith(rules.ORDERED_AT.too_early):
                values[r] = 12
            elif problem and problem.startswith(rules.ORDERED_AT.too_late):
                values[r] = 13
    np.copyto(reason, values, where=reason == 0)
    keep = (reason == 0) & (ms < checks.end_ms)
    return _OrderPart(oid, cust, cust_dict, cust_known, ms, total, reason, keep,
                      oid if keep.all() else oid.filter(pa.array(keep)),
                      _strictly_increasing(oid), ts_text or {}, total_text or {})


@dataclass
class _Screened:
    """Order rows as read, screened: the clean orders, and what ``_LineMatcher`` needs."""

    #: customer_id (categorical over the sorted ids of every row read), order_id, ordered_at
    #: (UTC), total
    orders: pd.DataFrame
    quarantined: list[Quarantined]
    rows: int  # order rows read
    order_id: pa.ChunkedArray  # every row as read
    to_clean: np.ndarray  # row as read -> row of the clean orders whose lines it holds, or -1


def _screen_orders(parts: list[_OrderPart], checks: _Checks,
                   ordered_at: pd.Series | None = None, total: pd.Series | None = None
                   ) -> _Screened:
    """The order checks across rows, on parts screened by ``_screen_order_part``: customers
    as integer codes over the sorted ids of every row read, duplicated order ids, and which
    clean row holds each row's lines. Quarantine records show ``ordered_at`` and ``total`` as
    read when given (the generic path), else as typed (the text as read where it did not type).

    A duplicated order_id keeps its earliest row (then the smallest customer_id, then the first
    read), so the choice does not depend on the order rows come back in.
    """
    sizes = [len(p.order_id) for p in parts]
    offsets = np.cumsum([0, *sizes])
    n = int(offsets[-1])
    typ = pa.large_string() if any(pa.types.is_large_string(p.order_id.type) for p in parts) \
        else pa.string()
    order_id = _chained([p.order_id for p in parts], typ)

    # Customers: the categories are the distinct ids of every row read, sorted. Usually all
    # are known: then they are the known ids (sorted already) that appear.
    known = checks.known
    seen = np.zeros(len(known), bool)
    unknown = []
    for p in parts:
        seen[p.cust_known[p.cust_known >= 0]] = True
        if (p.cust_known < 0).any():
            unknown.append(p.cust_dict.filter(pa.array(p.cust_known < 0)).cast(known.type))
    if unknown:
        cust_ids = _sorted_unique(pa.concat_arrays([known.filter(pa.array(seen)), *unknown]))
        codes = [_positions(p.cust_dict, cust_ids) for p in parts]
    else:
        cust_ids = known if seen.all() else known.filter(pa.array(seen))
        rank = np.cumsum(seen) - 1
        codes = [np.where(p.cust_known >= 0, rank[p.cust_known], -1) for p in parts]
    # each part's customer positions -> codes, with an extra last slot for NULL
    codes = [np.append(c, -1).astype(np.int32) for c in codes]

    # Duplicated order ids (skipped when the ids count up, checked part by part).
    ocode: np.ndarray | None = None
    increasing = all(p.increasing for p in parts) and _strictly_increasing_across(parts, typ)
    if not increasing and any((p.reason == 0).any() for p in parts):
        ocode, odict = _encode(order_id)
        ok = np.concatenate([p.reason == 0 for p in parts])
        counts = np.bincount(ocode[ocode >= 0], minlength=len(odict))
        twins = np.flatnonzero(ok & (ocode >= 0) & (counts[np.maximum(ocode, 0)] > 1))
        if len(twins):
            ms = np.concatenate([p.ms for p in parts])
            cid = np.concatenate([c[p.cust] for c, p in zip(codes, parts, strict=True)])
            # customer codes sort as the ids do
            cand = pd.DataFrame({"oid": ocode[twins], "ms": ms[twins], "cid": cid[twins],
                                 "pos": twins}).sort_values(["ms", "cid", "pos"], kind="stable")
            dup = cand["pos"].to_numpy()[cand["oid"].duplicated(keep="first").to_numpy()]
            for k, p in enumerate(parts):
                mine = dup[(dup >= offsets[k]) & (dup < offsets[k + 1])] - offsets[k]
                if len(mine):
                    p.reason[mine] = 9
                    p.keep[mine] = False
                    p.kept_ids = p.order_id.filter(pa.array(p.keep))
        else:
            ocode = None

    records = _order_records(parts, checks, ordered_at, total)
    keep = np.concatenate([p.keep for p in parts]) if ocode is not None else None
    kept_ids = _chained([p.kept_ids for p in parts], typ)
    kept = [int(np.count_nonzero(p.keep)) for p in parts]
    n_kept = sum(kept)
    itype = np.int32 if n < 2**31 else np.int64
    to_clean = np.empty(n, itype)
    cust_code = np.empty(n_kept, np.int32)
    ms = np.empty(n_kept, np.int64)
    amount = np.empty(n_kept)
    at = 0
    for k, p in enumerate(parts):
        seg = to_clean[offsets[k] : offsets[k + 1]]
        np.cumsum(p.keep, dtype=itype, out=seg)
        seg += at - 1
        seg[~p.keep] = -1
        every = kept[k] == len(p.keep)  # (np.compress with out= is slower)
        cust_code[at : at + kept[k]] = codes[k][p.cust if every else p.cust[p.keep]]
        ms[at : at + kept[k]] = p.ms if every else p.ms[p.keep]
        amount[at : at + kept[k]] = p.total if every else p.total[p.keep]
        at += kept[k]
        p.release()  # what is left of the part is its ids, held by the caller's order_id
    if ocode is not None and keep is not None:  # a duplicated id's lines go to the kept copy
        by_id = np.full(int(ocode.max()) + 2, -1, itype)
        by_id[ocode[keep]] = to_clean[keep]
        to_clean = by_id[ocode]  # -1 (no id) indexes the extra slot
    orders = pd.DataFrame({
        "customer_id": pd.Categorical.from_codes(
            cust_code, categories=pd.Index(cust_ids.to_pandas(), dtype=str)),
        "order_id": pd.Series(kept_ids.to_pandas(), dtype=str),
        "ordered_at": pa.array(ms, pa.timestamp("ms", tz="UTC")).to_pandas(),
        "total": amount,
    }, copy=False)
    return _Screened(orders, records, n, order_id, to_clean)


def _strictly_increasing_across(parts: list[_OrderPart], typ: pa.DataType) -> bool:
    """``_strictly_increasing`` across the boundaries between parts (each part checked)."""
    ends = [p.order_id for p in parts if len(p.order_id)]
    return all(_strictly_increasing(_chained([a.slice(len(a) - 1), b.slice(0, 1)], typ))
               for a, b in itertools.pairwise(ends))


def _order_records(parts: list[_OrderPart], checks: _Checks, ordered_at: pd.Series | None,
                   total: pd.Series | None) -> list[Quarantined]:
    """One record per order row set aside, in the order read (see ``_screen_orders``)."""
    cols: dict[str, list[object]] = {c: [] for c in _ORDER_COLS}
    reasons: list[int] = []
    start = 0
    for p in parts:
        bad = np.flatnonzero(p.reason > 0)
        if len(bad):
            take = pa.array(bad)
            cols["order_id"] += p.order_id.take(take).to_pylist()
            cust = p.cust[bad]
            cols["customer_id"] += p.cust_dict.take(pa.array(cust, mask=cust < 0)).to_pylist()
            cols["ordered_at"] += pd.Series(ordered_at, dtype=object).iloc[
                start + bad].tolist() if ordered_at is not None else [
                p.ts_text[r] if r in p.ts_text else (
                    None if p.ms[r] == _NAT else _ms_text(p.ms[r])) for r in bad.tolist()]
            cols["total"] += pd.Series(total, dtype=object).iloc[
                start + bad].tolist() if total is not None else [
                p.total_text[r] if r in p.total_text else (
                    None if np.isnan(p.total[r]) else str(p.total[r])) for r in bad.tolist()]
            reasons += p.reason[bad].tolist()
        start += len(p.order_id)
    if not reasons:
        return []
    names = [r.replace("{future}", checks.future_reason) for r in _ORDER_REASONS]
    return quarantine_records("orders", pd.DataFrame(cols, dtype=object),
                              np.ones(len(reasons), bool),
                              pd.Series([names[k] for k in reasons]), "order_id")


@dataclass
class _LinePart:
    """A part of the order lines as read, boiled down to what matching them to orders needs."""

    change: np.ndarray  # bool: a run of one order's consecutive lines starts here
    heads: pa.Array  # the order id of each run
    sku: np.ndarray  # int32 position in the sorted catalogue (-1: unknown)
    sku_text: dict[int, str | None]  # the sku as read where it is unknown
    qty: np.ndarray  # whole numbers as typed, or float64 (NaN: not a number)
    reason: np.ndarray  # int8: 2 unknown sku, 3 quantity not a positive whole number, else 0


def _line_part(oid: pa.Array, sku: pa.Array, qty: np.ndarray, skus: pa.Array) -> _LinePart:
    """Order lines as read, boiled down: where a new run of one order's lines starts, the
    order id of each run, the sku as a position in the sorted catalogue (-1: unknown, its text
    kept), the quantity and the checks of the line's own values."""
    n = len(oid)
    change = np.ones(n, bool)
    if n > 1:
        change[1:] = pc.not_equal(oid.slice(1), oid.slice(0, n - 1)).fill_null(True).to_numpy(
            zero_copy_only=False)
    heads = oid.filter(pa.array(change))
    sku_idx = pc.index_in(sku, value_set=skus.cast(sku.type), skip_nulls=True).fill_null(
        -1).to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    unknown = np.flatnonzero(sku_idx < 0)
    with np.errstate(invalid="ignore"):
        least = qty >= rules.QUANTITY.minimum
        whole = least & (qty == np.floor(qty)) if qty.dtype.kind == "f" else least
        absurd = qty > rules.QUANTITY.maximum
    if qty.dtype.kind == "i":  # in 32 bits when they fit: a night holds every line at once
        qty = qty.astype(np.int32 if not len(qty) or (
            qty.min() >= -(2**31) and qty.max() < 2**31) else np.int64)  # (a copy: see _copy)
    return _LinePart(change, heads, sku_idx,
                     dict(zip(unknown.tolist(), sku.take(pa.array(unknown)).to_pylist(),
                              strict=True)),
                     qty, np.where(sku_idx < 0, 2, np.where(whole, np.where(absurd, 4, 0), 3)
                                   ).astype(np.int8))


@dataclass
class _Lines:
    """A part of the lines matched to the orders: its clean lines and its bad ones."""

    order: np.ndarray  # row of the clean orders
    sku: np.ndarray
    qty: np.ndarray  # int32, or int64 when ``big``
    big: bool  # a quantity of 2**31 or more
    bad_order_id: list[str | None]
    bad_sku: list[str | None]
    bad_qty: np.ndarray
    bad_reason: np.ndarray


@dataclass
class _Pending:
    """A part of the lines not matched yet, with where it sits among the runs of the read."""

    part: _LinePart
    heads: pa.Array  # its runs' order ids, without a run the previous part started
    first_run: int  # number of runs before it
    merged: bool  # its first lines continue the previous part's last run


class _LineMatcher:
    """Order lines, part by part in the order read, matched to the screened orders.

    Lines are matched to orders run by run (consecutive lines of one order). When the runs
    follow the orders as read — a shop that writes an order's lines after it — run k is order
    row k: each part is compared with its slice of the order ids (one string comparison per
    run) and finished as it arrives, so the parts are not held. A part that does not line up
    is kept and matched at the end, all such parts with one hash lookup per run: what matching
    every run by hash gives, since rows with one id all lead to one clean row. The rule for
    the whole read is that the runs line up only if there are as many runs as order rows and
    none differs, so rows a comparison cannot decide (NULL ids) are
    matched at the end by that rule.
    """

    def __init__(self, orders: _Screened, skus: pa.Array) -> None:
        self.ids = orders.order_id
        self.to_clean = orders.to_clean
        self.order_type = np.int32 if len(orders.to_clean) < 2**31 else np.int64
        self.skus = skus
        self.sku_names: list[str] | None = None
        self.done: list[_Lines | _Pending] = []
        self.last_pos: list[int | None] = []  # position of each part's last run, once known
        self.runs = 0
        self.lines = 0
        self.differs = False  # a run differs from its order row, or there are more runs
        self.compared = 0  # runs whose comparison with their order row was not NULL
        self.prev_heads: pa.Array | None = None

    def add(self, p: _LinePart) -> None:
        n, heads = len(p.change), p.heads
        # a run cut by the boundary between two parts is one run
        merged = bool(self.done and n and self.lines and len(heads)
                      and self.prev_heads is not None and len(self.prev_heads)
                      and heads[0] == self.prev_heads[len(self.prev_heads) - 1])
        if merged:
            p.change[0] = False
            heads = heads.slice(1)
        self.prev_heads = heads
        m, lo = len(heads), self.runs
        aligned = True
        if lo + m > len(self.ids):
            self.differs, aligned = True, False
        elif m:
            eq = pc.equal(heads, self.ids.slice(lo, m))
            valid = m - eq.null_count
            same = pc.sum(eq).as_py() or 0
            self.compared += valid
            self.differs |= same < valid
            aligned = same == m
        entry = _Pending(p, heads, lo, merged)
        self.runs += m
        self.lines += n
        prev = self.last_pos[-1] if merged else None
        if aligned and (not merged or prev is not None):
            self.done.append(self._match(entry, np.arange(lo, lo + m), prev))
            self.last_pos.append(lo + m - 1 if m else prev)
        else:
            self.done.append(entry)
            self.last_pos.append(None)

    def _match(self, e: _Pending, run_pos: np.ndarray, prev: int | None) -> _Lines:
        """A part's lines given the order row of each of its runs (and of the previous part's
        last run, which its first lines continue when ``e.merged``)."""
        p = e.part
        run = np.cumsum(p.change, dtype=np.int64)  # position in [previous run] + its runs
        if e.merged:
            run_pos = np.concatenate([[prev], run_pos]).astype(np.int64)
        else:
            run -= 1
        raw_pos = run_pos[run]
        pos = self.to_clean[np.maximum(raw_pos, 0)]
        pos[raw_pos < 0] = -1
        reason = np.where(raw_pos < 0, 1, p.reason).astype(np.int8)
        ok = (reason == 0) & (pos >= 0)
        qty = p.qty[ok]
        big = bool(len(qty)) and bool(qty.max() >= 2**31)
        if qty.dtype.kind == "f":
            qty = qty.astype(np.int64 if big else np.int32)
        elif big and qty.max() >= 2**53:  # the generic path's float round trip, exactly
            qty = qty.astype(float).astype(np.int64)
        else:
            qty = qty.astype(np.int64 if big else np.int32, copy=False)
        bad = np.flatnonzero(reason > 0)
        if len(bad) and self.sku_names is None:
            self.sku_names = self.skus.to_pylist()
        return _Lines(
            pos[ok].astype(self.order_type), p.sku[ok], qty, big,
            p.heads.take(pa.array(run[bad])).to_pylist(),  # a merged run's head is the first
            [p.sku_text[i] if i in p.sku_text else self.sku_names[p.sku[i]]  # type: ignore[index]
             for i in bad.tolist()],
            p.qty[bad].astype(float), reason[bad])

    def finish(self) -> tuple[pd.DataFrame, list[Quarantined]]:
        """(clean lines, quarantined lines) of every part added."""
        pending = [e for e in self.done if isinstance(e, _Pending)]
        if pending:
            if not self.differs and self.compared and self.runs == len(self.ids):
                found = [np.arange(e.first_run, e.first_run + len(e.heads)) for e in pending]
            else:
                heads = [e.heads for e in pending]
                pos = _index_or_minus_one(pc.index_in(
                    _chained(heads, self.ids.type), value_set=self.ids.combine_chunks()))
                found = np.split(pos, np.cumsum([len(h) for h in heads])[:-1])
            by_part = dict(zip(map(id, pending), found, strict=True))
            for k, e in enumerate(self.done):
                if isinstance(e, _Pending):
                    run_pos = by_part[id(e)]
                    prev = self.last_pos[k - 1] if e.merged else None
                    self.done[k] = self._match(e, run_pos, prev)
                    self.last_pos[k] = int(run_pos[-1]) if len(run_pos) else prev
        done = [e for e in self.done if isinstance(e, _Lines)]
        big = any(d.big for d in done)
        qty = [d.qty.astype(np.int64) if big else d.qty for d in done]
        clean = pd.DataFrame({
            "order": np.concatenate([d.order for d in done]) if done else np.zeros(
                0, self.order_type),
            "sku": pd.Categorical.from_codes(
                np.concatenate([d.sku for d in done]) if done else np.zeros(0, np.int32),
                categories=pd.Index(self.skus.to_pandas(), dtype=str)),
            "quantity": np.concatenate(qty) if done else np.zeros(0, np.int32)}, copy=False)
        reasons = [k for d in done for k in d.bad_reason.tolist()]
        if not reasons:
            return clean, []
        raw = pd.DataFrame({"order_id": [v for d in done for v in d.bad_order_id],
                            "sku": [v for d in done for v in d.bad_sku],
                            "quantity": np.concatenate([d.bad_qty for d in done])})
        return clean, quarantine_records("order_lines", raw, np.ones(len(reasons), bool),
                                         pd.Series([_LINE_REASONS[k] for k in reasons]),
                                         "order_id", "sku")
