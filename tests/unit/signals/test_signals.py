"""Every signal against the demo's ground truth, the contract's shape, and table-driven cases."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from tend.features.compute import compute_feature_set
from tend.signals import KNOWN_SIGNALS, SIGNAL_COLUMNS, SeasonalParams, SignalParams, detect
from tend.signals.evaluation import checkup_quality, seasonal_quality
from tend.signals.seasonal import seasonal_customers

NIGHT = dt.date(2026, 11, 20)


@pytest.fixture(scope="module")
def signals(demo: dict) -> pd.DataFrame:
    return detect(demo["fs"], demo["products"], NIGHT)


def _report(name: str, precision: float, recall: float) -> None:
    print(f"\n{name}: precision {precision:.3f} recall {recall:.3f}")


def test_contract_shape(signals: pd.DataFrame) -> None:
    assert list(signals.columns) == SIGNAL_COLUMNS
    assert set(signals["signal"]) == set(KNOWN_SIGNALS)
    assert signals["score"].between(0, 1).all()
    assert (signals["valid_until"] >= NIGHT).all()
    assert (signals["due_date"] <= signals["valid_until"]).all()
    assert (signals["due_date"] <= NIGHT + dt.timedelta(days=SignalParams().horizon_days)).all()
    assert signals["reason"].str.len().min() > 10
    assert signals["value"].notna().all()
    for d in signals["detail"]:
        assert isinstance(json.loads(d), dict)
    lapsed = signals.loc[signals["signal"] == "lapsed", "detail"].map(json.loads)
    assert {"days_since_last_order", "orders_count", "last_order_date"} <= set(lapsed.iloc[0])
    assert not signals.duplicated(["customer_id", "signal", "sku"]).any()


def test_seasonal_customers_against_truth(demo: dict) -> None:
    """The issue's targets: precision 0.95 and recall 0.9 on a population where occasional
    customers outnumber seasonal ones nine to one (bench-targeting measures five seeds)."""
    truth = demo["truth"]
    s = seasonal_customers(demo["fs"], demo["products"]).set_index("customer_id")
    true = truth.index[truth["archetype"] == "seasonal"]
    hit = s.index.intersection(true)
    near = (s.loc[hit, "season_doy"] - truth.loc[hit, "seasonal_doy"]).abs() <= 10
    q = seasonal_quality(demo["fs"], demo["products"], truth)
    _report("seasonal customers", q["precision"], q["recall"])
    print(f"seasonal false alarms among occasional customers of two years or more: "
          f"{q['false_alarm_occasional']:.3f}")
    assert q["precision"] >= 0.95 and q["recall"] >= 0.9
    assert q["false_alarm_occasional"] <= SeasonalParams().max_chance
    assert near.mean() >= 0.95


def test_seasonal_reminders_before_the_gift_season(signals: pd.DataFrame, demo: dict) -> None:
    truth = demo["truth"]
    got = signals.loc[signals["signal"] == "seasonal"]
    gifts = truth.index[(truth["archetype"] == "seasonal") & (truth["season"] == "gifts")]
    precision = truth.loc[got["customer_id"], "archetype"].eq("seasonal").mean()
    recall = gifts.isin(got["customer_id"]).mean()
    _report("seasonal reminders (gift season)", precision, recall)
    assert precision >= 0.9 and recall >= 0.9
    detail = got["detail"].map(json.loads)
    assert (detail.map(lambda d: d["window_start"]) > str(NIGHT - dt.timedelta(days=30))).all()


def test_christmas_alone_does_not_make_a_season() -> None:
    """A shop where December is almost half of all orders: a customer who only buys coffee in
    December does not stand out against it (and coffee sells like everything else); a
    customer who only buys gifts in December does (gifts sell in December only)."""
    rows, lines = [], []

    def order(cid: str, when: str, sku: str) -> None:
        rows.append((cid, f"O{len(rows)}", when, 20.0))
        lines.append((len(lines), sku, 1))

    for i in range(100):  # regulars: coffee every month, and a lot more in December
        for year in (2023, 2024, 2025):
            for month in range(1, 13):
                order(f"R{i}", f"{year}-{month:02d}-10 12:00", "COFFEE")
            for day in range(11, 19):
                order(f"R{i}", f"{year}-12-{day:02d} 12:00", "COFFEE")
    for year in (2023, 2024, 2025):
        for day in (5, 12, 19):
            order("XMAS-COFFEE", f"{year}-12-{day:02d} 12:00", "COFFEE")
            order("XMAS-GIFTS", f"{year}-12-{day:02d} 12:00", "GIFT")
        for i in range(30):  # other gift buyers: gifts only sell in December
            order(f"G{i}", f"{year}-12-{10 + i % 5:02d} 12:00", "GIFT")
    orders = pd.DataFrame(rows, columns=["customer_id", "order_id", "ordered_at", "total"])
    orders["ordered_at"] = pd.to_datetime(orders["ordered_at"], utc=True)
    fs = compute_feature_set(orders, pd.DataFrame(lines, columns=["order", "sku", "quantity"]))
    products = pd.DataFrame({"sku": ["COFFEE", "GIFT"], "name": ["Coffee", "Gift box"],
                             "category": ["coffee", "gifts"], "price": [10.0, 30.0],
                             "service_interval_days": [np.nan, np.nan],
                             "replenish_days": [np.nan, np.nan], "complements": [[], []]})
    c = fs.customers.set_index("customer_id")
    assert c.loc["XMAS-COFFEE", "season_r"] > 0.95  # concentrated, every year ...
    seasonal = set(seasonal_customers(fs, products)["customer_id"])
    assert "XMAS-COFFEE" not in seasonal  # ... but only as much as the shop is
    assert "XMAS-GIFTS" in seasonal


def _pairs(df: pd.DataFrame, signal: str) -> set[tuple[str, str]]:
    got = df.loc[df["signal"] == signal]
    return set(zip(got["customer_id"], got["sku"], strict=True))


def _recall_of_due(got: set[tuple[str, str]], truth: pd.DataFrame, sku_column: str, *,
                   before: int, after: int) -> float:
    """The share of the truth's (customer, sku) pairs due from ``before`` days before the night
    to ``after`` days after it that the signal found."""
    nxt = pd.to_datetime(truth["next_due_on"])
    due = truth.loc[(nxt >= pd.Timestamp(NIGHT - dt.timedelta(days=before)))
                    & (nxt <= pd.Timestamp(NIGHT + dt.timedelta(days=after)))]
    return float(np.mean([(c, k) in got for c, k in zip(due.index, due[sku_column],
                                                        strict=True)]))


def test_replenishment_against_truth(signals: pd.DataFrame, demo: dict) -> None:
    truth = demo["truth"]
    rep = truth.loc[truth["archetype"] == "replenisher"]
    regular = truth.loc[truth["archetype"].isin(["regular", "loyal"]) & ~truth["lapsed"]
                        .astype(bool)]
    rebuys = set(zip(rep.index, rep["replenish_sku"], strict=True)) | {
        (c, k) for c, f in zip(regular.index, regular["favourite_skus"], strict=True)
        for k in (f or "").split()}
    got = _pairs(signals, "replenish")
    precision = len(got & rebuys) / len(got)
    recall = _recall_of_due(got, rep, "replenish_sku", before=3, after=10)
    _report("replenish", precision, recall)
    # Occasional and one-time buyers of a consumable are reminded too (a first purchase is
    # all the shop knows): whether they re-buy on time is nobody's pattern, so the truth can
    # only confirm the reminders to customers who have one.
    patterned = {(c, k) for c, k in got
                 if truth.loc[c, "archetype"] not in ("occasional", "one_time")}
    _report("replenish (customers with a pattern)", len(patterned & rebuys) / len(patterned),
            recall)
    assert len(patterned & rebuys) / len(patterned) >= 0.7 and recall >= 0.6
    assert precision >= 0.4


def test_checkups_against_truth(signals: pd.DataFrame, demo: dict) -> None:
    precision, recall = checkup_quality(signals, demo["truth"], NIGHT)
    _report("checkup", precision, recall)
    assert precision >= 0.9 and recall >= 0.7


def test_loyalty_signals_match_a_brute_force_count(signals: pd.DataFrame, demo: dict) -> None:
    """Milestones are rules, so the truth is the rule applied to the raw orders."""
    from tend.shop.read import read_orders

    orders, _ = read_orders(demo["url"], NIGHT)
    orders = orders.sort_values("ordered_at")
    day = orders["ordered_at"].dt.tz_convert(None).dt.floor("D")
    per = orders.assign(day=day).groupby("customer_id").agg(
        n=("order_id", "size"), last=("day", "max"), first=("day", "min"))
    recent = (pd.Timestamp(NIGHT) - per["last"]).dt.days <= 7
    nth = set(per.index[(per["n"] % 10 == 0) & recent])
    first = set(per.index[(per["n"] == 1) & (per["first"] >= pd.Timestamp(NIGHT) -
                                             pd.Timedelta(days=1))])
    for name, expected in (("loyalty_nth_order", nth), ("first_purchase", first)):
        got = set(signals.loc[signals["signal"] == name, "customer_id"])
        _report(name, len(got & expected) / max(len(got), 1),
                len(got & expected) / max(len(expected), 1))
        assert got == expected and got


def test_cross_sell_only_suggests_fitting_products(signals: pd.DataFrame, demo: dict) -> None:
    products = demo["products"].set_index("sku")
    got = signals.loc[signals["signal"] == "cross_sell"]
    assert len(got)
    skus = demo["fs"].skus
    owned = set(zip(skus["customer_id"], skus["sku"], strict=True))
    for cid, d in zip(got["customer_id"], got["detail"].map(json.loads), strict=True):
        a, b = d["because_sku"], d["complement_sku"]
        listed = b in products.loc[a, "complements"]
        assert listed or products.loc[a, "category"] == products.loc[b, "category"]
        assert (cid, b) not in owned


def _one(orders: list[tuple[str, str, float]], lines: list[tuple[int, str, int]] | None = None,
         products: pd.DataFrame | None = None, night: dt.date = NIGHT) -> pd.DataFrame:
    o = pd.DataFrame([("C1", f"O{i}", ts, t) for i, (ts, _, t) in enumerate(orders)],
                     columns=["customer_id", "order_id", "ordered_at", "total"])
    o["ordered_at"] = pd.to_datetime(o["ordered_at"], utc=True)
    ln = pd.DataFrame(lines or [(i, sku, 1) for i, (_, sku, _) in enumerate(orders)],
                      columns=["order", "sku", "quantity"])
    return detect(compute_feature_set(o, ln), products if products is not None else PRODUCTS,
                  night)


PRODUCTS = pd.DataFrame({
    "sku": ["BEANS", "BOILER", "MUG", "GRINDER"],
    "name": ["Beans", "Boiler service", "Mug", "Grinder"],
    "category": ["coffee", "heating", "home", "coffee"],
    "price": [20.0, 190.0, 10.0, 120.0],
    "service_interval_days": [np.nan, 365, np.nan, np.nan],
    "replenish_days": [30, np.nan, np.nan, np.nan],
    "complements": [["GRINDER"], [], [], []],
})


@pytest.mark.parametrize(
    ("orders", "signal", "expected"),
    [
        # replenish: 1 unit of a 30-day product bought 25 days ago -> due in 5, lead 7
        ([("2026-10-26 10:00", "BEANS", 20.0)], "replenish", True),
        ([("2026-09-15 10:00", "BEANS", 20.0)], "replenish", False),  # past the grace
        ([("2026-11-15 10:00", "BEANS", 20.0)], "replenish", False),  # not yet
        # check-up: a yearly service bought 350 days ago is due in 15 (lead 21)
        ([("2025-12-05 10:00", "BOILER", 190.0)], "checkup", True),
        ([("2025-12-05 10:00", "BOILER", 190.0), ("2026-11-01 10:00", "BOILER", 190.0)],
         "checkup", False),  # already bought again
        ([("2026-06-01 10:00", "BOILER", 190.0)], "checkup", False),
        # first purchase: thanked within a day
        ([("2026-11-20 09:00", "MUG", 10.0)], "first_purchase", True),
        ([("2026-11-17 09:00", "MUG", 10.0)], "first_purchase", False),
        # survey: the last order is 14 days old
        ([("2026-11-06 09:00", "MUG", 10.0)], "survey", True),
        ([("2026-10-01 09:00", "MUG", 10.0)], "survey", False),
        # tier: 400 spent before, 150 on the last visit -> silver (500)
        ([("2026-09-01 09:00", "GRINDER", 400.0), ("2026-11-18 09:00", "MUG", 150.0)],
         "loyalty_tier", True),
        ([("2026-09-01 09:00", "GRINDER", 600.0), ("2026-11-18 09:00", "MUG", 150.0)],
         "loyalty_tier", False),
        # anniversary: first order 2 years ago on 22 November, still a customer
        ([("2024-11-22 09:00", "MUG", 10.0), ("2026-05-01 09:00", "MUG", 10.0)],
         "anniversary", True),
        ([("2024-11-22 09:00", "MUG", 10.0)], "anniversary", False),  # gone for two years
        # cross-sell: bought beans 5 days ago, never the grinder (a listed complement)
        ([("2026-11-15 09:00", "BEANS", 20.0)], "cross_sell", True),
        ([("2026-11-15 09:00", "BEANS", 20.0), ("2026-01-15 09:00", "GRINDER", 120.0)],
         "cross_sell", False),
    ],
)
def test_detectors_table(orders: list, signal: str, expected: bool) -> None:
    out = _one(orders)
    assert (signal in set(out["signal"])) is expected


def test_nth_order_detail() -> None:
    orders = [(f"2026-{m:02d}-01 10:00", "MUG", 10.0) for m in range(2, 11)]
    orders.append(("2026-11-19 10:00", "MUG", 10.0))
    got = _one(orders)
    row = got.loc[got["signal"] == "loyalty_nth_order"].iloc[0]
    assert json.loads(row["detail"]) == {"nth": 10}
    assert "10th order" in row["reason"]


def test_detect_all_refuses_features_of_another_night(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tend.errors import DataError
    from tend.signals import detect_all
    from tend.store import migrate

    store = f"sqlite:///{tmp_path / 'store.db'}"
    migrate(store)
    with pytest.raises(DataError, match="tend ingest --as-of"):
        detect_all(store, "sqlite:///unused.db", NIGHT)


@pytest.mark.parametrize(("quantity", "replenish", "service"), [
    (2**31 - 1, 30, 365), (1, 10**9, 10**9), (10**6, 3650, 3650), (1, np.inf, np.nan)])
def test_absurd_quantities_and_intervals_never_overflow_a_date(
        quantity: int, replenish: float, service: float) -> None:
    """Whatever reached the features (an older store, a shop read before the bounds), the
    signals' date arithmetic stays inside the calendar and such a purchase is never due."""
    products = PRODUCTS.assign(replenish_days=[replenish, np.nan, np.nan, np.nan],
                               service_interval_days=[np.nan, service, np.nan, np.nan])
    out = _one([("1970-01-02 10:00", "BEANS", 20.0), ("2026-11-01 10:00", "BOILER", 190.0)],
               [(0, "BEANS", quantity), (1, "BOILER", quantity)], products)
    assert not {"replenish", "checkup"} & set(out["signal"])
