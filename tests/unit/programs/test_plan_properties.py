"""Property tests: 90 simulated nights of the demo shop never break a promise.

Hypothesis draws the rules (caps, cooldowns, holdout share, the newsletter's weekday) and the
events (customers unsubscribing, bouncing, complaining on some night); the nights then run
through the real ingest, plan and ledger on SQLite, and the ledger is checked afterwards:

- no customer ever exceeds a cap in any window, nor a program's cooldown;
- no suppressed or non-consenting customer ever receives a marketing message;
- rerunning a night claims nothing new.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from typing import Any

import pandas as pd
import pytest
from _support import copy_sqlite, mark_claimed_sent
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from tend import messages
from tend.config import ShopSettings
from tend.features import ingest
from tend.features.store import read_features
from tend.programs import plan
from tend.programs.consent import IMPLIED_CONSENT_DAYS, SUPPRESSION_SCOPE, is_valid_email
from tend.programs.registry import WEEKDAYS, parse_registry
from tend.shop import schema as s
from tend.store import bulk, ledger, migrate
from tend.store.db import connect
from tend.store.tables import contact_ledger, suppressions

LAST = dt.date(2026, 11, 20)
NIGHTS = 90
FIRST = LAST - dt.timedelta(days=NIGHTS - 1)
SETTINGS = ShopSettings.from_env({})

pytestmark = pytest.mark.demo_shop(customers=200, seed=5, as_of=LAST)


caps_strategy = st.lists(
    st.tuples(st.integers(1, 3), st.integers(2, 30)).map(
        lambda t: {"messages": t[0], "days": t[1]}),
    min_size=1, max_size=3,
)
events_strategy = st.lists(
    st.tuples(st.integers(0, NIGHTS - 1), st.integers(1, 200),
              st.sampled_from(["unsubscribed", "hard_bounce", "complaint", "spam_report"])),
    max_size=12,
)


def lapsed_after_60_days(store_url: str, shop_url: str, night: dt.date) -> pd.DataFrame:
    """A cheap stand-in for tend.signals: the invariants under test hold for any signal source."""
    f = read_features(store_url)
    last = pd.to_datetime(f["last_order_at"], utc=True).dt.date
    due = last + dt.timedelta(days=60)
    hit = due <= night
    return pd.DataFrame({
        "customer_id": f.loc[hit, "customer_id"], "signal": "lapsed", "score": 0.5,
        "due_date": due[hit], "valid_until": night + dt.timedelta(days=14),
        "reason": "no order for 60 days", "value": 1.0, "sku": None, "product_name": None,
        "detail": json.dumps({"days_since_last_order": 60, "orders_count": 1,
                              "last_order_date": "2026-01-01"}),
    })


@settings(max_examples=1, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@example(caps=[{"messages": 1, "days": 3}, {"messages": 2, "days": 7}],
         cooldown=30, holdout=0.2, weekday="monday",
         events=[(5, 7, "unsubscribed"), (20, 12, "hard_bounce"), (40, 30, "complaint")])
@given(caps=caps_strategy, cooldown=st.integers(0, 60), holdout=st.sampled_from([0.0, 0.3]),
       weekday=st.sampled_from(WEEKDAYS), events=events_strategy)
def test_ninety_nights_keep_every_promise(
    demo_shop: str, tmp_path_factory: pytest.TempPathFactory, caps: list[dict[str, int]],
    cooldown: int, holdout: float, weekday: str, events: list[tuple[int, int, str]],
) -> None:
    work = tmp_path_factory.mktemp("nights")
    shop_url = copy_sqlite(demo_shop, work / "shop.db")
    store_url = f"sqlite:///{work / 'store.db'}"
    migrate(store_url)
    reg = parse_registry({"caps": caps, "programs": [
        {"name": "winback", "signal": "lapsed", "template": "winback", "kind": "marketing",
         "priority": 60, "cooldown_days": cooldown, "validity_days": 10,
         "holdout_share": holdout},
        {"name": "care", "signal": "lapsed", "template": "winback", "kind": "service",
         "priority": 20, "cooldown_days": cooldown, "validity_days": 10},
        {"name": "newsletter", "signal": "newsletter", "schedule": {"weekly_on": weekday},
         "template": "winback", "kind": "marketing", "priority": 10, "cooldown_days": 0,
         "validity_days": 4},
    ]})
    renderer = messages.default_renderer(SETTINGS)
    suppressed_from: dict[str, tuple[dt.date, str]] = {}
    for i in range(NIGHTS):
        night = FIRST + dt.timedelta(days=i)
        for when, who, reason in events:
            if when == i:
                cid = f"C{who:06d}"
                suppressed_from.setdefault(cid, (night, reason))
                with connect(store_url).begin() as conn:
                    bulk.insert_ignore(conn, suppressions, [{
                        "customer_id": cid, "reason": reason, "source": "test",
                        "created_at": ledger.now()}])
        ingest.run_ingest(shop_url, store_url, night, f"i{i}")
        plan.plan_night(shop_url, store_url, night, f"p{i}", settings=SETTINGS,
                           renderer=renderer, secret="s", registry=reg,
                           detector=lapsed_after_60_days)
        if i % 15 == 7:  # rerun the night: nothing new may be claimed
            before = _ledger(store_url)
            plan.plan_night(shop_url, store_url, night, f"p{i}-again", settings=SETTINGS,
                               renderer=renderer, secret="s", registry=reg,
                               detector=lapsed_after_60_days)
            assert len(_ledger(store_url)) == len(before)
        mark_claimed_sent(store_url, night)

    sent = _ledger(store_url)
    assert len(sent) > 0
    _check_caps(sent, caps)
    _check_cooldowns(sent, {"winback": cooldown, "care": cooldown})
    _check_consent(sent, shop_url, suppressed_from)


def _ledger(store_url: str) -> pd.DataFrame:
    with connect(store_url).connect() as conn:
        df = pd.DataFrame(conn.execute(select(
            contact_ledger.c.customer_id, contact_ledger.c.program, contact_ledger.c.kind,
            contact_ledger.c.as_of, contact_ledger.c.status)).mappings().all())
    if len(df):
        df["as_of"] = pd.to_datetime(df["as_of"]).dt.date
    return df


def _check_caps(sent: pd.DataFrame, caps: list[dict[str, Any]]) -> None:
    marketing = sent.loc[sent["kind"] == "marketing"]
    for cid, rows in marketing.groupby("customer_id"):
        days = sorted(rows["as_of"])
        for cap in caps:
            for start in days:
                end = start + dt.timedelta(days=cap["days"] - 1)
                inside = sum(start <= d <= end for d in days)
                assert inside <= cap["messages"], (cid, cap, days)


def _check_cooldowns(sent: pd.DataFrame, cooldowns: dict[str, int]) -> None:
    for (cid, program), rows in sent.groupby(["customer_id", "program"]):
        days = sorted(rows["as_of"])
        for a, b in itertools.pairwise(days):
            assert (b - a).days >= cooldowns.get(program, 0), (cid, program, days)


def _check_consent(sent: pd.DataFrame, shop_url: str,
                   suppressed_from: dict[str, tuple[dt.date, str]]) -> None:
    with connect(shop_url).connect() as conn:
        cust = pd.DataFrame(conn.execute(select(
            s.customers.c.customer_id, s.customers.c.email, s.customers.c.marketing_consent,
            s.customers.c.unsubscribed_at)).mappings().all()).set_index("customer_id")
        orders = pd.DataFrame(conn.execute(select(
            s.orders.c.customer_id, s.orders.c.ordered_at)).mappings().all())
    orders["day"] = pd.to_datetime(orders["ordered_at"], utc=True).dt.date

    for r in sent.itertuples():
        c = cust.loc[r.customer_id]
        assert is_valid_email(c["email"]), r
        if r.customer_id in suppressed_from:
            since, reason = suppressed_from[r.customer_id]
            assert not (r.as_of >= since and r.kind in SUPPRESSION_SCOPE[reason]), (r, reason)
        if r.kind != "marketing":
            continue
        unsub = c["unsubscribed_at"]
        assert pd.isna(unsub) or pd.Timestamp(unsub).date() > r.as_of, r
        if c["marketing_consent"] == "express":
            continue
        assert c["marketing_consent"] == "implied", r
        before = orders.loc[(orders["customer_id"] == r.customer_id)
                            & (orders["day"] <= r.as_of), "day"]
        assert (r.as_of - before.max()).days <= IMPLIED_CONSENT_DAYS, r
