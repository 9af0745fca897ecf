"""One row per customer and per product, whatever the shop's views return: a view that joins
addresses or translations repeats a key, and every later step indexes these rows by their key.
Text is read as text, whatever type a SQLite shop stored it as."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from _support import copy_sqlite, private_pg_schema, sqlite_session
from sqlalchemy import select, text

from tend.cli import main
from tend.shop import read as shop
from tend.shop import rules
from tend.store.db import connect
from tend.store.tables import contact_ledger, quarantine

NIGHT = dt.date(2026, 11, 20)

pytestmark = pytest.mark.demo_shop(customers=400, seed=11, as_of=NIGHT)

#: The shop's own tables, without keys, and Tend's names as views over them (as a shop maps its
#: tables), in SQL both backends take.
TABLES = [
    "CREATE TABLE customer_rows (customer_id TEXT, email TEXT, first_name TEXT, last_name TEXT, "
    "locale TEXT, timezone TEXT, marketing_consent TEXT, consent_at TEXT, created_at TEXT, "
    "unsubscribed_at TEXT)",
    "CREATE TABLE product_rows (sku TEXT, name TEXT, category TEXT, price NUMERIC(12, 2), "
    "service_interval_days INTEGER, replenish_days INTEGER, complements TEXT)",
    "CREATE VIEW customers AS SELECT * FROM customer_rows",
    "CREATE VIEW products AS SELECT * FROM product_rows",
]
#: customer_id, email, marketing_consent, unsubscribed_at: each repeated customer's rows, the
#: one to keep first.
CUSTOMERS = [
    ("C1", "c1@example.com", "express", None), ("C1", "c1@example.com", "express", None),
    # the copy that allows the least mail: an unsubscribe, then the weaker consent
    ("C2", "c2@example.com", "express", "2025-03-01"), ("C2", "c2@example.com", "express", None),
    ("C3", "c3@example.com", "implied", None), ("C3", "c3@example.com", "express", None),
    ("C4", "c4@example.com", "none", None), ("C4", "c4@example.com", "EXPRESS", None),
    # then the first by its values as text (the same address, written otherwise)
    ("C5", "C5@Example.com ", "express", None), ("C5", "c5@example.com", "express", None),
    ("C6", "c6@example.com", "express", None),
    # two addresses: which is the customer's is unknown, so neither row is kept
    ("C7", "a@example.com", "express", None), ("C7", "b@example.com", "express", None),
]
PRODUCTS = [  # sku, name, price: the first of a sku's rows is kept
    ("SKU-A", "Beans", "24.00"), ("SKU-A", "Beans v2", "25.00"), ("SKU-A", "Beans v2", "25.00"),
    ("SKU-B", "Filters", "6.50"),
]


def _fill(url: str, reverse: bool) -> None:
    """The rows above (in reverse, so that the choice cannot follow the order rows come in)."""
    step = -1 if reverse else 1
    with connect(url).begin() as conn:
        for statement in TABLES:
            conn.execute(text(statement))
        conn.execute(text(
            "INSERT INTO customer_rows (customer_id, email, locale, timezone, marketing_consent, "
            "created_at, unsubscribed_at) VALUES (:c, :e, 'en', 'UTC', :m, '2024-01-01', :u)"),
            [{"c": c, "e": e, "m": m, "u": u} for c, e, m, u in CUSTOMERS[::step]])
        conn.execute(text("INSERT INTO product_rows (sku, name, category, price) "
                          "VALUES (:s, :n, 'coffee', :p)"),
                     [{"s": s, "n": n, "p": p} for s, n, p in PRODUCTS[::step]])


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def shop_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each backend for a shop's tables."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shop.db'}"
    else:
        with private_pg_schema() as url:
            yield url


@pytest.mark.parametrize("reverse", [False, True], ids=["as written", "reversed"])
def test_a_repeated_customer_is_read_once(shop_db: str, reverse: bool,
                                          caplog: pytest.LogCaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _fill(shop_db, reverse)
    caplog.set_level(logging.WARNING, "tend")
    ids = ["C1", "C2", "C3", "C4", "C5", "C6", "C6", "C7"]  # an id asked twice comes back once
    monkeypatch.setattr(shop, "_IN_CHUNK", 2)  # ... even from two chunks
    got = shop.read_customers(shop_db, ids)

    assert sorted(got["customer_id"]) == ["C1", "C2", "C3", "C4", "C5", "C6"]
    by_id = got.set_index("customer_id")
    assert by_id.loc["C2", "unsubscribed_at"] == dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
    assert by_id.loc["C3", "marketing_consent"] == "implied"
    assert by_id.loc["C4", "marketing_consent"] == "none"  # "EXPRESS" is express to the planner
    assert by_id.loc["C5", "email"] == "C5@Example.com "
    assert "5 customers row(s) set aside" in caplog.text
    assert "5 customer_id(s) repeated" in caplog.text
    assert "2 customers row(s) set aside, " + rules.CUSTOMER_EMAILS_DIFFER in caplog.text
    assert "1 customer(s) not mailed: 'C7'" in caplog.text

    records = shop.duplicated_rows(shop_db)
    assert sorted((q.source, q.record_key, q.reason) for q in records) == sorted(
        [("customers", c, rules.CUSTOMER_DUPLICATE) for c in ("C1", "C2", "C3", "C4", "C5")]
        + [("customers", "C7", rules.CUSTOMER_EMAILS_DIFFER)] * 2
        + [("products", "SKU-A", rules.PRODUCT_DUPLICATE)] * 2)
    assert {q.payload["email"] for q in records if q.record_key == "C5"} == {"c5@example.com"}


@pytest.mark.parametrize("reverse", [False, True], ids=["as written", "reversed"])
def test_a_repeated_sku_is_read_once_and_the_same_everywhere(
        shop_db: str, reverse: bool, caplog: pytest.LogCaptureFixture) -> None:
    _fill(shop_db, reverse)
    caplog.set_level(logging.WARNING, "tend")
    products = shop.read_products(shop_db)
    assert products["sku"].is_unique
    assert products.set_index("sku").loc["SKU-A", ["name", "price"]].tolist() == ["Beans", 24.0]
    prices = shop.read_price_list(shop_db)
    assert sorted((sku, name, float(price)) for sku, name, price in prices) == [
        ("SKU-A", "Beans", 24.0), ("SKU-B", "Filters", 6.5)]
    assert "2 products row(s) set aside" in caplog.text and "1 sku(s) repeated" in caplog.text


def test_text_stored_as_a_blob_is_read_as_text(tmp_path: Path) -> None:
    """A SQLite shop stores whatever it is given: a blob of bytes that are not UTF-8 reads with
    U+FFFD in their place, a UTF-8 blob as its text, so a message made of it can be encoded."""
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    _fill(url, reverse=False)
    with sqlite_session(tmp_path / "shop.db") as con:
        con.execute("UPDATE product_rows SET name = X'FF41', category = X'C3A9', "
                    "complements = X'FE' WHERE sku = 'SKU-B'")
        con.execute("UPDATE customer_rows SET first_name = X'C3', last_name = X'C3A9', "
                    "locale = X'656E', marketing_consent = X'65787072657373' "
                    "WHERE customer_id = 'C6'")
    product = shop.read_products(url).set_index("sku").loc["SKU-B"]
    assert (product["name"], product["category"]) == ("\ufffdA", "é")
    assert dict((sku, name) for sku, name, _ in shop.read_price_list(url))["SKU-B"] == "\ufffdA"
    customer = shop.read_customers(url, ["C6"]).iloc[0]
    assert customer[["first_name", "last_name", "locale", "marketing_consent"]].tolist() == [
        "\ufffd", "é", "en", "express"]
    json.dumps([product.tolist(), customer.tolist()], default=str)


def _ledger(store: str) -> dict[tuple[str, str], str]:
    with connect(store).connect() as conn:
        rows = conn.execute(select(contact_ledger.c.customer_id, contact_ledger.c.program,
                                   contact_ledger.c.status)).all()
    return {(c, p): s for c, p, s in rows}


def test_a_night_goes_on_when_the_shops_views_repeat_keys(
        demo_shop: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`tend night` on a shop whose customers view repeats a customer its night mails and whose
    products view repeats every sku (a translation) and holds names stored as blobs: everyone
    gets exactly the messages of the same shop without them."""
    monkeypatch.setenv("TEND_VAR_DIR", str(tmp_path))
    for var in ("TEND_SHOP_URL", "TEND_STORE_URL", "TEND_DELIVERY", "TEND_OUTBOX_DIR"):
        monkeypatch.delenv(var, raising=False)

    def night(name: str) -> dict[tuple[str, str], str]:
        store = f"sqlite:///{tmp_path / (name + '-store.db')}"
        assert main(["night", "--db", shops[name], "--store", store, "--as-of",
                     NIGHT.isoformat()]) == 0
        return _ledger(store)

    shops = {name: copy_sqlite(demo_shop, tmp_path / f"{name}.db") for name in ("clean", "odd")}
    clean = night("clean")
    mailed = sorted(c for (c, _), status in clean.items() if status == "sent")[0]
    with sqlite_session(tmp_path / "odd.db") as con:
        con.executescript(f"""
            ALTER TABLE customers RENAME TO customer_rows;
            CREATE VIEW customers AS SELECT * FROM customer_rows
              UNION ALL SELECT * FROM customer_rows WHERE customer_id = '{mailed}';
            ALTER TABLE products RENAME TO product_rows;
            UPDATE product_rows SET name = X'FF41' WHERE rowid % 4 = 0;
            CREATE VIEW products AS SELECT * FROM product_rows
              UNION ALL SELECT sku, name || ' (fr)', category, price + 1, service_interval_days,
                               replenish_days, complements FROM product_rows;""")
    capsys.readouterr()
    assert night("odd") == clean
    assert len(clean) > 20
    # the ingest records the rows set aside and counts them in its lines
    with connect(f"sqlite:///{tmp_path / 'odd-store.db'}").connect() as conn:
        kept = conn.execute(select(quarantine.c.source, quarantine.c.record_key,
                                   quarantine.c.reason)).all()
    assert ("customers", mailed, rules.CUSTOMER_DUPLICATE) in kept
    assert sum(1 for source, _, reason in kept
               if (source, reason) == ("products", rules.PRODUCT_DUPLICATE)) > 20
    assert f"{rules.CUSTOMER_DUPLICATE}" in capsys.readouterr().out
