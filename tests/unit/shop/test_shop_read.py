"""Reading the shop: every unusable order row is quarantined with its reason, never dropped."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
from _support import sqlite_session

from tend.errors import ConfigError, DataError
from tend.shop import columns, sqlite_fast
from tend.shop import read as shop
from tend.shop.read import require_schema, validate_orders

NIGHT = dt.date(2026, 11, 20)
GOOD = {"order_id": "O1", "customer_id": "C1", "ordered_at": "2026-11-01 10:00:00+00:00",
        "total": "12.50"}


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"order_id": None}, "order without an order_id"),
        ({"order_id": " "}, "order without an order_id"),
        ({"customer_id": None}, "order without a customer"),
        ({"customer_id": "C999"}, "order for an unknown customer"),
        ({"ordered_at": "yesterday-ish"}, "unparseable ordered_at timestamp"),
        ({"ordered_at": None}, "unparseable ordered_at timestamp"),
        ({"total": "twelve"}, "total is not a number"),
        ({"total": "-1"}, "negative order total"),
        ({"total": "2000000"}, "absurd amount"),
    ],
)
def test_bad_rows_are_quarantined_with_a_reason(row: dict, reason: str) -> None:
    raw = pd.DataFrame([GOOD | {"order_id": "O0"}, GOOD | row])
    clean, bad = validate_orders(raw, {"C1"}, NIGHT)
    assert list(clean["order_id"]) == ["O0"]
    assert len(bad) == 1
    assert reason in bad[0].reason
    assert bad[0].source == "orders"


def test_duplicate_order_ids_keep_the_first() -> None:
    raw = pd.DataFrame([GOOD, GOOD | {"total": "99"}])
    clean, bad = validate_orders(raw, {"C1"}, NIGHT)
    assert clean["total"].tolist() == [12.5]
    assert [b.reason for b in bad] == ["duplicate order_id (the first occurrence was kept)"]


def test_orders_after_the_night_do_not_exist_yet() -> None:
    raw = pd.DataFrame([GOOD, GOOD | {"order_id": "O2", "ordered_at": "2026-11-21 00:00:00Z"}])
    clean, bad = validate_orders(raw, {"C1"}, NIGHT)
    assert clean["order_id"].tolist() == ["O1"]
    assert bad == []


@pytest.mark.parametrize("stamp", ["2026-11-01 10:00:00+00:00", "2026-11-01T05:00:00-05:00",
                                   "2026-11-01 10:00:00", "2026-11-01T10:00:00Z"])
def test_timestamps_in_any_common_spelling_become_utc(stamp: str) -> None:
    clean, _ = validate_orders(pd.DataFrame([GOOD | {"ordered_at": stamp}]), {"C1"}, NIGHT)
    assert clean.loc[0, "ordered_at"] == pd.Timestamp("2026-11-01 10:00:00", tz="UTC")


def test_a_shop_without_tends_tables_gets_the_fix(tmp_path: Path) -> None:
    (tmp_path / "empty.db").touch()  # an empty file is an empty SQLite database
    with pytest.raises(DataError, match="create views with these names"):
        require_schema(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(ConfigError, match=r"no shop database at .*fix the path"):
        require_schema(f"sqlite:///{tmp_path / 'absent.db'}")
    assert not (tmp_path / "absent.db").exists()


# -- the SQLite fast path, part by part ------------------------------------------------------
# A shop whose tables take anything (a shop's views may): NULLs, repeated order ids, values of
# any type. Rowids have gaps, so a read in parts of one or three rows meets empty parts, runs
# of one order's lines cut between parts and a repeated order id split across two parts.

SHOP_ORDERS = [  # rowid, order_id, customer_id, ordered_at, total
    (1, "O01", "C1", "2026-01-01 10:00:00.000000", 10),
    (2, "O02", "C1", "2026-01-02 10:00:00.000000", 12.5),
    (3, "O03", "C2", "2026-01-03T10:00:00.0005", "12.50"),  # a total as text, half a ms
    (5, "O04", "C2", "2026-01-04 10:00:00-05:00", 9),  # a zone offset
    (6, "O04", "C3", "2026-01-03 10:00:00.000000", 8),  # a repeat, earlier: it is kept
    (7, "O05", "C9", "2026-01-05 10:00:00.000000", 5),  # unknown customer
    (8, " ", "C3", "2026-01-05 10:00:00.000000", 5),  # blank order id
    (9, "O06", None, "2026-01-05 10:00:00.000000", 5),  # no customer
    (10, "O07", "\u3000", "2026-01-05 10:00:00.000000", 5),  # a blank customer (ideographic)
    (11, "O08", "C3", "yesterday", 5),
    (12, "O09", "C3", "2026-01-05 10:00:00.000000", "ten"),
    (13, "O10", "C3", "2026-01-05 10:00:00.000000", -1),
    (14, "O11", "C3", "2026-01-05 10:00:00.000000", 2_000_000),
    (15, "O12", "C3", "2027-06-01 10:00:00.000000", 5),  # in the future
    (16, "O13", "C3", "2026-11-21 00:00:00.000000", 5),  # after the night: does not exist yet
    (18, "O14", "C4", "2026-02-01 10:00:00.000000", 7),
    (21, "O17", "C4", "2026-02-01 10:00:00.000000", None),
    (19, "O15", "O'Brien", "2026-02-02 10:00:00.000000", 3),
    (20, "O16", "Zoë", "2026-02-03 10:00:00.000000", 4),
]
SHOP_LINES = [  # rowid, order_id, sku, quantity
    (1, "O01", "SKU-A", 1), (2, "O01", "SKU-B", 2), (3, "O01", "SKU-A", 3),
    (4, "O02", "SKU-A", 1), (6, "O03", "SKU-B", "2"), (7, "O03", "SKU-B", 2.5),
    (8, "O04", "SKU-A", 1), (9, "O04", "NOPE", 1), (10, "GONE", "SKU-A", 1),
    (11, "O05", "SKU-A", 1), (12, "O13", "SKU-A", 1), (13, None, "SKU-A", 1),
    (14, "O14", "SKU-A", -3), (15, "O14", "SKU-A", 3_000_000_000), (16, "O15", "SKU-A", 1),
    (17, "O16", None, 1), (18, "O16", "SKU-B", 4), (19, "O16", "SKU-B", 5),
]
NOW = dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC)


def _shop(path: Path, lines: list[tuple[object, ...]] = SHOP_LINES) -> str:
    with sqlite_session(path) as con:
        con.executescript("""
            CREATE TABLE customers (customer_id, email, first_name, last_name, locale, timezone,
                                    marketing_consent, consent_at, created_at, unsubscribed_at);
            CREATE TABLE products (sku, name, category, price, service_interval_days,
                                   replenish_days, complements);
            CREATE TABLE orders (order_id, customer_id, ordered_at, total, currency);
            CREATE INDEX ix_orders_customer_id ON orders (customer_id);
            CREATE TABLE order_lines (order_id, sku, quantity, unit_price);
            CREATE INDEX ix_order_lines_order_id ON order_lines (order_id);""")
        con.executemany("INSERT INTO customers (customer_id) VALUES (?)",
                        [(c,) for c in ("C1", "C2", "C3", "C4", "\u3000", "O'Brien", "Zoë")])
        con.executemany("INSERT INTO products (sku) VALUES (?)", [("SKU-B",), ("SKU-A",)])
        con.executemany("INSERT INTO orders (rowid, order_id, customer_id, ordered_at, total) "
                        "VALUES (?, ?, ?, ?, ?)", SHOP_ORDERS)
        con.executemany("INSERT INTO order_lines (rowid, order_id, sku, quantity) "
                        "VALUES (?, ?, ?, ?)", lines)
    return f"sqlite:///{path}"


def _keys(h: shop.History) -> list[tuple[str, str | None, str]]:
    return sorted((q.source, q.record_key, q.reason) for q in h.quarantined)


def _same(a: shop.History, b: shop.History, *, exact: bool) -> None:
    """Same frames and records; ``exact``: records in the same order with the same payloads
    (the generic path writes some payloads as SQLite's text of the value, not as typed)."""
    pd.testing.assert_frame_equal(a.orders, b.orders)
    pd.testing.assert_frame_equal(a.lines, b.lines)
    assert a.rows_read == b.rows_read
    if exact:
        assert a.quarantined == b.quarantined
    else:
        assert _keys(a) == _keys(b)


@pytest.fixture
def odd_shop(tmp_path: Path) -> str:
    return _shop(tmp_path / "odd.db")


def _no_fallback(caplog: pytest.LogCaptureFixture) -> None:
    assert "fast SQLite read failed" not in caplog.text


def test_the_odd_shop_exercises_every_check(odd_shop: str) -> None:
    h = shop.read_history(odd_shop, NIGHT, now=NOW)
    reasons = {q.reason.split(" (")[0] for q in h.quarantined}
    assert reasons == {
        "order without an order_id", "order without a customer", "order for an unknown customer",
        "unparseable ordered_at timestamp", "total is not a number", "negative order total",
        "order total above 1,000,000", "ordered_at in the future",
        "duplicate order_id", "order line for an unknown order", "order line with an unknown sku",
        "order line quantity is not a positive whole number", "order line quantity above 10,000"}
    assert h.orders.set_index("order_id").loc["O03", "total"] == 12.5
    assert h.orders.set_index("order_id").loc["O04", "customer_id"] == "C3"
    assert h.lines["quantity"].max() == 5  # 3,000,000,000 units in one line is quarantined


@pytest.mark.parametrize("part_rows", [1_000_000, 3, 1])
@pytest.mark.parametrize("batch_rows", ["131072", "2"])
def test_a_read_in_parts_equals_one_part_and_the_generic_path(
        odd_shop: str, part_rows: int, batch_rows: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Parts of one row (empty ones where rowids skip), runs of lines cut between parts, a
    repeated id in two parts, and batches of two rows: the odd totals and quantities come
    after the first batch, which the careful re-read must still type."""
    whole = shop.read_history(odd_shop, NIGHT, now=NOW)
    monkeypatch.setattr(sqlite_fast, "_PART_ROWS", part_rows)
    monkeypatch.setattr(sqlite_fast, "_BATCH_ROWS", batch_rows)
    parts = shop.read_history(odd_shop, NIGHT, now=NOW)
    _no_fallback(caplog)
    _same(parts, whole, exact=True)
    _same(parts, shop._read_generic(odd_shop, NIGHT, None, now=NOW, lines=True), exact=False)


@pytest.mark.parametrize("order", ["as written", "reversed"])
def test_lines_in_any_order_are_matched_to_their_orders(
        tmp_path: Path, order: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Lines that do not follow the orders part by part are matched by id at the end."""
    lines = SHOP_LINES if order == "as written" else [
        (100 - rid, *rest) for rid, *rest in SHOP_LINES]
    url = _shop(tmp_path / "shop.db", lines)
    monkeypatch.setattr(sqlite_fast, "_PART_ROWS", 2)
    fast = shop.read_history(url, NIGHT, now=NOW)
    _no_fallback(caplog)
    _same(fast, shop._read_generic(url, NIGHT, None, now=NOW, lines=True), exact=False)
    assert len(fast.lines) == 9


def test_trailing_lines_of_unknown_orders_do_not_unmatch_the_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every part lines up with its orders but the read has more runs than order rows."""
    url = _shop(tmp_path / "shop.db", [*SHOP_LINES, (30, "LATE", "SKU-A", 1)])
    monkeypatch.setattr(sqlite_fast, "_PART_ROWS", 4)
    fast = shop.read_history(url, NIGHT, now=NOW)
    _same(fast, shop._read_generic(url, NIGHT, None, now=NOW, lines=True), exact=False)
    assert ("order_lines", "LATE:SKU-A", "order line for an unknown order") in _keys(fast)


@pytest.mark.parametrize("reverse_lines", [False, True])
def test_a_customer_subset_read_in_two_pieces_equals_one(
        tmp_path: Path, reverse_lines: bool, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The pieces split the orders' rowids; lines in the orders' order stay pieces, lines
    written in another order are sorted as one piece."""
    lines = [(100 - rid, *rest) for rid, *rest in SHOP_LINES] if reverse_lines else SHOP_LINES
    url = _shop(tmp_path / "shop.db", lines)
    ids = ["C1", "C2", "C3", "C4", "C9", "O'Brien", "Zoë", "C1"]
    one = shop.read_history(url, NIGHT, ids, now=NOW)
    sorted_pieces = []
    by_rid = sqlite_fast._by_rid
    monkeypatch.setattr(sqlite_fast, "_by_rid", lambda tables, **kw: (
        sorted_pieces.append(len(tables)), by_rid(tables, **kw))[1])
    monkeypatch.setattr(sqlite_fast, "_SPLIT_CUSTOMERS", 1)
    two = shop.read_history(url, NIGHT, ids, now=NOW)
    _no_fallback(caplog)
    _same(two, one, exact=True)
    if not reverse_lines:  # (the generic path leaves the lines of a subset in join order)
        _same(two, shop._read_generic(url, NIGHT, ids, now=NOW, lines=True), exact=False)
    assert (2 in sorted_pieces) == reverse_lines  # lines of both pieces sorted together
    assert set(two.orders["customer_id"]) == {"C1", "C2", "C3", "C4", "O'Brien", "Zoë"}


def test_changed_customers_are_read_without_the_engine(odd_shop: str) -> None:
    since = dt.datetime(2026, 1, 3, tzinfo=dt.UTC)
    got = shop.changed_customer_ids(odd_shop, since, NIGHT)
    assert got == ["C2", "C3", "C4", "C9", "O'Brien", "Zoë", "\u3000"]
    assert shop.changed_customer_ids(odd_shop, since, dt.date(2026, 1, 3)) == ["C2", "C3"]


def test_blank_is_what_trimming_whitespace_leaves_empty() -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    values = [None, "", " ", "\t\n", "\u3000", "\u00a0x", "x ", " x", "\u200b", "\u2003\u2029"]
    a = pa.array(values, pa.string())
    trimmed = pc.or_kleene(pc.is_null(a), pc.equal(pc.utf8_trim_whitespace(a), ""))
    assert columns._blank(a).tolist() == trimmed.fill_null(True).to_pylist()


def test_timestamps_parse_and_round_like_pandas() -> None:
    import numpy as np
    import pyarrow as pa

    text = ["2026-01-01 10:00:00.0005", "2026-01-01 10:00:00.0015", "2026-01-01 10:00:00.0025",
            "1969-12-31 23:59:59.9995", "2026-01-01T10:00:00", None, "2026-01-01 10:00:00+01:00",
            "soon"]
    parsed = columns._arrow_ms(pa.array(text, pa.string()), chunk=2)
    np.testing.assert_array_equal(parsed, columns._parse_ms(pd.Series(text, dtype=object)))
    assert parsed[-1] == columns._NAT
    np.testing.assert_array_equal(columns._arrow_ms(pa.array(text[:5], pa.string())), parsed[:5])
    us = np.arange(-5_000, 5_000, 250, dtype=np.int64)
    expected = pd.Series(pd.to_datetime(us, unit="us")).dt.round("ms").dt.as_unit("ms")
    np.testing.assert_array_equal(columns._round_ms(us), expected.array.asi8)


def test_positions_hash_either_side() -> None:
    import pyarrow as pa

    known = pa.array(["a", "b", "c", "d"])
    assert columns._positions(pa.array(["d", "x", "a"]), known).tolist() == [3, -1, 0]
    assert columns._positions(pa.array(["d", "x", "a", "y", "c", "z"]), known).tolist() == [
        3, -1, 0, -1, 2, -1]
    assert columns._sorted_unique(pa.array(["b", None, "a", "b"])).to_pylist() == ["a", "b"]
    assert columns._sorted_unique(pa.array(["b", "a", "b"]), unique=False).to_pylist() == [
        "a", "b", "b"]


@pytest.mark.parametrize("with_codes", [True, False])
def test_discount_codes_are_read_when_the_shop_has_them(tmp_path: Path,
                                                        with_codes: bool) -> None:
    from tend.shop import schema as s
    from tend.store.db import connect

    url = f"sqlite:///{tmp_path / 'shop.db'}"
    s.metadata.create_all(connect(url))
    table = s.orders_with_codes if with_codes else s.orders
    with connect(url).begin() as conn:
        if with_codes:
            s.add_discount_code(conn)
            s.add_discount_code(conn)  # a second call changes nothing
        conn.execute(table.insert(), [
            {"order_id": o, "customer_id": "C1", "total": 10, "currency": "CAD",
             "ordered_at": dt.datetime(2026, 10, 3, tzinfo=dt.UTC),
             **({"discount_code": code} if with_codes else {})}
            for o, code in (("O1", "WB-AAAA-BBBB"), ("O2", None), ("O3", "  "))])
    orders = pd.DataFrame({"order_id": ["O1", "O2", "O3"], "customer_id": "C1"})
    got = shop.with_discount_codes(url, orders)
    expected = ["WB-AAAA-BBBB", None, None] if with_codes else [None, None, None]
    assert [c if isinstance(c, str) else None for c in got["discount_code"]] == expected


def test_an_unsubscribe_that_cannot_be_read_still_counts(tmp_path: Path) -> None:
    """A customer's unsubscribed_at that is garbage or out of any calendar is an unsubscribe
    (at the earliest date), never a silent "subscribed"; an unreadable consent date is none."""
    url = _shop(tmp_path / "shop.db")
    with sqlite_session(tmp_path / "shop.db") as con:
        con.execute("DELETE FROM customers")
        con.executemany("INSERT INTO customers (customer_id, consent_at, unsubscribed_at) "
                        "VALUES (?, ?, ?)", [("A", "2024-01-01", None), ("B", "9999-12-31", "yes"),
                                             ("C", None, "9999-12-31 23:59:59"),
                                             ("D", "0001-01-01", "2025-01-02 03:04:05")])
    got = shop.read_customers(url, ["A", "B", "C", "D"]).set_index("customer_id")
    earliest = pd.Timestamp("1970-01-01", tz="UTC")
    assert got.loc["B", "unsubscribed_at"] == got.loc["C", "unsubscribed_at"] == earliest
    assert pd.isna(got.loc["A", "unsubscribed_at"])
    assert got.loc["D", "unsubscribed_at"] == pd.Timestamp("2025-01-02 03:04:05", tz="UTC")
    assert pd.isna(got.loc["B", "consent_at"]) and pd.isna(got.loc["D", "consent_at"])
    assert got.loc["A", "consent_at"] == pd.Timestamp("2024-01-01", tz="UTC")
