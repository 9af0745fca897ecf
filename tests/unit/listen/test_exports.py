"""The CSV files that go back to the shop: the opt-out list and a night's voucher codes."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import pytest
from sqlalchemy import select, update

from tend import messages
from tend.cli import main
from tend.config import ShopSettings
from tend.features import ingest
from tend.listen.exports import SUPPRESSION_COLUMNS, VOUCHER_COLUMNS
from tend.messages.tokens import voucher_code
from tend.programs import plan
from tend.shop.read import read_customers
from tend.store import ledger, migrate
from tend.store import suppressions as supp
from tend.store.db import connect
from tend.store.tables import contact_ledger

NIGHT = dt.date(2026, 11, 20)
pytestmark = pytest.mark.demo_shop(customers=400, seed=11, as_of=NIGHT)
SETTINGS = ShopSettings.from_env({})
SECRET = "export-secret"


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_the_suppression_list_with_addresses_from_the_shop(
        store_url: str, demo_shop: str, tmp_path: Path) -> None:
    customers = read_customers(demo_shop, ["C000001", "C000002"])
    email_of = dict(zip(customers["customer_id"], customers["email"], strict=True))
    since = dt.datetime(2026, 11, 19, 8, 30, tzinfo=dt.UTC)
    with connect(store_url).begin() as conn:
        supp.add(conn, ["C000001"], reason="unsubscribed", source="page", created_at=since)
        supp.add_rows(conn, [{"customer_id": "C000002", "email": "old@x.example",
                              "reason": "hard_bounce", "source": "sendgrid:bounce",
                              "created_at": since}])
        supp.add(conn, ["C000003"], reason="complaint", source="survey", created_at=since)
    out = tmp_path / "exports" / "suppressions.csv"
    assert main(["suppressions", "export", "--store", store_url, "--db", demo_shop,
                 "--out", str(out)]) == 0
    rows = read(out)
    assert tuple(rows[0]) == SUPPRESSION_COLUMNS
    assert rows == [
        {"customer_id": "C000001", "email": email_of["C000001"], "reason": "unsubscribed",
         "since": "2026-11-19T08:30:00+00:00"},
        {"customer_id": "C000002", "email": "old@x.example", "reason": "hard_bounce",
         "since": "2026-11-19T08:30:00+00:00"},
    ]  # an open complaint is not an opt-out


def test_every_address_the_shop_holds_is_on_the_list(store_url: str, demo_shop: str,
                                                     tmp_path: Path) -> None:
    """A customer the shop's view repeats with two addresses is listed under both (the
    planner mails neither), and one the shop no longer holds with an empty address."""
    from _support import shop_with_second_address

    shop = shop_with_second_address(demo_shop, tmp_path / "shop.db", "C000001",
                                    "other@x.example")
    since = dt.datetime(2026, 11, 19, 8, 30, tzinfo=dt.UTC)
    with connect(store_url).begin() as conn:
        supp.add(conn, ["C000001", "GONE-1"], reason="unsubscribed", source="page",
                 created_at=since)
    out = tmp_path / "suppressions.csv"
    assert main(["suppressions", "export", "--store", store_url, "--db", shop,
                 "--out", str(out)]) == 0
    listed = sorted((r["customer_id"], r["email"]) for r in read(out))
    assert len(listed) == 3 and listed[2] == ("GONE-1", "")
    assert [c for c, _ in listed[:2]] == ["C000001", "C000001"]
    assert "other@x.example" in {e for _, e in listed} and "nan" not in {e for _, e in listed}


def test_a_nights_vouchers_as_the_emails_show_them(
        store_url: str, demo_shop: str, tmp_path: Path) -> None:
    migrate(store_url)
    ingest.run_ingest(demo_shop, store_url, NIGHT, "r1")
    plan.plan_night(demo_shop, store_url, NIGHT, "run-1", settings=SETTINGS,
                    renderer=messages.default_renderer(SETTINGS), secret=SECRET)
    with connect(store_url).connect() as conn:
        claimed = conn.execute(select(contact_ledger.c.message_id, contact_ledger.c.program,
                                      contact_ledger.c.customer_id)).all()
        contexts = ledger.contexts_of(conn, [m for m, _, _ in claimed])
    offers = {m: json.loads(contexts[m])["offer"] for m, _, _ in claimed
              if "offer" in json.loads(contexts[m])}
    assert offers, "the demo night should have vouchers"
    failed = sorted(offers)[0]
    with connect(store_url).begin() as conn:
        conn.execute(update(contact_ledger).where(contact_ledger.c.message_id == failed)
                     .values(status="failed"))
    out = tmp_path / "vouchers.csv"
    assert main(["vouchers", "export", "--store", store_url, "--as-of", "2026-11-20",
                 "--out", str(out)]) == 0
    rows = read(out)
    assert tuple(rows[0]) == VOUCHER_COLUMNS
    by_code = {r["code"]: r for r in rows}
    program_of = {m: (p, c) for m, p, c in claimed}
    assert len(rows) == len(offers) - 1
    for mid, offer in offers.items():
        if mid == failed:
            assert offer["code"] not in by_code  # never sent: nothing to redeem
            continue
        row = by_code[offer["code"]]
        program, customer = program_of[mid]
        assert row["code"] == voucher_code(SECRET, mid, row["code"].split("-")[0])
        assert (row["customer_id"], row["program"], row["valid_until"], row["currency"]) == (
            customer, program, offer["expires_on"], "CAD")
        value = row["percent"] if offer["kind"] == "percent" else row["amount"]
        other = row["amount"] if offer["kind"] == "percent" else row["percent"]
        assert float(value) == float(offer["amount"]) and other == ""
    empty = tmp_path / "none.csv"
    assert main(["vouchers", "export", "--store", store_url, "--as-of", "2026-11-19",
                 "--out", str(empty)]) == 0
    assert read(empty) == []
