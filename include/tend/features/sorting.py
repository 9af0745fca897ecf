"""Sorting integer keys and reading runs of them: the primitives of the feature engine.

Everything the features sort is an integer (a customer's position, a product's, a day), so keys
are packed into one integer and sorted as plain values (``pack``, ``sort_order``), radix-sorted
(``radix_order``) or, when they come in short runs, sorted as the rows of a matrix (``Runs``);
medians and sums over runs are read straight from the sorted values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bit_width(x: int) -> int:
    return max(int(x).bit_length(), 1)


def run_sums(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """``np.add.reduceat(x, starts)`` for integers or booleans and runs that are not empty,
    as int64 differences of one cumulative sum: exact, without reduceat's cost per run."""
    total = np.cumsum(x, dtype=np.int64)
    ends = total[np.append(starts[1:], len(x)) - 1]
    return np.diff(ends, prepend=0)


def run_starts(*keys: np.ndarray) -> np.ndarray:
    """Per row of keys in sorted order: whether it starts a run of equal keys (the first row,
    and every row whose keys differ from the row before)."""
    new = np.empty(len(keys[0]), bool)
    new[:1] = True
    np.not_equal(keys[0][1:], keys[0][:-1], out=new[1:])
    for k in keys[1:]:
        new[1:] |= k[1:] != k[:-1]
    return new


def pack(keys: Sequence[np.ndarray], extra_bits: int = 0, *, small: bool = False,
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
        width = bit_width(hi - lo)
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


def mostly_sorted(lead: np.ndarray) -> bool:
    """Rows mostly in the order of their leading key (grouped by customer, say)."""
    return np.count_nonzero(lead[1:] < lead[:-1]) * 16 <= len(lead)


def radix_order(key: np.ndarray) -> np.ndarray:
    """Stable order of non-negative integer keys: 16 bits at a time from the least
    significant, each pass NumPy's radix sort (a stable argsort of 16 bits or fewer), several
    times faster than sorting keys in random order."""
    bits = bit_width(int(key.max())) if len(key) else 1
    perm: np.ndarray | None = None
    for shift in range(0, bits, 16):
        k = key if perm is None else key[perm]
        digit = (k >> shift) if shift else k
        digit = (digit & 0xFFFF).astype(np.uint16 if bits - shift > 8 else np.uint8)
        step = np.argsort(digit, kind="stable")
        perm = step if perm is None else perm[step]
    assert perm is not None
    return perm


def _sort_values(packed: np.ndarray, lead: np.ndarray | None = None) -> None:
    """Sort packed keys in place. Timsort when the leading key ``lead`` is (mostly) in order
    already, as it is when rows come grouped by customer: it then only sorts within the
    groups (several times faster than quicksort); quicksort otherwise. Either gives the same
    values in the same order."""
    n = len(packed)
    if n < 2:
        return
    in_order = lead is not None and mostly_sorted(lead)
    packed.sort(kind="stable" if in_order else "quicksort")


def sort_order(*keys: np.ndarray) -> np.ndarray:
    """Stable order by several integer keys (first key most significant).

    The keys and the row number are packed into one int64 and sorted with NumPy's plain
    sort, several times faster than a stable argsort; the row number in the low bits
    makes equal keys keep their order. Falls back to ``np.lexsort`` when they do not fit.
    """
    n = len(keys[0])
    ibits = bit_width(n - 1) if n else 1
    got = pack(keys, ibits)
    if got is None:
        return np.lexsort(tuple(reversed(keys)))
    packed = got[0]
    packed |= np.arange(n, dtype=np.int64)
    _sort_values(packed, keys[0])
    packed &= (1 << ibits) - 1
    return packed


def group_median(groups: np.ndarray, values: np.ndarray, n_groups: int, *,
                 grouped: bool = False) -> np.ndarray:
    """Median of ``values`` per integer group 0..n_groups-1 (NaN for an empty group).

    ``grouped``: the groups come in order (timsort then only sorts within them). Integer values
    (or whole non-negative floats) are sorted packed with their group, as plain integers."""
    out = np.full(n_groups, np.nan)
    if len(values) == 0:
        return out
    ints: np.ndarray | None = None
    if values.dtype.kind in "iu":
        ints = values
    elif bool(np.all(values == np.floor(values))) and values.min() >= 0 and \
            np.isfinite(values.max()):
        ints = values.astype(np.int64)
    got = pack([groups, ints], small=True) if ints is not None else None
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
#: each row has a fixed cost whatever its width, so narrower rows would not be cheaper.
_ROW_MIN_BITS = 4


class Runs:
    """Runs of consecutive values (``counts`` per run) laid out as the rows of padded
    matrices, one per power-of-two width, all in one buffer, to sort every run at once.

    NumPy sorts rows of up to a few hundred integers with SIMD sorting networks, many times
    faster a value than one sort of millions (even timsort over the runs). Runs shorter than
    ``shortest`` are left out (their values go to spare slots after the matrices, never read).
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


def run_median(values: np.ndarray, counts: np.ndarray, runs: Runs | None = None
                ) -> np.ndarray:
    """``group_median`` of integer ``values`` stored group after group, ``counts`` per group
    (``runs``: their layout, ``Runs(counts, 3)``, when the caller has it): the same numbers.

    A group of one or two values needs no sort (the mean of the two is the same either way);
    larger ones are sorted as rows (``Runs``) and only their middle values read.
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
    runs = runs if runs is not None else Runs(counts, 3)
    if not len(runs.runs):
        return out
    vlo, vhi = int(values.min()), int(values.max())
    if vlo >= -(1 << 31) and vhi < (1 << 31) - 1:
        values = values.astype(np.int32)  # half the bytes to move and sort
    elif vhi >= np.iinfo(np.int64).max:
        return group_median(np.repeat(np.arange(len(counts)), counts), values, len(counts),
                       grouped=True)
    buf = runs.sort(values)
    c = counts[runs.runs]
    a = buf[runs.first + ((c - 1) >> 1)].astype(float)
    a += buf[runs.first + (c >> 1)]
    a /= 2.0
    out[runs.runs] = a
    return out


