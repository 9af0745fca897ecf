"""``tend load-csv`` is where a shop's real, messy exports enter Tend: a bad row must cost
that row only (with a line number the shop can find), a bad file must stop everything before
anything is written, and running the same load twice must change nothing."""

from __future__ import annotations

import csv
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import create_engine, func, inspect, select

from tend.dev.demo import generate_demo_shop
from tend.errors import DataError
from tend.shop import schema as shop_schema
from tend.shop.csv_import import LOAD_ORDER, LoadReport, load_csv_dir

Rows = dict[str, list[list[str]]]

BASE: Rows = {
    "products": [
        ["BEANS", "Coffee beans 1 kg", "coffee", "24.00", "", "30", "FILTER"],
        ["FILTER", "Paper filters", "coffee", "6.50", "", "90", ""],
        ["BOILER", "Boiler service", "heating", "189.00", "365", "", ""],
    ],
    "customers": [
        ["C1", "ann@example.com", "Ann", "Lee", "en", "America/Toronto", "express",
         "2024-01-01T10:00:00+00:00", "2024-01-01T09:00:00+00:00"],
        ["C2", "zoe@example.org", "Zoé", "Côté", "fr", "America/Montreal", "implied",
         "2024-02-01T10:00:00-05:00", "2024-02-01T09:00:00-05:00"],
        ["C3", "max@example.net", "", "Roy", "fr", "Europe/Paris", "none", "",
         "2024-03-01T09:00:00Z"],
    ],
    "orders": [
        ["O1", "C1", "2024-01-02T10:00:00+00:00", "54.50", "CAD"],
        ["O2", "C2", "2024-02-02T15:30:00-05:00", "189.00", "CAD"],
        ["O3", "C1", "2024-03-02T10:00:00+00:00", "24.00", "CAD"],
    ],
    "order_lines": [
        ["O1", "BEANS", "2", "24.00"],
        ["O1", "FILTER", "1", "6.50"],
        ["O2", "BOILER", "1", "189.00"],
        ["O3", "BEANS", "1", "24.00"],
    ],
}
COUNTS = {name: len(rows) for name, rows in BASE.items()}


def write_dir(directory: Path, rows: Rows, headers: dict[str, list[str]] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in LOAD_ORDER:
        with (directory / f"{name}.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow((headers or {}).get(name, shop_schema.CSV_COLUMNS[name]))
            writer.writerows(rows[name])
    return directory


def with_row(name: str, row: list[str]) -> tuple[Rows, int]:
    """BASE plus one row appended to ``name``, and the line that row is on (header is 1)."""
    rows = {k: [list(r) for r in v] for k, v in BASE.items()}
    rows[name].append(row)
    return rows, len(rows[name]) + 1


def quarantine_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def count(url: str, table: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            tbl = shop_schema.metadata.tables[table]
            return conn.execute(select(func.count()).select_from(tbl)).scalar_one()
    finally:
        engine.dispose()


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'shop.db'}"


def test_a_clean_directory_loads_everything(tmp_path: Path, url: str) -> None:
    report = load_csv_dir(url, write_dir(tmp_path / "in", BASE))
    assert report.loaded == COUNTS
    assert report.quarantined == dict.fromkeys(LOAD_ORDER, 0)
    assert report.quarantine_file is None
    assert report.warnings == {}
    assert not (tmp_path / "in" / "quarantine.csv").exists()
    for name, n in COUNTS.items():
        assert count(url, name) == n
    assert report.lines()[0].split()[:2] == ["products", "3"]


def test_values_are_parsed_and_timestamps_stored_as_utc(tmp_path: Path, url: str) -> None:
    load_csv_dir(url, write_dir(tmp_path / "in", BASE))
    engine = create_engine(url)
    with engine.connect() as conn:
        o2 = conn.execute(select(shop_schema.orders).where(
            shop_schema.orders.c.order_id == "O2")).one()
        c3 = conn.execute(select(shop_schema.customers).where(
            shop_schema.customers.c.customer_id == "C3")).one()
        beans = conn.execute(select(shop_schema.products).where(
            shop_schema.products.c.sku == "BEANS")).one()
    engine.dispose()
    assert o2.ordered_at.replace(tzinfo=dt.UTC) == dt.datetime(2024, 2, 2, 20, 30, tzinfo=dt.UTC)
    assert o2.total == Decimal("189.00")
    assert c3.first_name is None  # empty means unknown: templates fall back
    assert c3.consent_at is None
    assert c3.created_at == dt.datetime(2024, 3, 1, 9, 0)
    assert (beans.replenish_days, beans.service_interval_days) == (30, None)


CUSTOMER = ["C9", "new@example.com", "Nia", "Ray", "en", "America/Toronto", "express",
            "2024-05-01T10:00:00+00:00", "2024-05-01T09:00:00+00:00"]


def customer(**changes: str) -> list[str]:
    row = list(CUSTOMER)
    for column, value in changes.items():
        row[shop_schema.CSV_COLUMNS["customers"].index(column)] = value
    return row


@pytest.mark.parametrize(
    ("name", "row", "reason"),
    [
        ("customers", customer(customer_id=""), "empty customer_id"),
        ("customers", customer(customer_id="C1"), "duplicate customer_id 'C1' (first at line 2)"),
        ("customers", customer(marketing_consent="maybe"),
         "unknown marketing_consent 'maybe' (expected express, implied, none)"),
        ("customers", customer(created_at="yesterday"),
         "unparseable timestamp in created_at: 'yesterday'"),
        ("customers", customer(consent_at="2024-13-01T00:00:00Z"),
         "unparseable timestamp in consent_at"),
        ("customers", customer(created_at=""), "missing created_at"),
        ("customers", customer(timezone="Mars/Olympus_Mons"),
         "unknown timezone 'Mars/Olympus_Mons' (use an IANA name"),
        ("customers", customer(locale="english please"), "invalid locale"),
        ("customers", [*CUSTOMER, "surplus"], "expected 9 fields, found 10"),
        ("customers", CUSTOMER[:5], "expected 9 fields, found 5"),
        ("products", ["", "Mug", "home", "9.00", "", "", ""], "empty sku"),
        ("products", ["BEANS", "Beans again", "coffee", "24.00", "", "", ""],
         "duplicate sku 'BEANS' (first at line 2)"),
        ("products", ["MUG", "Mug", "home", "nine", "", "", ""], "non-numeric price: 'nine'"),
        ("products", ["MUG", "Mug", "home", "-9.00", "", "", ""], "negative price: -9.00"),
        ("products", ["MUG", "", "home", "9.00", "", "", ""], "missing name"),
        ("products", ["MUG", "Mug", "home", "9.00", "", "-30", ""], "negative replenish_days"),
        ("products", ["MUG", "Mug", "home", "9.00", "0", "", ""],
         "service_interval_days must be at least 1"),
        ("orders", ["", "C1", "2024-04-01T10:00:00Z", "1.00", "CAD"], "order without an order_id"),
        ("orders", ["O9", "", "2024-04-01T10:00:00Z", "1.00", "CAD"], "order without a customer"),
        ("orders", ["O1", "C2", "2024-04-01T10:00:00Z", "54.50", "CAD"],
         "duplicate order_id 'O1' (first at line 2)"),
        ("orders", ["O9", "C99", "2024-04-01T10:00:00Z", "1.00", "CAD"],
         "order for an unknown customer: 'C99' not in customers.csv or the database"),
        ("orders", ["O9", "C1", "2024-04-01T10:00:00Z", "-5.00", "CAD"],
         "negative order total: -5.00"),
        ("orders", ["O9", "C1", "2024-04-01T10:00:00Z", "12,50", "CAD"],
         "total is not a number: '12,50'"),
        ("orders", ["O9", "C1", "2024-04-01T10:00:00Z", "", "CAD"], "total is not a number"),
        ("orders", ["O9", "C1", "2024-04-01T10:00:00Z", "1000000.01", "CAD"],
         "order total above 1,000,000 (absurd amount): 1000000.01"),
        ("orders", ["O9", "C1", "April 1st", "1.00", "CAD"],
         "unparseable ordered_at timestamp: 'April 1st' (use ISO 8601"),
        ("orders", ["O9", "C1", "", "1.00", "CAD"], "unparseable ordered_at timestamp"),
        ("orders", ["O9", "C1", "2024-04-01T10:00:00Z", "1.00", "dollars"], "invalid currency"),
        ("order_lines", ["O99", "BEANS", "1", "24.00"],
         "order line for an unknown order: 'O99' not in orders.csv or the database"),
        ("order_lines", ["", "BEANS", "1", "24.00"],
         "order line for an unknown order: empty order_id"),
        ("order_lines", ["O3", "NOPE", "1", "24.00"],
         "order line with an unknown sku: 'NOPE' not in products.csv or the database"),
        ("order_lines", ["O3", "", "1", "24.00"], "order line with an unknown sku: empty sku"),
        ("order_lines", ["O3", "FILTER", "-1", "6.50"],
         "order line quantity is not a positive whole number: -1"),
        ("order_lines", ["O3", "FILTER", "two", "6.50"],
         "order line quantity is not a positive whole number: 'two'"),
        ("order_lines", ["O3", "FILTER", "1.5", "6.50"],
         "order line quantity is not a positive whole number: '1.5'"),
        ("order_lines", ["O3", "FILTER", "0", "6.50"],
         "order line quantity is not a positive whole number: 0"),
        ("order_lines", ["O3", "FILTER", "", "6.50"],
         "order line quantity is not a positive whole number"),
        ("order_lines", ["O3", "FILTER", "1", "NaN"], "non-numeric unit_price"),
        ("order_lines", ["O3", "BEANS", "1", "24.00"],
         "duplicate order_id, sku ('O3', 'BEANS') (first at line 5)"),
    ],
)
def test_a_bad_row_is_quarantined_with_its_line_and_reason(
    tmp_path: Path, url: str, name: str, row: list[str], reason: str
) -> None:
    rows, line = with_row(name, row)
    directory = write_dir(tmp_path / "in", rows)
    report = load_csv_dir(url, directory)
    assert report.quarantined == {n: int(n == name) for n in LOAD_ORDER}
    assert report.loaded == COUNTS  # the bad row cost that row only
    assert report.quarantine_file == directory / "quarantine.csv"
    [rejected] = quarantine_rows(directory / "quarantine.csv")
    assert rejected["file"] == f"{name}.csv"
    assert int(rejected["line"]) == line
    assert reason in rejected["reason"]
    raw = json.loads(rejected["row"])
    header = shop_schema.CSV_COLUMNS[name]
    assert [raw[c] for c in header[: len(row)]] == row[: len(header)]
    assert any("quarantine" in text for text in report.lines())


def test_every_reason_of_a_row_is_listed(tmp_path: Path, url: str) -> None:
    rows, _ = with_row("customers", customer(marketing_consent="maybe", timezone="Nowhere"))
    report = load_csv_dir(url, write_dir(tmp_path / "in", rows))
    assert report.quarantine_file is not None
    [rejected] = quarantine_rows(report.quarantine_file)
    assert "unknown timezone" in rejected["reason"]
    assert "unknown marketing_consent" in rejected["reason"]


def test_lines_of_a_quarantined_order_follow_it(tmp_path: Path, url: str) -> None:
    rows, order_line = with_row("orders", ["O9", "C99", "2024-04-01T10:00:00Z", "24.00", "CAD"])
    rows["order_lines"].append(["O9", "BEANS", "1", "24.00"])
    report = load_csv_dir(url, write_dir(tmp_path / "in", rows))
    assert report.quarantined["orders"] == report.quarantined["order_lines"] == 1
    assert report.quarantine_file is not None
    rejected = quarantine_rows(report.quarantine_file)
    assert [(r["file"], int(r["line"])) for r in rejected] == [
        ("orders.csv", order_line), ("order_lines.csv", len(rows["order_lines"]) + 1)]
    assert "if it was quarantined, fix it first" in rejected[1]["reason"]


def test_line_numbers_count_physical_lines(tmp_path: Path, url: str) -> None:
    """A quoted field spanning two lines and a blank line must not shift the numbering."""
    directory = write_dir(tmp_path / "in", BASE)
    path = directory / "products.csv"
    path.write_text(
        path.read_text(encoding="utf-8")
        + '"MUG","Mug,\nlarge","home","9.00","","",""\r\n'
        + "\r\n"
        + "PEN,Pen,office,oops,,,\r\n",
        encoding="utf-8",
    )
    report = load_csv_dir(url, directory)
    assert report.loaded["products"] == 4
    assert report.quarantine_file is not None
    [rejected] = quarantine_rows(report.quarantine_file)
    assert (rejected["line"], rejected["reason"]) == ("8", "non-numeric price: 'oops'")


@pytest.mark.parametrize(
    ("name", "row", "warning", "check"),
    [
        ("customers", customer(email="bob@"), "customers.csv: invalid email syntax", None),
        ("customers", customer(email="no-at-sign.example.com"),
         "customers.csv: invalid email syntax", None),
        ("customers", customer(email="a b@example.com"), "customers.csv: invalid email syntax",
         None),
        ("customers", customer(created_at="2024-05-01 09:00:00"),
         "customers.csv: timestamp without zone, read as UTC",
         ("customers", "created_at", dt.datetime(2024, 5, 1, 9, 0))),
        ("customers", customer(timezone=""), "customers.csv: missing timezone, UTC assumed",
         ("customers", "timezone", "UTC")),
        ("customers", customer(marketing_consent=""),
         "customers.csv: missing marketing_consent, read as none",
         ("customers", "marketing_consent", "none")),
        ("orders", ["O9", "C1", "2024-04-01T10:00:00Z", "99.00", "CAD"],
         "orders.csv: order total differs from the sum of its lines",
         ("orders", "total", Decimal("99.00"))),
        ("products", ["MUG", "Mug", "", "9.00", "", "", ""],
         "products.csv: missing category", ("products", "category", "uncategorized")),
    ],
)
def test_a_warning_keeps_the_row_and_is_counted(
    tmp_path: Path, url: str, name: str, row: list[str], warning: str,
    check: tuple[str, str, Any] | None,
) -> None:
    rows, line = with_row(name, row)
    report = load_csv_dir(url, write_dir(tmp_path / "in", rows))
    assert report.quarantined == dict.fromkeys(LOAD_ORDER, 0)
    assert report.loaded[name] == COUNTS[name] + 1
    [(key, n)] = report.warnings.items()
    assert key.startswith(warning)
    assert n == 1
    assert report.warning_lines[key] == [line]
    assert any(warning in text for text in report.lines())
    if check is not None:
        table, column, expected = check
        engine = create_engine(url)
        tbl = shop_schema.metadata.tables[table]
        with engine.connect() as conn:
            values = {r[0] for r in conn.execute(select(tbl.c[column]))}
        engine.dispose()
        assert expected in values


@pytest.mark.parametrize(
    ("name", "header", "expected"),
    [
        ("orders", ["order_id", "client", "ordered_at", "total", "currency"],
         "orders.csv: expected columns order_id,customer_id,ordered_at,total,currency"
         "[,discount_code] ; "
         "found order_id,client,ordered_at,total,currency — missing customer_id; "
         "unexpected client: rename the header row"),
        ("order_lines", ["order_id", "sku", "quantity"],
         "order_lines.csv: expected columns order_id,sku,quantity,unit_price ; "
         "found order_id,sku,quantity — missing unit_price"),
        ("products", [*shop_schema.CSV_COLUMNS["products"], "price"], "repeated price"),
        ("customers", ["customer_id", "e-mail"], "[,unsubscribed_at]"),
    ],
)
def test_a_wrong_header_stops_the_load_before_writing(
    tmp_path: Path, url: str, name: str, header: list[str], expected: str
) -> None:
    directory = write_dir(tmp_path / "in", BASE, headers={name: header})
    with pytest.raises(DataError) as info:
        load_csv_dir(url, directory)
    assert expected in str(info.value)
    assert not (tmp_path / "shop.db").exists()  # nothing was touched, not even created


def test_headers_may_come_in_any_order_with_a_bom_and_unsubscribed_at(
    tmp_path: Path, url: str
) -> None:
    directory = write_dir(tmp_path / "in", BASE)
    header = [*reversed(shop_schema.CSV_COLUMNS["customers"]), "unsubscribed_at"]
    rows = [[*reversed(r), ""] for r in BASE["customers"]]
    rows[0][-1] = "2024-06-01T00:00:00+02:00"
    with (directory / "customers.csv").open("w", newline="", encoding="utf-8-sig") as fh:
        csv.writer(fh).writerows([header, *rows])
    report = load_csv_dir(url, directory)
    assert report.loaded == COUNTS
    engine = create_engine(url)
    with engine.connect() as conn:
        unsub = conn.execute(select(shop_schema.customers.c.unsubscribed_at).where(
            shop_schema.customers.c.customer_id == "C1")).scalar_one()
    engine.dispose()
    assert unsub == dt.datetime(2024, 5, 31, 22, 0)


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        ("missing", "orders.csv not found in"),
        ("empty", "orders.csv: the file is empty; expected a header row order_id,customer_id"),
        ("latin1", "orders.csv: not UTF-8"),
    ],
)
def test_an_unusable_file_is_a_data_error(
    tmp_path: Path, url: str, breakage: str, expected: str
) -> None:
    directory = write_dir(tmp_path / "in", BASE)
    path = directory / "orders.csv"
    if breakage == "missing":
        path.unlink()
    elif breakage == "empty":
        path.write_text("")
    else:
        # Far enough down that the header reads fine and the load is under way.
        good = "".join(f"P{n},C1,2024-04-01T10:00:00Z,0.00,CAD\n" for n in range(2000))
        path.write_bytes(b"order_id,customer_id,ordered_at,total,currency\n" + good.encode()
                         + "O9,C1,2024-04-01T10:00:00Z,1.00,CAD é\n".encode("latin-1"))
    with pytest.raises(DataError, match=expected):
        load_csv_dir(url, directory)
    if breakage == "latin1":  # found mid-file: the one transaction rolled everything back
        assert inspect(create_engine(url)).has_table("customers")
        assert count(url, "customers") == 0


def test_a_missing_directory_is_a_data_error(tmp_path: Path, url: str) -> None:
    with pytest.raises(DataError, match="is not a directory"):
        load_csv_dir(url, tmp_path / "nope")


def test_rerunning_the_same_load_changes_nothing(tmp_path: Path, url: str) -> None:
    directory = write_dir(tmp_path / "in", BASE)
    load_csv_dir(url, directory)
    again = load_csv_dir(url, directory)
    assert again.loaded == dict.fromkeys(LOAD_ORDER, 0)
    assert again.updated == dict.fromkeys(LOAD_ORDER, 0)
    assert again.unchanged == COUNTS
    for name, n in COUNTS.items():
        assert count(url, name) == n


def test_a_later_export_updates_changed_rows_and_adds_new_ones(tmp_path: Path, url: str) -> None:
    load_csv_dir(url, write_dir(tmp_path / "in", BASE))
    rows, _ = with_row("customers", CUSTOMER)
    rows["customers"][0][6] = "none"  # C1 withdrew consent
    rows["order_lines"][3][2] = "3"  # O3 now has three bags
    report = load_csv_dir(url, write_dir(tmp_path / "in", rows))
    assert report.loaded["customers"] == 1
    assert report.updated == {"products": 0, "customers": 1, "orders": 0, "order_lines": 1}
    assert report.warnings == {  # O3's total was not re-exported: worth a look
        "orders.csv: order total differs from the sum of its lines": 1}
    engine = create_engine(url)
    with engine.connect() as conn:
        consent = conn.execute(select(shop_schema.customers.c.marketing_consent).where(
            shop_schema.customers.c.customer_id == "C1")).scalar_one()
    engine.dispose()
    assert consent == "none"
    assert count(url, "order_lines") == COUNTS["order_lines"]


def test_a_clean_load_removes_a_stale_quarantine_file(tmp_path: Path, url: str) -> None:
    rows, _ = with_row("products", ["MUG", "Mug", "home", "nine", "", "", ""])
    directory = write_dir(tmp_path / "in", rows)
    assert load_csv_dir(url, directory).quarantine_file == directory / "quarantine.csv"
    rows["products"][-1][3] = "9.00"
    write_dir(directory, rows)
    report = load_csv_dir(url, directory)
    assert report.quarantine_file is None
    assert report.loaded["products"] == 1
    assert not (directory / "quarantine.csv").exists()


def test_the_quarantine_file_can_be_elsewhere(tmp_path: Path, url: str) -> None:
    rows, _ = with_row("order_lines", ["O3", "NOPE", "1", "1.00"])
    target = tmp_path / "rejects" / "night.csv"
    target.parent.mkdir()
    report = load_csv_dir(url, write_dir(tmp_path / "in", rows), quarantine_file=target)
    assert report.quarantine_file == target
    assert len(quarantine_rows(target)) == 1
    assert not (tmp_path / "in" / "quarantine.csv").exists()


def test_a_demo_shop_exported_with_pandas_round_trips(tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path / 'demo.db'}"
    summary = generate_demo_shop(source, customers=200, seed=4, as_of=dt.date(2025, 6, 30))
    directory = tmp_path / "export"
    directory.mkdir()
    engine = create_engine(source)
    frames: dict[str, pd.DataFrame] = {}
    for name in LOAD_ORDER:
        frames[name] = pd.read_sql_table(name, engine)
        frames[name].to_csv(directory / f"{name}.csv", index=False)
    engine.dispose()

    target = f"sqlite:///{tmp_path / 'loaded.db'}"
    report: LoadReport = load_csv_dir(target, directory)
    assert report.quarantine_file is None
    assert report.quarantined == dict.fromkeys(LOAD_ORDER, 0)
    assert report.loaded == {"products": summary.products, "customers": 200,
                             "orders": summary.orders, "order_lines": summary.order_lines}
    invalid = sum(1 for e in frames["customers"]["email"] if "@" not in e or " " in e
                  or not e.split("@")[1] or "." not in e.split("@")[1])
    assert report.warnings["customers.csv: invalid email syntax"] == invalid > 0
    assert set(report.warnings) <= {
        "customers.csv: invalid email syntax",
        "customers.csv: timestamp without zone, read as UTC",  # SQLite keeps no offset
        "orders.csv: timestamp without zone, read as UTC",
    }

    def table(url: str, name: str) -> list[tuple[Any, ...]]:
        eng = create_engine(url)
        with eng.connect() as conn:
            tbl = shop_schema.metadata.tables[name]
            rows = conn.execute(select(tbl).order_by(*tbl.columns)).all()
        eng.dispose()
        # An empty first name and a missing one are the same thing in a CSV.
        return [tuple(None if v == "" else v for v in r) for r in rows]

    for name in LOAD_ORDER:
        assert table(target, name) == table(source, name), name


def test_orders_may_carry_a_discount_code(tmp_path: Path, url: str) -> None:
    directory = write_dir(tmp_path / "in", BASE)
    header = [*shop_schema.CSV_COLUMNS["orders"], "discount_code"]
    codes = [" WB-ABCD-EFGH ", "", "X" * 65]
    with (directory / "orders.csv").open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([header, *([*r, c] for r, c in zip(BASE["orders"], codes,
                                                                     strict=True))])
    report = load_csv_dir(url, directory)
    assert report.quarantined["orders"] == 1  # the 65-character code
    assert report.quarantined["order_lines"] == 1  # the lines of that order follow it
    [rejected] = [r for r in quarantine_rows(directory / "quarantine.csv")
                  if r["file"] == "orders.csv"]
    assert "discount_code longer than 64 characters" in rejected["reason"]
    engine = create_engine(url)
    with engine.connect() as conn:
        stored = dict(conn.execute(select(shop_schema.orders_with_codes.c.order_id,
                                          shop_schema.orders_with_codes.c.discount_code)).all())
    engine.dispose()
    assert stored == {"O1": "WB-ABCD-EFGH", "O2": None}


def test_a_shop_loaded_without_discount_codes_has_no_such_column(tmp_path: Path,
                                                                 url: str) -> None:
    load_csv_dir(url, write_dir(tmp_path / "in", BASE))
    engine = create_engine(url)
    with engine.connect() as conn:
        assert not shop_schema.has_discount_code(conn)
    engine.dispose()


def test_strict_refuses_the_whole_load_and_lists_the_rows(tmp_path: Path, url: str) -> None:
    rows, line = with_row("order_lines", ["O3", "FILTER", "99999999999999999999", "6.50"])
    directory = write_dir(tmp_path / "in", rows)
    with pytest.raises(DataError, match=r"--strict: 1 row\(s\) fail the row rules"):
        load_csv_dir(url, directory, strict=True)
    assert count(url, "orders") == 0  # nothing of any file was loaded
    [rejected] = quarantine_rows(directory / "quarantine.csv")
    assert int(rejected["line"]) == line and "above 10,000" in rejected["reason"]
    report = load_csv_dir(url, directory)  # without --strict: the good rows load
    assert report.loaded == COUNTS and report.quarantined["order_lines"] == 1


@pytest.mark.postgres
@pytest.mark.parametrize(("name", "row", "reason"), [
    ("order_lines", ["O3", "FILTER", "9" * 30, "6.50"], "above 10,000"),
    ("order_lines", ["O3", "FILTER", "1", "1e30"], "unit_price too large"),
    ("orders", ["O9", "C1", "9999-12-31T23:59:59-05:00", "1.00", "CAD"], "after 2199-12-31"),
    ("orders", ["O9", "C1", "0001-01-01T00:00:00+05:00", "1.00", "CAD"], "before 1970-01-01"),
    ("customers", ["C9", "a@b.example", "N\x00", "", "en", "UTC", "none", "",
                   "2024-01-01T00:00:00Z"], "NUL byte in first_name"),
    ("products", ["X\x00", "x", "x", "1", "", "", ""], "NUL byte in sku"),
    ("products", ["X", "x", "x", "1", "", "99999999999", ""], "replenish_days too large"),
])
def test_postgresql_takes_the_good_rows_whatever_the_bad_ones_hold(
        tmp_path: Path, pg_schema_url: str, name: str, row: list[str], reason: str) -> None:
    """The stricter database: values it would refuse are quarantined, never a failed load."""
    rows, _ = with_row(name, row)
    report = load_csv_dir(pg_schema_url, write_dir(tmp_path / "in", rows))
    assert report.loaded == COUNTS
    [rejected] = quarantine_rows(tmp_path / "in" / "quarantine.csv")
    assert reason in rejected["reason"]
