"""Arrow and NumPy helpers for the columns of shop rows as read: text, timestamps, numbers.

Shop rows arrive as text or as whatever type a shop's view gives them, so every reading path
turns them into the same few shapes here (Arrow text, UTC milliseconds, float64) before the
checks of ``screen`` look at them.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def _arrow_text(values: pd.Series) -> pa.Array:
    """Values as read (any Python type, None for NULL) as an Arrow string array."""
    return pa.array(pd.Series(values, dtype=object).map(
        lambda v: None if _missing(v) else str(v)).to_numpy(dtype=object), pa.string(),
        from_pandas=True)


def _missing(v: object) -> bool:
    return v is None or (not isinstance(v, str) and bool(pd.isna(v)))


#: An unparseable timestamp, in UTC milliseconds: NaT's own int64 value (no valid time has it).
_NAT = np.iinfo(np.int64).min


def _parse_ms(values: pd.Series) -> np.ndarray:
    """Timestamps in any common spelling -> UTC milliseconds as int64 (_NAT: unparseable)."""
    ts = pd.to_datetime(pd.Series(values, dtype=object), utc=True, errors="coerce",
                        format="mixed").dt.round("ms")
    return np.array(ts.dt.as_unit("ms").array.asi8, dtype=np.int64)  # NaT is _NAT


def _parse_number(values: pd.Series) -> np.ndarray:
    return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(
        dtype=float, na_value=np.nan)


def _round_ms(us: np.ndarray) -> np.ndarray:
    """Microseconds -> milliseconds, half to even (what pandas' ``round("ms")`` does)."""
    ms, rest = np.divmod(us, 1000)
    if rest.any():
        ms += (rest > 500) | ((rest == 500) & (ms % 2 == 1))
    return ms


def _ms_text(ms: int) -> str:
    return str(pd.Timestamp(int(ms), unit="ms", tz="UTC"))


def _arrow_ms(text: pa.Array, chunk: int = 65_536) -> np.ndarray:
    """Timestamps as text -> UTC milliseconds as int64 (_NAT: unparseable), exactly as
    ``_parse_ms`` parses them.

    Arrow parses naive ISO 8601 (what SQLAlchemy and most shops store) in C++, a whole part
    at once; when that fails, block by block, and a block with anything else in it (a zone
    offset, a typo) is parsed by pandas like the generic path.
    """
    try:
        ts = pc.cast(text, pa.timestamp("us"))
        us = ts.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        nat = ts.is_null().to_numpy(zero_copy_only=False) if ts.null_count else None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        us = np.empty(len(text), np.int64)
        nat = np.zeros(len(text), bool)
        for start in range(0, len(text), chunk):
            part = text.slice(start, chunk)
            try:
                ts = pc.cast(part, pa.timestamp("us"))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                ms = _parse_ms(part.to_pandas().astype(object))
                bad = ms == _NAT
                us[start : start + len(part)] = np.where(bad, 0, ms) * 1000
                nat[start : start + len(part)] = bad
                continue
            us[start : start + len(part)] = ts.cast(pa.int64()).fill_null(0).to_numpy(
                zero_copy_only=False)
            nat[start : start + len(part)] = ts.is_null().to_numpy(zero_copy_only=False)
    out = _round_ms(us)
    if nat is not None:
        out[nat] = _NAT
    return out


def _floats(col: pa.ChunkedArray, *, writable: bool = True) -> np.ndarray:
    """A numeric column as float64 with NULL as NaN (a copy only when ``writable`` needs one
    or the values are not float64 already)."""
    col = col if pa.types.is_floating(col.type) or pa.types.is_integer(col.type) \
        else pc.cast(col, pa.float64())
    out = np.asarray(col.to_numpy(), dtype=float)
    return out.copy() if writable and not out.flags.writeable else out


def _text(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column the driver typed from no rows at all (an empty table) becomes text."""
    return col if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) \
        else pc.cast(col, pa.string())


def _one(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A text column as one contiguous array (64-bit offsets if it is very large)."""
    if isinstance(col, pa.Array):
        return col if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) \
            else pc.cast(col, pa.string())
    col = _text(col)
    if sum(c.nbytes for c in col.chunks) > 1 << 30:
        col = pc.cast(col, pa.large_string())
    return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)


def _blank(a: pa.Array) -> np.ndarray:
    """NULL, empty or only whitespace: what trimming the whitespace would leave empty, found
    without building the trimmed strings."""
    empty = pc.or_(pc.equal(pc.binary_length(a), 0), pc.utf8_is_space(a))
    return empty.fill_null(True).to_numpy(zero_copy_only=False)


def _index_or_minus_one(a: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return _minus_one(a).astype(np.int64, copy=False)


def _encode(a: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Dictionary-encode: (int32 position of each value in the distinct values, -1 for NULL;
    the distinct values in order of first appearance)."""
    enc = pc.dictionary_encode(a)
    if isinstance(enc, pa.ChunkedArray):  # the chunks share one dictionary
        if enc.num_chunks == 0:
            return np.zeros(0, np.int32), pa.array([], a.type)
        indices = pa.chunked_array([c.indices for c in enc.chunks], pa.int32())
        return _minus_one(indices), enc.chunk(enc.num_chunks - 1).dictionary
    return _minus_one(enc.indices), enc.dictionary


def _copy(col: pa.ChunkedArray) -> pa.Array:
    """The column in memory of its own, as one array."""
    return pa.concat_arrays(col.chunks) if col.num_chunks else pa.array([], col.type)


def _minus_one(a: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Integer positions with NULL as -1, in their own integer type."""
    return np.asarray((a.fill_null(-1) if a.null_count else a).to_numpy(zero_copy_only=False))


def _sorted_unique(a: pa.Array, *, unique: bool = True) -> pa.Array:
    """The values (without NULL when ``unique``, and each once) in byte order. Lists usually
    arrive sorted (from an index): then one comparison pass replaces a hash and a sort."""
    if unique and a.null_count:
        a = a.drop_null()
    if len(a) < 2 or a.null_count:
        pass
    elif pc.all(pc.greater(a.slice(1), a.slice(0, len(a) - 1))).as_py():
        return a
    if unique:
        a = pc.unique(a)
    return a.take(pc.array_sort_indices(a))


def _positions(values: pa.Array, value_set: pa.Array) -> np.ndarray:
    """Position of each of ``values`` in ``value_set`` (-1: absent); both hold distinct values.
    The smaller side is hashed: a part's few thousand customers against a million known ones
    cost a million lookups, not a million-entry hash table per part."""
    if value_set.type != values.type:
        value_set = value_set.cast(values.type)
    if len(values) > len(value_set):
        return pc.index_in(values, value_set=value_set).fill_null(-1).to_numpy(
            zero_copy_only=False)
    where = pc.index_in(value_set, value_set=values).fill_null(-1).to_numpy(
        zero_copy_only=False)
    found = np.flatnonzero(where >= 0)
    out = np.full(len(values), -1, np.int64)
    out[where[found]] = found
    return out


def _strictly_increasing(a: pa.Array) -> bool:
    """True when every id is longer than, or as long as and after, the one before: then no id
    repeats (cheap: no hashing; shops that count their order ids up pass it)."""
    if len(a) < 2:
        return True
    if a.null_count:
        return False
    length = pc.binary_length(a).to_numpy(zero_copy_only=False)
    after = pc.greater(a[1:], a[:-1]).to_numpy(zero_copy_only=False)
    longer = length[1:] > length[:-1]
    return bool(np.all(longer | ((length[1:] == length[:-1]) & after)))


def _chained(arrays: Iterable[pa.Array | pa.ChunkedArray], typ: pa.DataType) -> pa.ChunkedArray:
    """Arrays and chunked arrays end to end as one chunked array of ``typ`` (no copy)."""
    chunks = [c for a in arrays for c in (a.chunks if isinstance(a, pa.ChunkedArray) else [a])]
    return pa.chunked_array([c if c.type == typ else c.cast(typ) for c in chunks], typ)
