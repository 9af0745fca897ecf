"""One demo shop with ground truth for the signal tests (generated once per session)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from _support import DemoShops, RandomDaysShop

NIGHT = dt.date(2026, 11, 20)


@pytest.fixture(scope="session")
def demo(demo_shops: DemoShops) -> dict[str, object]:
    from tend.features.ingest import compute_from_shop
    from tend.shop.read import read_products

    url = demo_shops(customers=6000, seed=5, as_of=NIGHT)
    fs, _ = compute_from_shop(url, NIGHT)
    truth = pd.read_sql("SELECT * FROM demo_truth", url).set_index("customer_id")
    return {"url": url, "fs": fs, "products": read_products(url), "truth": truth}


@pytest.fixture
def random_days_shop() -> RandomDaysShop:
    """A shop where nothing is seasonal but the customers a test adds: the seasonal rule's
    background (the shop's own share of orders in a window is then about 12 %)."""
    from tend.features.compute import compute_feature_set

    def build(extra: dict[str, list[str]]) -> tuple[object, pd.DataFrame]:
        rng = np.random.default_rng(3)
        rows = []
        start = pd.Timestamp("2023-11-21", tz="UTC")
        for i in range(300):
            for d in rng.uniform(0, 3 * 365, size=4):
                rows.append((f"B{i}", start + pd.Timedelta(days=float(d))))
        for cid, days in extra.items():
            rows.extend((cid, pd.Timestamp(f"{d} 12:00", tz="UTC")) for d in days)
        orders = pd.DataFrame(rows, columns=["customer_id", "ordered_at"])
        orders["order_id"] = [f"O{i}" for i in range(len(orders))]
        orders["total"] = 20.0
        lines = pd.DataFrame({"order": range(len(orders)), "sku": "MUG", "quantity": 1})
        products = pd.DataFrame({"sku": ["MUG"], "name": ["Mug"], "category": ["home"],
                                 "price": [10.0], "service_interval_days": [np.nan],
                                 "replenish_days": [np.nan], "complements": [[]]})
        return compute_feature_set(orders, lines), products

    return build
