"""Hostile rows in every column of every shop table: the CSV import and both read paths never
raise, and what they keep is inside the documented ranges (docs/shop-data.md, quarantine).

The number of cases per table and path is ``FUZZ_EXAMPLES`` (more with TEND_FUZZ_EXAMPLES, as
for the figures in bench/RESULTS.md).
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from _support import private_pg_schema, sqlite_session
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tend.shop import read as shop
from tend.shop import rules
from tend.shop import schema as shop_schema
from tend.shop.csv_import import LOAD_ORDER, load_csv_dir

FUZZ_EXAMPLES = int(os.environ.get("TEND_FUZZ_EXAMPLES", "25"))
AS_OF = dt.date(2025, 12, 31)
NOW = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
BASE: dict[str, list[list[str]]] = {
    "products": [["BEANS", "Coffee beans", "coffee", "24.00", "", "30", "FILTER"],
                 ["FILTER", "Paper filters", "coffee", "6.50", "365", "", ""]],
    "customers": [["C1", "ann@example.com", "Ann", "Lee", "en", "UTC", "express", "",
                   "2024-01-01T09:00:00+00:00"]],
    "orders": [["O1", "C1", "2024-01-02T10:00:00+00:00", "30.50", "CAD"]],
    "order_lines": [["O1", "BEANS", "1", "24.00"], ["O1", "FILTER", "1", "6.50"]],
}
#: Values that broke, or could break, a parser, a driver or a calendar.
NASTY = [
    "", " ", "\x00", "a\x00b", "\r\n", "\u3000", "NaN", "nan", "inf", "-inf", "Infinity", "1e400",
    "-1e400", "1e-400", "-0", "0", "-1", "1.5", "9" * 40, "-" + "9" * 40, "1_000", "0x10",
    str(2**63), str(2**31), "10001", "3651", "1E+999999999999999999999", "1e999999999999999999",
    "9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+14:00", "0001-01-01", "1969-12-31",
    "1677-09-21 00:12:43", "2262-04-11T23:47:16.854775808", "2200-01-01", "2199-12-31",
    "2026-01-02", "2025-12-31T23:59:59.9999999", "yesterday", "=?utf-8?q?x?=", "O1", "C1",
    "BEANS", "FILTER", "A" * 65, "A" * 400, "é" * 101, "Europe/Nowhere", "../../etc/passwd",
    "express", "EXPRESS", "CAD", "cad", "€", "\ud7ff", "\U0010ffff", "'; DROP TABLE orders;--",
]
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=70)  # (CSV files are UTF-8)


def _value() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(NASTY), TEXT, st.integers().map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30),
                     timezones=st.sampled_from([None, dt.UTC, dt.timezone(dt.timedelta(hours=14)),
                                                dt.timezone(dt.timedelta(hours=-12))])
                     ).map(dt.datetime.isoformat),
    )


def _rows(table: str, values: st.SearchStrategy[Any] | None = None
          ) -> st.SearchStrategy[list[list[Any]]]:
    """One to three rows of ``table`` with a hostile value (of ``values``, default text as a
    CSV file holds it) in any column, or in every one."""
    values = values if values is not None else _value()
    n = len(shop_schema.CSV_COLUMNS[table])
    good = BASE[table][0]
    row = st.one_of(
        st.tuples(st.integers(0, n - 1), values).map(
            lambda iv: [iv[1] if k == iv[0] else good[k] for k in range(n)]),
        st.lists(values, min_size=n, max_size=n),
    )
    return st.lists(row, min_size=1, max_size=3)


def _write_csv(directory: Path, rows: dict[str, list[list[str]]]) -> None:
    directory.mkdir(exist_ok=True)
    for name in LOAD_ORDER:
        with (directory / f"{name}.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(shop_schema.CSV_COLUMNS[name])
            writer.writerows(rows[name])


def _check_import(url: str, directory: Path, table: str, fuzzed: list[list[str]]) -> None:
    rows = {name: [*r, *fuzzed] if name == table else r for name, r in BASE.items()}
    _write_csv(directory, rows)
    report = load_csv_dir(url, directory, now=NOW)  # any exception fails the test
    records = sum(1 for r in rows[table] if any(f.strip() for f in r))
    counted = (report.loaded[table] + report.updated[table] + report.unchanged[table]
               + report.quarantined[table])
    assert counted == records  # every row is loaded or quarantined, none silently lost
    assert report.loaded["products"] >= (2 if table != "products" else 0)


FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("table", LOAD_ORDER)
@FUZZ
@given(data=st.data())
def test_the_csv_import_never_raises_on_sqlite(table: str, data: st.DataObject) -> None:
    fuzzed = data.draw(_rows(table))
    with tempfile.TemporaryDirectory() as tmp:
        _check_import(f"sqlite:///{tmp}/shop.db", Path(tmp) / "export", table, fuzzed)


@pytest.mark.postgres
@pytest.mark.parametrize("table", LOAD_ORDER)
@settings(FUZZ, max_examples=max(10, FUZZ_EXAMPLES // 2))
@given(data=st.data())
def test_the_csv_import_never_raises_on_postgresql(table: str, data: st.DataObject) -> None:
    """PostgreSQL is the stricter database: NUL bytes, widths, NUMERIC(12, 2), timestamps."""
    fuzzed = data.draw(_rows(table))
    with private_pg_schema() as url, tempfile.TemporaryDirectory() as tmp:
        _check_import(url, Path(tmp), table, fuzzed)


# --- the reader ------------------------------------------------------------------------------


def _any_value() -> st.SearchStrategy[object]:
    """What a shop's view may hold in SQLite: any type, any value."""
    return st.one_of(
        _value(), st.none(), st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False), st.binary(max_size=20),
        st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass")),
    )


def _shop(path: Path, rows: dict[str, list[list[object]]]) -> str:
    """A shop whose tables take anything, as a shop's views may."""
    with sqlite_session(path) as con:
        for name in LOAD_ORDER:
            columns = shop_schema.CSV_COLUMNS[name]
            extra = ", unsubscribed_at" if name == "customers" else ""
            con.execute(f"CREATE TABLE {name} ({', '.join(columns)}{extra})")
            con.executemany(f"INSERT INTO {name} ({', '.join(columns)}) "
                            f"VALUES ({', '.join('?' * len(columns))})", rows[name])
    return f"sqlite:///{path}"


def _check_reader(url: str, order_rows: int) -> None:
    """Both read paths, and every other read of the night: no exception, nothing out of range
    kept."""
    end = dt.datetime.combine(AS_OF + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    fast = shop.read_history(url, AS_OF, now=NOW)
    generic = shop._read_generic(url, AS_OF, None, now=NOW, lines=True)
    for h in (fast, generic):
        assert h.rows_read == order_rows
        assert len(h.orders) + sum(q.source == "orders" for q in h.quarantined) <= order_rows
        if len(h.orders):
            assert h.orders["ordered_at"].min() >= rules.EARLIEST
            assert h.orders["ordered_at"].max() < end
            assert h.orders["total"].between(0, rules.ABSURD_TOTAL).all()
            assert not h.orders["order_id"].str.contains("\x00").any()
            assert h.orders["order_id"].str.len().max() <= 64
        if len(h.lines):
            assert h.lines["quantity"].between(1, rules.MAX_QUANTITY).all()
            assert not h.lines["sku"].astype(str).str.contains("\x00").any()
        for q in h.quarantined:  # a store takes the records whatever the row held
            texts = [q.reason, q.record_key or "", *(v or "" for v in q.payload.values())]
            assert not any("\x00" in t for t in texts)
            for t in texts:
                t.encode("utf-8")
    assert len(fast.orders) == len(generic.orders)
    assert len(fast.lines) == len(generic.lines)
    products = shop.read_products(url)
    for col in ("service_interval_days", "replenish_days"):
        days = products[col].dropna()
        assert days.between(1, rules.MAX_INTERVAL_DAYS).all()
    customers = shop.read_customers(url, ["C1", *[str(c) for c in fast.orders["customer_id"]]])
    shop.read_price_list(url)
    shop.read_orders_of_days(url, [(str(c), AS_OF) for c in customers["customer_id"]])


@pytest.mark.parametrize("table", LOAD_ORDER)
@FUZZ
@given(data=st.data())
def test_the_reader_never_raises(table: str, data: st.DataObject,
                                 caplog: pytest.LogCaptureFixture) -> None:
    fuzzed = data.draw(_rows(table, _any_value()))
    rows = {name: [*r, *fuzzed] if name == table else list(r) for name, r in BASE.items()}
    with tempfile.TemporaryDirectory() as tmp:
        caplog.clear()
        _check_reader(_shop(Path(tmp) / "shop.db", rows), len(rows["orders"]))
    if not any(isinstance(v, bytes) and not _utf8(v) for row in fuzzed for v in row):
        # both paths were fuzzed (text that is not UTF-8 is the generic path's alone)
        assert "fast SQLite read failed" not in caplog.text


def _utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True

