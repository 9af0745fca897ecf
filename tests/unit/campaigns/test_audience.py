"""Each audience kind selects the right customers, checked against the shop's own data with
SQL (or the nightly signals), on SQLite and PostgreSQL stores; uploads through the CLI."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tend.campaigns.audience import select_audience
from tend.campaigns.spec import parse_spec
from tend.campaigns.upload import read_ids
from tend.cli import main
from tend.errors import DataError
from tend.features import ingest
from tend.features.store import read_feature_set
from tend.programs.caps import SendWindow
from tend.programs.plan import detect_signals
from tend.shop.read import read_products

DAY = dt.date(2026, 11, 20)

pytestmark = pytest.mark.demo_shop(customers=300, seed=3, as_of=DAY)


def audience(shop_url: str, store_url: str, **form: Any) -> set[str]:
    spec = parse_spec({"name": "t1", "subject_en": "s", "subject_fr": "s"} | form,
                      templates=["newsletter"], locales=["en", "fr"], quiet=SendWindow())
    got = select_audience(spec, store_url=store_url, shop_url=shop_url,
                          features=read_feature_set(store_url),
                          products=read_products(shop_url), features_as_of=DAY)
    assert got["customer_id"].is_unique
    assert got["score"].is_monotonic_decreasing
    return set(got["customer_id"])


def shop_sql(shop_url: str, sql: str, *args: Any) -> set[str]:
    with sqlite3.connect(shop_url.removeprefix("sqlite:///")) as db:
        return {str(r[0]) for r in db.execute(sql, args)}


@pytest.fixture
def ingested(shop_url: str, store_url: str) -> tuple[str, str]:
    ingest.run_ingest(shop_url, store_url, DAY, "i")
    return shop_url, store_url


def test_each_audience_kind(ingested: tuple[str, str], tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    shop_url, store_url = ingested
    everyone = audience(shop_url, store_url)
    assert everyone == shop_sql(shop_url, "SELECT customer_id FROM customers WHERE "
                                          "lower(marketing_consent) IN ('express', 'implied')")

    signals = detect_signals(store_url, shop_url, DAY)
    for kind in ("lapsed", "seasonal", "checkup"):
        want = set(signals.loc[signals["signal"] == kind, "customer_id"])
        assert audience(shop_url, store_url, audience=kind) == want, kind
    assert audience(shop_url, store_url, audience="lapsed"), "the demo shop has lapsed customers"

    buyers = shop_sql(shop_url, "SELECT customer_id FROM orders GROUP BY customer_id "
                                "HAVING count(*) = 1")
    one_time = audience(shop_url, store_url, audience="one_time")
    assert one_time and one_time == buyers

    spent = shop_sql(shop_url, "SELECT customer_id FROM orders GROUP BY customer_id "
                               "HAVING sum(total) >= 1000")
    gold = audience(shop_url, store_url, audience="loyalty_tier", audience_tier="gold")
    assert gold and gold == spent
    assert gold <= audience(shop_url, store_url, audience="loyalty_tier",
                            audience_tier="silver")

    category = sorted(shop_sql(shop_url, "SELECT category FROM products"))[0]
    since = (DAY - dt.timedelta(days=60)).isoformat()
    bought = shop_sql(shop_url, """
        SELECT DISTINCT o.customer_id FROM orders o
        JOIN order_lines l ON l.order_id = o.order_id JOIN products p ON p.sku = l.sku
        WHERE p.category = ? AND substr(o.ordered_at, 1, 10) > ?
          AND substr(o.ordered_at, 1, 10) <= ?""", category, since, DAY.isoformat())
    got = audience(shop_url, store_url, audience="category", audience_category=category.upper(),
                   audience_days=60)
    assert got and got == bought
    with pytest.raises(DataError, match="write one of"):
        audience(shop_url, store_url, audience="category", audience_category="no-such")

    some = sorted(everyone)[:5]
    csv = tmp_path / "list.csv"
    csv.write_text("email,customer_id\nx@y.z,{}\n".format("\nx@y.z,".join(
        [*some, some[0], "NOT-A-CUSTOMER"])))
    assert main(["campaign", "upload-audience", "vip", str(csv), "--db", shop_url,
                 "--store", store_url]) == 0
    out = capsys.readouterr().out
    assert "5 customer(s) stored" in out and "1 id(s) not in the shop" in out
    assert audience(shop_url, store_url, audience="upload", audience_upload="vip") == set(some)
    with pytest.raises(DataError, match="upload-audience nobody"):
        audience(shop_url, store_url, audience="upload", audience_upload="nobody")
    assert main(["campaign", "show", "--store", store_url]) == 0
    assert "vip" in capsys.readouterr().out


def test_read_ids_shapes() -> None:
    assert read_ids("customer_id\nC1\n\nC2\n", "f") == ["C1", "C2"]
    assert read_ids("C1\nC2\n", "f") == ["C1", "C2"]
    assert read_ids("Name,Customer_ID\na,C1\nb,C2\n", "f") == ["C1", "C2"]
    with pytest.raises(DataError, match="customer_id header"):
        read_ids("a,b\n1,2\n", "f")
    with pytest.raises(DataError, match="empty"):
        read_ids("\n\n", "f")


def test_consent_is_matched_whatever_its_case_and_spaces(ingested: tuple[str, str]) -> None:
    """The consent rules read ``EXPRESS`` as express: so does the audience, or it would leave
    out customers the nightly run writes to."""
    shop_url, store_url = ingested
    everyone = audience(shop_url, store_url)
    changed = sorted(everyone)[:3]
    unwilling = sorted(shop_sql(shop_url, "SELECT customer_id FROM customers WHERE "
                                          "marketing_consent = 'none'"))[:1]
    with sqlite3.connect(shop_url.removeprefix("sqlite:///")) as db:
        for cid, value in zip([*changed, *unwilling], ["EXPRESS", " Implied ", "Express ", "NONE"],
                              strict=True):
            db.execute("UPDATE customers SET marketing_consent = ? WHERE customer_id = ?",
                       (value, cid))
    assert audience(shop_url, store_url) == everyone
