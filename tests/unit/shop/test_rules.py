"""One set of row rules: a row the CSV import quarantines, the nightly reader quarantines too,
for the same reason (the CSV import only adds what it found after a colon), and a row one of
them keeps, the other keeps."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import pytest
from _support import sqlite_session

from tend.shop import read as shop
from tend.shop import rules
from tend.shop import schema as shop_schema
from tend.shop.csv_import import LOAD_ORDER, load_csv_dir

AS_OF = dt.date(2025, 12, 31)
NOW = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
WHEN = "2024-04-01T10:00:00+00:00"
BASE: dict[str, list[list[str]]] = {
    "products": [["BEANS", "Coffee beans", "coffee", "24.00", "", "30", ""],
                 ["FILTER", "Paper filters", "coffee", "6.50", "", "90", ""]],
    "customers": [["C1", "ann@example.com", "Ann", "Lee", "en", "UTC", "express", "",
                   "2024-01-01T09:00:00+00:00"]],
    "orders": [["O1", "C1", "2024-01-02T10:00:00+00:00", "30.50", "CAD"],
               ["O2", "C1", "2024-02-02T10:00:00+00:00", "24.00", "CAD"]],
    "order_lines": [["O1", "BEANS", "1", "24.00"], ["O1", "FILTER", "1", "6.50"]],
}
BAD_QUANTITY = rules.LINE_BAD_QUANTITY

CASES = [  # table, the row as exported, the reason both give (None: both keep the row)
    ("orders", ["", "C1", WHEN, "1.00", "CAD"], rules.ORDER_WITHOUT_ID),
    ("orders", ["O9", "", WHEN, "1.00", "CAD"], rules.ORDER_WITHOUT_CUSTOMER),
    ("orders", ["O9", "C99", WHEN, "1.00", "CAD"], rules.ORDER_UNKNOWN_CUSTOMER),
    ("orders", ["O9", "C1", "not a date", "1.00", "CAD"], rules.ORDERED_AT.unparseable),
    ("orders", ["O9", "C1", "", "1.00", "CAD"], rules.ORDERED_AT.unparseable),
    ("orders", ["O9", "C1", WHEN, "ten", "CAD"], rules.TOTAL.not_a_number),
    ("orders", ["O9", "C1", WHEN, "", "CAD"], rules.TOTAL.not_a_number),
    ("orders", ["O9", "C1", WHEN, "-5.00", "CAD"], rules.TOTAL.negative),
    ("orders", ["O9", "C1", WHEN, "1000000.01", "CAD"], rules.TOTAL.too_large),
    ("orders", ["O9", "C1", WHEN, "5000000", "CAD"], rules.TOTAL.too_large),
    ("orders", ["O9", "C1", WHEN, "1000000", "CAD"], None),
    ("orders", ["O9", "C1", WHEN, "0", "CAD"], None),
    ("order_lines", ["O2", "BEANS", "0", "24.00"], BAD_QUANTITY),
    ("order_lines", ["O2", "BEANS", "-1", "24.00"], BAD_QUANTITY),
    ("order_lines", ["O2", "BEANS", "1.5", "24.00"], BAD_QUANTITY),
    ("order_lines", ["O2", "BEANS", "two", "24.00"], BAD_QUANTITY),
    ("order_lines", ["O2", "BEANS", "", "24.00"], BAD_QUANTITY),
    ("order_lines", ["O2", "BEANS", "1", "24.00"], None),
    ("order_lines", ["O2", "BEANS", "2.0", "24.00"], None),
    ("order_lines", ["O2", "NOPE", "1", "24.00"], rules.LINE_UNKNOWN_SKU),
    ("order_lines", ["O2", "", "1", "24.00"], rules.LINE_UNKNOWN_SKU),
    ("order_lines", ["O99", "BEANS", "1", "24.00"], rules.LINE_UNKNOWN_ORDER),
    ("order_lines", ["", "BEANS", "1", "24.00"], rules.LINE_UNKNOWN_ORDER),
    # the documented ranges (docs/shop-data.md, quarantine)
    ("order_lines", ["O2", "BEANS", "10000", "24.00"], None),
    ("order_lines", ["O2", "BEANS", "10001", "24.00"], rules.LINE_ABSURD_QUANTITY),
    ("order_lines", ["O2", "BEANS", "9" * 40, "24.00"], rules.LINE_ABSURD_QUANTITY),
    ("order_lines", ["O2", "BEANS", "1e400", "24.00"], rules.LINE_ABSURD_QUANTITY),
    ("orders", ["O9", "C1", "1970-01-01T00:00:00+00:00", "1.00", "CAD"], None),
    ("orders", ["O9", "C1", "1969-12-31T23:59:59+00:00", "1.00", "CAD"],
     rules.ORDERED_AT.too_early),
    ("orders", ["O9", "C1", "0001-01-01T00:00:00+05:00", "1.00", "CAD"],
     rules.ORDERED_AT.too_early),
    ("orders", ["O9", "C1", "2199-12-31T00:00:00+00:00", "1.00", "CAD"],
     rules.ORDER_IN_FUTURE.format(date="2026-01-01")),
    ("orders", ["O9", "C1", "2200-01-01T00:00:00+00:00", "1.00", "CAD"],
     rules.ORDERED_AT.too_late),
    ("orders", ["O9", "C1", "9999-12-31T23:59:59-05:00", "1.00", "CAD"],
     rules.ORDERED_AT.too_late),
    # text a store cannot hold, or that cannot name a row
    ("orders", ["O\x009", "C1", WHEN, "1.00", "CAD"], "NUL byte in order_id"),
    ("orders", ["O" * 65, "C1", WHEN, "1.00", "CAD"], "order_id longer than 64 characters"),
    ("orders", ["O9", "C\x001", WHEN, "1.00", "CAD"], rules.ORDER_UNKNOWN_CUSTOMER),
    ("orders", ["O9", "C" * 65, WHEN, "1.00", "CAD"], rules.ORDER_UNKNOWN_CUSTOMER),
    ("order_lines", ["O2", "BEANS\x00", "1", "24.00"], rules.LINE_UNKNOWN_SKU),
    ("order_lines", ["O\x002", "BEANS", "1", "24.00"], rules.LINE_UNKNOWN_ORDER),
]


def _rows(table: str, row: list[str]) -> dict[str, list[list[str]]]:
    return {name: [*rows, row] if name == table else rows for name, rows in BASE.items()}


def _csv_reasons(directory: Path, rows: dict[str, list[list[str]]]) -> tuple[list[str], int]:
    """The reasons the CSV import quarantines rows with, and the rows it loaded."""
    directory.mkdir()
    for name in LOAD_ORDER:
        with (directory / f"{name}.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(shop_schema.CSV_COLUMNS[name])
            writer.writerows(rows[name])
    report = load_csv_dir(f"sqlite:///{directory / 'shop.db'}", directory, now=NOW)
    if report.quarantine_file is None:
        return [], sum(report.loaded.values())
    with report.quarantine_file.open(newline="", encoding="utf-8") as fh:
        return [r["reason"] for r in csv.DictReader(fh)], sum(report.loaded.values())


def _shop(path: Path, rows: dict[str, list[list[str]]]) -> str:
    """A shop database holding the rows as exported (text, as a shop's view may give them)."""
    with sqlite_session(path) as con:
        for name in LOAD_ORDER:
            columns = shop_schema.CSV_COLUMNS[name]
            con.execute(f"CREATE TABLE {name} ({', '.join(columns)}, unsubscribed_at)"
                        if name == "customers" else f"CREATE TABLE {name} ({', '.join(columns)})")
            con.executemany(f"INSERT INTO {name} ({', '.join(columns)}) "
                            f"VALUES ({', '.join('?' * len(columns))})", rows[name])
    return f"sqlite:///{path}"


@pytest.mark.parametrize(("table", "row", "reason"), CASES)
def test_the_csv_import_and_the_reader_quarantine_a_row_for_the_same_reason(
        tmp_path: Path, table: str, row: list[str], reason: str | None,
        caplog: pytest.LogCaptureFixture) -> None:
    rows = _rows(table, row)
    csv_reasons, loaded = _csv_reasons(tmp_path / "export", rows)
    url = _shop(tmp_path / "shop.db", rows)
    fast = shop.read_history(url, AS_OF, now=NOW)
    assert "fast SQLite read failed" not in caplog.text  # both paths are compared
    generic = shop._read_generic(url, AS_OF, None, now=NOW, lines=True)
    base_rows = sum(len(r) for r in BASE.values())
    for history in (fast, generic):
        assert [q.reason for q in history.quarantined] == ([reason] if reason else [])
        assert history.rows_read == len(rows["orders"])
        kept = len(history.orders) + len(history.lines)
        assert kept == base_rows - len(BASE["products"]) - len(BASE["customers"]) + (
            reason is None)
    if reason is None:
        assert csv_reasons == []
        assert loaded == base_rows + 1
    else:
        [got] = csv_reasons
        assert got == reason or got.startswith(f"{reason}: ")
        assert loaded == base_rows


def test_the_bounds_are_the_readers() -> None:
    """The bounds both paths apply: totals up to 1,000,000, quantities from 1."""
    assert rules.TOTAL.maximum == rules.ABSURD_TOTAL == 1_000_000
    assert rules.QUANTITY.minimum == 1
    assert rules.QUANTITY.parse("0") == (None, f"{BAD_QUANTITY}: 0")
    assert rules.TOTAL.parse("1000000") == (1_000_000, None)


@pytest.mark.parametrize("kind", ["string", "large_string", "sliced", "chunked"])
def test_the_readers_text_check_on_whole_columns_is_the_rule(kind: str) -> None:
    """``screen._text_codes`` (whole columns, with a shortcut when nothing can be wrong) finds
    exactly the values ``rules.text_problem`` refuses, in any Arrow layout."""
    import pyarrow as pa

    from tend.shop.screen import _text_codes

    values = ["O1", "O\x002", "O" * 64, "O" * 65, "é" * 64, "é" * 65, "", None, "\x00"]
    typ = pa.large_string() if kind == "large_string" else pa.string()
    a: object = pa.array(["pad\x00", *values], typ).slice(1) if kind == "sliced" \
        else pa.array(values, typ)
    if kind == "chunked":
        a = pa.chunked_array([a])
    expected = [0 if v is None else {None: 0, rules.NUL_BYTE.format(column="order_id"): 1}.get(
        rules.text_problem("orders", "order_id", v), 2) for v in values]
    assert _text_codes(a, "orders", "order_id", 1, 2).tolist() == expected  # type: ignore[arg-type]
    clean = pa.array(["O1", "O2"], typ)
    assert _text_codes(clean, "orders", "order_id", 1, 2).tolist() == [0, 0]
