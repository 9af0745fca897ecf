"""One demo shop with ground truth for the signal tests (generated once per session)."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from _support import DemoShops

NIGHT = dt.date(2026, 11, 20)


@pytest.fixture(scope="session")
def demo(demo_shops: DemoShops) -> dict[str, object]:
    from tend.features.ingest import compute_from_shop
    from tend.shop.read import read_products

    url = demo_shops(customers=6000, seed=5, as_of=NIGHT)
    fs, _ = compute_from_shop(url, NIGHT)
    truth = pd.read_sql("SELECT * FROM demo_truth", url).set_index("customer_id")
    return {"url": url, "fs": fs, "products": read_products(url), "truth": truth}
