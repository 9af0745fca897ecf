"""Bulk I/O for the contact store: many rows in or out in a few statements, on both backends.

Rows go in as columns, with no SQLAlchemy processing per value: PostgreSQL through one COPY of
Arrow-written CSV (``copy_arrow``), SQLite through the driver's executemany over tuples
(``bulk_rows``). ``staged`` holds rows in a scratch table for set-based statements,
``insert_ignore`` makes reruns no-ops, and ``stored_time`` and ``binary_parts`` are the
storage forms the bulk paths write and read without SQLAlchemy's types.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite

from tend.errors import LedgerError


def insert_ignore(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING on both backends (reruns must be no-ops)."""
    if not rows:
        return
    dialect = conn.dialect.name
    if dialect == "postgresql":
        stmt = postgresql.insert(table).on_conflict_do_nothing()
    elif dialect == "sqlite":
        stmt = sqlite.insert(table).on_conflict_do_nothing()
    else:  # pragma: no cover - other backends are not supported for the store yet
        raise LedgerError(f"the contact store does not support {dialect}; use PostgreSQL or SQLite")
    for i in range(0, len(rows), 5000):
        conn.execute(stmt, list(rows[i : i + 5000]))


def insert_new(conn: Connection, table: Table, row: Mapping[str, Any]) -> bool:
    """Insert ``row`` unless its key exists (on PostgreSQL, after waiting for a concurrent
    writer of the same key); whether it was inserted. RETURNING says so: psycopg's row count
    for ON CONFLICT DO NOTHING does not."""
    ins = (postgresql.insert(table) if conn.dialect.name == "postgresql"
           else sqlite.insert(table)).values(**row)
    key = next(iter(table.primary_key.columns))
    return conn.execute(ins.on_conflict_do_nothing().returning(key)).first() is not None


def upsert(conn: Connection, table: Table, row: Mapping[str, Any], *, key: Sequence[str]) -> None:
    """Insert ``row``, or update the row with the same ``key`` columns to its other values."""
    ins = (postgresql.insert(table) if conn.dialect.name == "postgresql"
           else sqlite.insert(table)).values(**row)
    updates = {c: ins.excluded[c] for c in row if c not in key}
    conn.execute(ins.on_conflict_do_update(index_elements=list(key), set_=updates))


@contextmanager
def staged(conn: Connection, name: str, columns: str, rows: Mapping[str, Any], *,
           unlogged: bool = False, analyze: bool = True) -> Iterator[str]:
    """A scratch table holding ``rows`` (one bulk load) for set-based statements; dropped after.

    No keys or indexes: it is scanned whole, as one side of a join. TEMPORARY by default;
    ``unlogged`` makes it an UNLOGGED table on PostgreSQL, which parallel workers may scan (only
    inside a transaction that keeps other writers out, like a claim holding the ledger lock).
    A fresh table has no statistics, and without them the planner guesses badly: ``analyze``.
    """
    pg = conn.dialect.name == "postgresql"
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
    conn.exec_driver_sql(
        f"CREATE {'UNLOGGED' if unlogged and pg else 'TEMPORARY'} TABLE {name} ({columns})")
    try:
        bulk_rows(conn, name, rows)
        if pg and analyze:
            conn.exec_driver_sql(f"ANALYZE {name}")
        yield name
    finally:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")


def stored_time(conn: Connection, stamp: dt.datetime) -> str:
    """An aware time as text in the form its store keeps (bulk loads bypass SQLAlchemy's types):
    ISO with offset for PostgreSQL, SQLAlchemy's SQLite DateTime format (UTC fields) for SQLite."""
    if conn.dialect.name == "postgresql":
        return stamp.isoformat()
    return stamp.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def copy_arrow(conn: Connection, table: str, data: Any) -> None:
    """PostgreSQL: one COPY of an Arrow table's rows, as CSV written by Arrow (no Python object
    per value on the way out). Arrow quotes every string and leaves nulls empty and unquoted:
    exactly what PostgreSQL's CSV format reads as '' and NULL."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    binary = [i for i, f in enumerate(data.schema)
              if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    for i in binary:  # bytea's text form in a CSV
        data = data.set_column(i, data.schema.field(i).name, _bytea_text(data.column(i)))
    buf = io.BytesIO()
    pacsv.write_csv(data, buf, write_options=pacsv.WriteOptions(include_header=False))
    names = ", ".join(f'"{col}"' for col in data.column_names)
    raw = conn.connection.driver_connection
    with raw.cursor() as cur, cur.copy(
            f'COPY "{table}" ({names}) FROM STDIN WITH (FORMAT csv)') as copy:
        view = buf.getbuffer()
        for i in range(0, len(view), 1 << 20):
            copy.write(view[i : i + (1 << 20)])


def binary_parts(arr: Any) -> tuple[np.ndarray, np.ndarray]:
    """A binary Arrow array (one chunk, any offset, 32- or 64-bit offsets) as NumPy without a
    copy of its bytes: the ``len(arr) + 1`` offsets of its values (int64) and the byte buffer
    they point into (empty when every value is empty)."""
    import pyarrow as pa

    otype = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
    offsets = np.frombuffer(arr.buffers()[1], otype)[arr.offset : arr.offset + len(arr) + 1]
    data = arr.buffers()[2]
    raw = np.frombuffer(data, np.uint8) if data is not None and len(arr) and \
        offsets[-1] > offsets[0] else np.zeros(0, np.uint8)
    return offsets.astype(np.int64), raw


def _bytea_text(col: Any) -> Any:
    """Binary values -> PostgreSQL's hex text for bytea (``\\x0a1b...``), vectorised: each byte
    becomes two hex digits through a lookup table, behind a two-byte prefix per value."""
    import pyarrow as pa

    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if arr.null_count:
        raise ValueError("NULL in a binary column written by COPY")
    offsets, data = binary_parts(arr)
    raw = data[offsets[0] : offsets[-1]]
    lengths = np.diff(offsets)
    n = len(arr)
    new_offsets = 2 * (offsets - offsets[0]) + 2 * np.arange(n + 1, dtype=np.int64)
    out = np.empty(int(new_offsets[-1]), np.uint8)
    out[new_offsets[:-1]] = ord("\\")
    out[new_offsets[:-1] + 1] = ord("x")
    owner = np.repeat(np.arange(n, dtype=np.int64), lengths)
    where = 2 * np.arange(len(raw), dtype=np.int64) + 2 * (owner + 1)
    digits = np.frombuffer(b"0123456789abcdef", np.uint8)
    out[where] = digits[raw >> 4]
    out[where + 1] = digits[raw & 15]
    return pa.Array.from_buffers(pa.large_string(), n,
                                 [None, pa.py_buffer(new_offsets), pa.py_buffer(out)])


def bulk_rows(conn: Connection, table: str, frame: Mapping[str, Any]) -> None:
    """Insert columns of plain values (str, int, float, None; dates and times already text).

    PostgreSQL: ``copy_arrow`` (no Python object per value on the way out).
    Elsewhere: the driver's executemany over tuples.
    """
    cols = list(frame)
    if not cols or not len(frame[cols[0]]):
        return
    if conn.dialect.name == "postgresql":
        import pyarrow as pa

        # NaN becomes NULL, as on SQLite below; Arrow-backed strings convert without a copy.
        copy_arrow(conn, table, pa.Table.from_arrays(
            [pa.array(frame[col], from_pandas=True) for col in cols], names=cols))
        return
    columns = [[None if v is None or (isinstance(v, float) and v != v) else v
                for v in np.asarray(frame[col], dtype=object).tolist()] for col in cols]
    rows = list(zip(*columns, strict=True))
    sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    for i in range(0, len(rows), 10_000):
        conn.exec_driver_sql(sql, rows[i : i + 10_000])

