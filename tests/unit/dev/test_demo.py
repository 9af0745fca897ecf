"""The demo shop is what every later signal test measures against, so it must be exactly
reproducible, internally consistent (totals, time window, references) and as messy as a real
shop in the ways Tend has to cope with (invalid emails, missing names, two languages)."""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.dialects import sqlite

from tend.dev.demo import DemoSummary, _sqlite_time, _ts, demo_truth, generate_demo_shop
from tend.errors import ConfigError
from tend.shop import schema as shop_schema

AS_OF = dt.date(2025, 6, 30)
SEED = 11
TABLES = (shop_schema.customers, shop_schema.products, shop_schema.orders,
          shop_schema.order_lines, demo_truth)
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _normal(value: Any) -> Any:
    """Compare values across databases: SQLite gives naive UTC datetimes, PostgreSQL aware."""
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None) if value.tzinfo is None else value.astimezone(
            dt.UTC).replace(tzinfo=None)
    if isinstance(value, float):
        return Decimal(repr(value))
    return value


def dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            # Sorted here, not in SQL: PostgreSQL collations order "-" unlike SQLite.
            return {
                t.name: sorted(
                    (tuple(_normal(v) for v in row) for row in conn.execute(select(t))),
                    key=lambda r: tuple((v is None, str(v)) for v in r),
                )
                for t in TABLES
            }
    finally:
        engine.dispose()


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One 1,000-customer shop shared by the read-only checks."""
    url = sqlite_url(tmp_path_factory.mktemp("demo") / "shop.db")
    summary = generate_demo_shop(url, customers=1000, seed=SEED, as_of=AS_OF)
    return {"url": url, "summary": summary, "rows": dump(url)}


def rows_as_dicts(shop: dict[str, Any], table: str) -> list[dict[str, Any]]:
    tbl = next(t for t in TABLES if t.name == table)
    keys = [c.key for c in tbl.columns]
    return [dict(zip(keys, r, strict=True)) for r in shop["rows"][table]]


# --- determinism ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[Any, ...]]]:
    url = sqlite_url(tmp_path_factory.mktemp("ref") / "ref.db")
    generate_demo_shop(url, customers=250, seed=SEED, as_of=AS_OF, chunk_customers=5000)
    return dump(url)


@pytest.mark.parametrize("chunk", [1, 37, 250, 10_000])
def test_same_seed_gives_same_rows_whatever_the_chunk_size(
    tmp_path: Path, reference: dict[str, list[tuple[Any, ...]]], chunk: int
) -> None:
    url = sqlite_url(tmp_path / "shop.db")
    generate_demo_shop(url, customers=250, seed=SEED, as_of=AS_OF, chunk_customers=chunk)
    assert dump(url) == reference


def test_rerun_into_the_same_database_replaces_rows(
    tmp_path: Path, reference: dict[str, list[tuple[Any, ...]]]
) -> None:
    url = sqlite_url(tmp_path / "shop.db")
    generate_demo_shop(url, customers=40, seed=SEED + 1, as_of=AS_OF)
    generate_demo_shop(url, customers=250, seed=SEED, as_of=AS_OF)
    assert dump(url) == reference


def test_a_different_seed_gives_a_different_shop(
    tmp_path: Path, reference: dict[str, list[tuple[Any, ...]]]
) -> None:
    url = sqlite_url(tmp_path / "shop.db")
    generate_demo_shop(url, customers=250, seed=SEED + 1, as_of=AS_OF)
    other = dump(url)
    assert other["customers"] != reference["customers"]
    assert other["products"] == reference["products"]


def test_a_smaller_shop_is_a_prefix_of_a_bigger_one(
    tmp_path: Path, reference: dict[str, list[tuple[Any, ...]]]
) -> None:
    url = sqlite_url(tmp_path / "shop.db")
    generate_demo_shop(url, customers=60, seed=SEED, as_of=AS_OF)
    small = dump(url)
    for table, rows in small.items():
        assert set(rows) <= set(reference[table]), table


# --- consistency ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("as_of", "years"),
    [(AS_OF, 3), (dt.date(2024, 2, 29), 1), (dt.date(2023, 12, 31), 2)],
)
def test_orders_stay_inside_the_window(tmp_path: Path, as_of: dt.date, years: int) -> None:
    url = sqlite_url(tmp_path / "shop.db")
    summary = generate_demo_shop(url, customers=300, seed=5, as_of=as_of, years=years)
    ordered = [r[2] for r in dump(url)["orders"]]
    assert len(ordered) == summary.orders > 300
    end = dt.datetime.combine(as_of, dt.time(23, 59, 59))
    start = dt.datetime.combine(as_of, dt.time()) - dt.timedelta(days=366 * years)
    assert max(ordered) <= end
    assert min(ordered) >= start
    assert max(ordered) >= end - dt.timedelta(days=3)  # the window is used up to as_of


def test_timestamps_are_written_as_utc(shop: dict[str, Any]) -> None:
    engine = create_engine(shop["url"])
    with engine.connect() as conn:
        raw = conn.execute(text("SELECT ordered_at FROM orders LIMIT 1")).scalar_one()
    engine.dispose()
    # SQLAlchemy's SQLite format: no offset, the value is UTC (tend.shop.read reads it as such).
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.000000", raw)


@pytest.mark.parametrize("epoch", [0, 59, 86_399, 951_782_400, 1_719_791_999, 4_102_444_800])
def test_the_fast_sqlite_path_writes_what_sqlalchemy_would(epoch: int) -> None:
    dialect = sqlite.dialect()
    process = shop_schema.orders.c.ordered_at.type.dialect_impl(dialect).bind_processor(dialect)
    assert process is not None
    assert _sqlite_time(epoch) == process(_ts(epoch))


def test_indexes_are_rebuilt_after_the_bulk_load(shop: dict[str, Any]) -> None:
    engine = create_engine(shop["url"])
    insp = inspect(engine)
    names = {ix["name"] for t in ("orders", "order_lines") for ix in insp.get_indexes(t)}
    engine.dispose()
    assert names == {ix.name for t in (shop_schema.orders, shop_schema.order_lines)
                     for ix in t.indexes}


def test_order_totals_match_their_lines(shop: dict[str, Any]) -> None:
    sums: Counter[str] = Counter()
    skus_per_order: dict[str, list[str]] = {}
    for order_id, sku, quantity, unit_price in shop["rows"]["order_lines"]:
        sums[order_id] += quantity * Decimal(unit_price)
        skus_per_order.setdefault(order_id, []).append(sku)
    orders = rows_as_dicts(shop, "orders")
    assert len(orders) == shop["summary"].orders
    for o in orders:
        assert Decimal(o["total"]) == sums[o["order_id"]] > 0, o
        assert o["currency"] == "CAD"
    assert all(len(s) == len(set(s)) for s in skus_per_order.values())
    assert set(skus_per_order) == {o["order_id"] for o in orders}


def test_ids_and_references(shop: dict[str, Any]) -> None:
    customers = rows_as_dicts(shop, "customers")
    orders = rows_as_dicts(shop, "orders")
    skus = {p[0] for p in shop["rows"]["products"]}
    assert [c["customer_id"] for c in customers] == [f"C{n:06d}" for n in range(1, 1001)]
    assert sorted(o["order_id"] for o in orders) == [
        f"O{n:07d}" for n in range(1, len(orders) + 1)]
    assert {o["customer_id"] for o in orders} == {c["customer_id"] for c in customers}
    assert {line[1] for line in shop["rows"]["order_lines"]} <= skus
    for p in rows_as_dicts(shop, "products"):
        assert set((p["complements"] or "").split()) <= skus


def test_catalogue(shop: dict[str, Any]) -> None:
    products = rows_as_dicts(shop, "products")
    assert 30 <= len(products) <= 60
    categories = {p["category"] for p in products}
    assert {"coffee", "garden", "heating", "gifts", "car", "dental", "home"} <= categories
    assert any(p["replenish_days"] == 30 and p["category"] == "coffee" for p in products)
    assert any(p["service_interval_days"] == 365 and p["category"] == "heating"
               for p in products)
    assert all(Decimal(p["price"]) > 0 for p in products)


def test_created_and_consent_come_before_the_first_order(shop: dict[str, Any]) -> None:
    first: dict[str, dt.datetime] = {}
    for o in rows_as_dicts(shop, "orders"):
        first[o["customer_id"]] = min(first.get(o["customer_id"], o["ordered_at"]),
                                      o["ordered_at"])
    end = dt.datetime.combine(AS_OF, dt.time(23, 59, 59))
    for c in rows_as_dicts(shop, "customers"):
        assert c["created_at"] < first[c["customer_id"]]
        if c["marketing_consent"] == "none":
            assert c["consent_at"] is None
        elif c["marketing_consent"] == "implied":  # from the purchase
            assert c["consent_at"] == first[c["customer_id"]]
        else:
            assert c["created_at"] <= c["consent_at"] <= first[c["customer_id"]]
        if c["unsubscribed_at"] is not None:
            assert c["created_at"] <= c["unsubscribed_at"] <= end


# --- realism -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("archetype", "share"),
    [("occasional", 0.52), ("one_time", 0.24), ("regular", 0.04), ("lapsed", 0.03),
     ("seasonal", 0.06), ("replenisher", 0.04), ("service", 0.04), ("loyal", 0.03)],
)
def test_archetype_mix(shop: dict[str, Any], archetype: str, share: float) -> None:
    counts = Counter(t["archetype"] for t in rows_as_dicts(shop, "demo_truth"))
    assert abs(counts[archetype] / 1000 - share) < 0.04, counts


def test_most_customers_order_once_and_order_values_vary_by_customer(
        shop: dict[str, Any]) -> None:
    """As in real retail logs: more than half the customers never order again, and the
    occasional customers' order values (gamma-gamma) differ from one customer to the next far
    more than chance would make the averages of one customer's orders differ."""
    history = orders_by_customer(shop)
    assert sum(len(o) == 1 for o in history.values()) / len(history) > 0.5
    kinds = {t["customer_id"]: t["archetype"] for t in rows_as_dicts(shop, "demo_truth")}
    means, within = [], []
    for cid, orders in history.items():
        if kinds[cid] == "occasional" and len(orders) >= 3:
            values = [float(o["total"]) for o in orders]
            m = sum(values) / len(values)
            means.append(m)
            within.append(sum((v - m) ** 2 for v in values) / (len(values) - 1) / len(values))
    grand = sum(means) / len(means)
    between = sum((m - grand) ** 2 for m in means) / (len(means) - 1)
    assert len(means) >= 30
    assert between > 2 * sum(within) / len(within)  # customers differ, not only orders
    assert 40 <= grand <= 200


def test_occasional_customers_follow_their_own_poisson_process() -> None:
    """BG/NBD's mixture: heterogeneous rates, a drop-out after repeat orders only; the truth
    says who dropped out (their last order is their churn day) and who is still active."""
    from tend.dev.demo import _generate, _window

    w = _window(AS_OF, 3)
    seen = Counter()
    for i in range(3000):
        c = _generate(i, SEED, w)
        t = c.truth
        if t["archetype"] == "occasional":
            days = sorted({o[0] // 86400 for o in c.orders})
            seen["occasional"] += 1
            seen["repeat"] += len(days) > 1
            if t["lapsed"]:
                assert len(c.orders) >= 2  # drop-out only after a repeat order
                assert t["churned_at"] == max(_ts(o[0]).date() for o in c.orders)
            else:
                assert t["churned_at"] is None
                assert t["next_due_on"] is None or t["next_due_on"] > AS_OF
        elif t["archetype"] == "one_time":
            assert len(c.orders) == 1 and t["lapsed"]
    # CDNOW's mixture: about half of a three-year cohort makes a repeat purchase
    assert 0.35 <= seen["repeat"] / seen["occasional"] <= 0.6


def orders_by_customer(shop: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    lines: dict[str, list[str]] = {}
    for order_id, sku, *_ in shop["rows"]["order_lines"]:
        lines.setdefault(order_id, []).append(sku)
    out: dict[str, list[dict[str, Any]]] = {}
    for o in rows_as_dicts(shop, "orders"):
        out.setdefault(o["customer_id"], []).append({**o, "skus": lines[o["order_id"]]})
    for orders in out.values():
        orders.sort(key=lambda o: o["ordered_at"])
    return out


def test_behaviour_matches_the_truth(shop: dict[str, Any]) -> None:
    history = orders_by_customer(shop)
    truth = rows_as_dicts(shop, "demo_truth")
    assert [t["customer_id"] for t in truth] == sorted(history)
    for t in truth:
        orders = history[t["customer_id"]]
        last = orders[-1]["ordered_at"].date()
        kind = t["archetype"]
        if kind == "one_time":
            assert len(orders) == 1
            assert t["next_due_on"] is None and t["cadence_days"] is None
        elif kind == "occasional":
            assert t["next_due_on"] is None or t["next_due_on"] > AS_OF
            assert t["cadence_days"] >= 1
        else:
            assert t["next_due_on"] is not None and t["next_due_on"] > last
        if kind not in ("occasional", "one_time"):
            assert t["lapsed"] == (kind == "lapsed")
        if kind == "lapsed":
            assert 90 <= (AS_OF - t["churned_at"]).days <= 366
            assert last <= t["churned_at"]
            assert len(orders) >= 3
        elif kind not in ("occasional", "one_time"):
            assert t["churned_at"] is None
        if kind in ("regular", "loyal"):
            assert t["next_due_on"] > AS_OF
            assert 10 <= t["cadence_days"] <= 60
        if kind == "loyal":
            assert len(orders) >= 20
        if kind == "replenisher":
            assert all(t["replenish_sku"] in o["skus"] for o in orders)
        if kind == "service":
            assert all(t["service_sku"] in o["skus"] for o in orders)
        if kind == "seasonal":
            assert t["season"] in ("gifts", "garden", "heating")
            for o in orders:
                doy = o["ordered_at"].timetuple().tm_yday
                gap = abs(doy - t["seasonal_doy"])
                assert min(gap, 365 - gap) <= 14, (t, o)


def test_lapsed_customers_are_detectable(shop: dict[str, Any]) -> None:
    """A lapsed regular's silence is long compared with their own cadence."""
    history = orders_by_customer(shop)
    for t in rows_as_dicts(shop, "demo_truth"):
        if t["archetype"] == "lapsed":
            last = history[t["customer_id"]][-1]["ordered_at"].date()
            assert (AS_OF - last).days >= 90 > 0.5 * t["cadence_days"]


def test_people_are_diverse_and_messy(shop: dict[str, Any]) -> None:
    customers = rows_as_dicts(shop, "customers")
    truth = {t["customer_id"]: t for t in rows_as_dicts(shop, "demo_truth")}
    locales = Counter(c["locale"] for c in customers)
    assert set(locales) == {"en", "fr"}
    assert 0.20 <= locales["fr"] / 1000 <= 0.30
    fr_zones = Counter(c["timezone"] for c in customers if c["locale"] == "fr")
    assert (fr_zones["America/Montreal"] + fr_zones["Europe/Paris"]) / locales["fr"] > 0.85
    assert len({c["timezone"] for c in customers if c["locale"] == "en"}) >= 5
    consent = Counter(c["marketing_consent"] for c in customers)
    assert set(consent) == set(shop_schema.CONSENT_VALUES)
    assert consent["express"] > consent["implied"] > consent["none"] > 0

    emails = [c["email"] for c in customers]
    assert len(set(emails)) == len(emails)
    invalid = [c for c in customers if not EMAIL.match(c["email"])]
    assert 1 <= len(invalid) <= 25
    assert {c["customer_id"] for c in invalid} == {
        k for k, t in truth.items() if not t["email_valid"]}
    for email in emails:
        if EMAIL.match(email):
            assert email.split("@")[1] in ("example.com", "example.org", "example.net")
            assert re.fullmatch(r"[a-z-]+\.[a-z-]+\.\d+", email.split("@")[0])
    unsubscribed = [c for c in customers if c["unsubscribed_at"] is not None]
    assert 5 <= len(unsubscribed) <= 40
    nameless = [c for c in customers if not c["first_name"]]
    assert 10 <= len(nameless) <= 50
    assert {c["first_name"] for c in nameless} == {None, ""}
    assert any("é" in (c["first_name"] or "") for c in customers)


def test_summary_lines(shop: dict[str, Any]) -> None:
    summary: DemoSummary = shop["summary"]
    lines = summary.lines()
    assert [line.split()[0] for line in lines] == [
        "customers", "products", "orders", "order_lines"]
    assert lines[0].split()[1] == "1,000"
    assert lines[2].split()[1] == f"{summary.orders:,}"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"customers": -1}, "customers must be 0 or more"),
        ({"years": 0}, "years must be at least 1"),
        ({"chunk_customers": 0}, "chunk_customers must be at least 1"),
    ],
)
def test_bad_arguments_say_what_to_pass(
    tmp_path: Path, kwargs: dict[str, int], message: str
) -> None:
    args: dict[str, Any] = {"customers": 10, "seed": 1, "as_of": AS_OF, **kwargs}
    with pytest.raises(ConfigError, match=message):
        generate_demo_shop(sqlite_url(tmp_path / "shop.db"), **args)


def test_a_bad_url_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sqlite:///"):
        generate_demo_shop("nonsense://", customers=1, seed=1, as_of=AS_OF)


# --- PostgreSQL ----------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_gives_the_same_shop_as_sqlite(
    pg_schema_url: str, reference: dict[str, list[tuple[Any, ...]]]
) -> None:
    summary = generate_demo_shop(pg_schema_url, customers=250, seed=SEED, as_of=AS_OF,
                                 chunk_customers=100)
    assert summary.customers == 250
    assert dump(pg_schema_url) == reference
    generate_demo_shop(pg_schema_url, customers=250, seed=SEED, as_of=AS_OF)  # rerun: truncates
    assert dump(pg_schema_url) == reference
    engine = create_engine(pg_schema_url)
    with engine.connect() as conn:
        ordered_at = conn.execute(select(shop_schema.orders.c.ordered_at).limit(1)).scalar_one()
    engine.dispose()
    assert ordered_at.utcoffset() == dt.timedelta(0)
