"""The nightly KPI step: recompute the months whose responses may still change, and store them.

A month's figures keep moving until the attribution windows of its last nights close, so each
night recomputes every month from the one the longest window reaches back into, with the
orders known on that night, and replaces their rows in the ``kpi`` table.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd

from tend.programs.registry import Registry, load_registry
from tend.results.lift import compute
from tend.store import kpi as kpi_store
from tend.store.db import connect


def months_to_refresh(as_of: dt.date, longest_window: int) -> tuple[dt.date, list[str]]:
    """The first night to recompute (the first of the month the longest window reaches back
    into) and the months from it to ``as_of``'s."""
    first = (as_of - dt.timedelta(days=longest_window)).replace(day=1)
    months = pd.period_range(first, as_of, freq="M").strftime("%Y-%m").tolist()
    return first, months


def store_kpis(shop_url: str, store_url: str, as_of: dt.date,
               registry: Registry | None = None) -> int:
    """Recompute and store the results of the months still open on night ``as_of``; the
    number of rows written."""
    registry = registry or load_registry()
    longest = max((p.window_days for p in registry.programs), default=7)
    first, months = months_to_refresh(as_of, longest)
    results = compute(shop_url, store_url, first, as_of, until=as_of, registry=registry)
    with connect(store_url).begin() as conn:
        return kpi_store.replace_months(conn, results.months, months, as_of=as_of,
                                        computed_at=dt.datetime.now(dt.UTC))
