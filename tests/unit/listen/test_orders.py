"""Order events: their JSON, publishing to the real Redis, and deciding the event-driven
programs for the events' customers under the nightly run's rules and ledger keys."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid

import pytest
from _support import add_first_order, require_redis, shop_settings
from _support import plan_test_night as night
from sqlalchemy import func, select

from tend import messages
from tend.errors import DataError
from tend.listen import orders
from tend.programs.registry import load_registry
from tend.store.db import connect
from tend.store.tables import contact_ledger

DAY = dt.date(2026, 11, 18)
AT = dt.datetime(2026, 11, 18, 10, 14, 3, tzinfo=dt.UTC)

pytestmark = pytest.mark.demo_shop(customers=120, seed=5, as_of=DAY)

GOOD = {"type": "order.placed", "order_id": "O-1", "customer_id": "C-1",
        "ordered_at": "2026-11-18T10:14:03Z", "total": "84.50", "currency": "CAD",
        "lines": [{"sku": "FILTER-01", "quantity": 2}]}


def test_an_event_round_trips_through_its_json() -> None:
    event = orders.parse_event(json.dumps(GOOD))
    assert event == orders.OrderEvent("O-1", "C-1", AT, "84.50", "CAD", (("FILTER-01", 2),))
    assert orders.parse_event(event.to_json()) == event
    assert json.loads(event.to_json()) == GOOD
    minimal = orders.parse_event(b'{"order_id": 7, "customer_id": "C-1", '
                                 b'"ordered_at": "2026-11-18T11:14:03+01:00"}')
    assert (minimal.order_id, minimal.ordered_at, minimal.lines) == ("7", AT, ())


@pytest.mark.parametrize(("data", "says"), [
    ("{not json", "not JSON"),
    (b"\xff\xfe", "not UTF-8"),
    ("[1, 2]", "JSON object"),
    (json.dumps({**GOOD, "order_id": ""}), "order_id"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "customer_id"}), "customer_id"),
    (json.dumps({**GOOD, "ordered_at": "yesterday"}), "ISO 8601"),
    (json.dumps({**GOOD, "ordered_at": "2026-11-18T10:14:03"}), "no timezone"),
    # past the last datetime once in UTC (OverflowError): one event, not the whole run
    (json.dumps({**GOOD, "ordered_at": "9999-12-31T23:00:00-05:00"}), "outside 1970-01-01"),
    (json.dumps({**GOOD, "ordered_at": "0001-01-01T00:00:00+05:00"}), "outside 1970-01-01"),
    (json.dumps({**GOOD, "type": "order.cancelled"}), "order.placed"),
    (json.dumps({**GOOD, "email": "a@b.c"}), "unknown fields email"),
    (json.dumps({**GOOD, "lines": [{"sku": "X", "quantity": "two"}]}), "lines"),
    (json.dumps({**GOOD, "total": {"amount": 1}}), "total"),
    ("x" * (orders.MAX_EVENT_BYTES + 1), "over"),
])
def test_a_bad_event_is_a_data_error_that_says_what_is_wrong(data: str | bytes,
                                                             says: str) -> None:
    with pytest.raises(DataError, match=says):
        orders.parse_event(data)


def test_screening_keeps_each_order_once_and_a_reason_for_everything_else() -> None:
    redis_message = {"type": "message", "channel": "c", "data": json.dumps(GOOD)}
    events, skipped = orders.screen_events(
        [redis_message, json.dumps(GOOD), "{oops", {"type": "message"}, 42])
    assert [e.order_id for e in events] == ["O-1"]
    assert len(skipped) == 3 and "not JSON" in skipped[0]
    far = json.dumps({**GOOD, "order_id": "O-2", "ordered_at": "9999-12-31T23:00:00-05:00"})
    events, skipped = orders.screen_events([far, json.dumps(GOOD)])
    assert [e.order_id for e in events] == ["O-1"] and "outside" in skipped[0]


def test_publish_order_sends_the_shops_row_to_the_channel(shop_url: str) -> None:
    import redis

    url = f"{require_redis()}/12"
    channel = f"tend-test-orders-{uuid.uuid4().hex[:8]}"
    add_first_order(shop_url, "C-NEW", "O-NEW", AT, total="19.99")
    client = redis.Redis.from_url(url)
    sub = client.pubsub()
    try:
        sub.subscribe(channel)
        assert sub.get_message(timeout=5)["type"] == "subscribe"
        event = orders.event_for_order(shop_url, "O-NEW")
        assert orders.publish(event, url=url, channel=channel) == 1
        deadline = time.monotonic() + 5
        got = None
        while got is None and time.monotonic() < deadline:
            got = sub.get_message(timeout=1)
        assert got is not None and got["type"] == "message"
        received = orders.parse_event(got["data"])
        assert received == event
        assert (received.customer_id, received.ordered_at, received.total, received.currency) \
            == ("C-NEW", AT, "19.99", "CAD")
        assert len(received.lines) == 1
    finally:
        sub.close()
        client.close()
    with pytest.raises(DataError, match="no order 'O-NOPE'"):
        orders.event_for_order(shop_url, "O-NOPE")


def test_publishing_to_an_unreachable_redis_is_a_data_error() -> None:
    event = orders.parse_event(json.dumps(GOOD))
    with pytest.raises(DataError, match="TEND_ORDER_EVENTS_URL"):
        orders.publish(event, url="redis://127.0.0.1:1/0", channel="x")


def _plan(shop_url: str, store_url: str, events: list[object]) -> orders.EventsResult:
    settings = shop_settings()
    return orders.plan_events(shop_url, store_url, events, f"events-{uuid.uuid4().hex[:6]}",
                              settings=settings, renderer=messages.default_renderer(settings),
                              secret="s", as_of=DAY)


def _thank_yous(store_url: str, customer_id: str) -> list[dict[str, object]]:
    with connect(store_url).connect() as conn:
        return [dict(r) for r in conn.execute(select(contact_ledger).where(
            contact_ledger.c.customer_id == customer_id,
            contact_ledger.c.program == "thank_you")).mappings()]


def test_a_first_order_event_claims_the_thank_you_tonight_will_not_repeat(
        shop_url: str, store_url: str, caplog: pytest.LogCaptureFixture) -> None:
    reg = load_registry()
    yesterday = DAY - dt.timedelta(days=1)
    night(shop_url, store_url, yesterday, reg)  # the store's features are last night's
    add_first_order(shop_url, "C-NEW", "O-NEW", AT)
    event = orders.event_for_order(shop_url, "O-NEW").to_json()
    wrong_customer = json.dumps({**json.loads(event), "customer_id": "C-OTHER"})
    unknown = json.dumps({**json.loads(event), "order_id": "O-NOT-YET"})
    with caplog.at_level(logging.WARNING, logger="tend"):
        result = _plan(shop_url, store_url,
                       [wrong_customer, event, "{garbage", unknown, event])
    assert result.orders == ["O-NEW"]
    assert len(result.skipped) == 3
    assert sum("order event skipped" in r.getMessage() for r in caplog.records) == 3
    assert len(result.batches) == 1
    claimed = _thank_yous(store_url, "C-NEW")
    assert [(r["status"], r["occurrence"], r["as_of"]) for r in claimed] == [
        ("claimed", f"first_purchase::{DAY}", DAY)]
    with connect(store_url).connect() as conn:
        everyone = conn.execute(select(contact_ledger.c.customer_id).where(
            contact_ledger.c.as_of == DAY)).scalars().all()
    assert everyone == ["C-NEW"], "an event decides only its own customers"

    # The same event again (a retry) claims nothing new.
    again = _plan(shop_url, store_url, [event])
    assert len(_thank_yous(store_url, "C-NEW")) == 1
    assert set(again.fates["fate"]) == {"already_claimed"}

    # Tonight's run sees the same first order and finds its thank-you already claimed.
    night(shop_url, store_url, DAY, reg)
    assert len(_thank_yous(store_url, "C-NEW")) == 1


def test_an_event_for_a_returning_customer_or_without_event_programs_sends_nothing(
        shop_url: str, store_url: str) -> None:
    from _support import make_program, make_registry

    with connect(shop_url).connect() as conn:
        from tend.shop import schema

        o = schema.orders
        repeat = select(o.c.customer_id).group_by(o.c.customer_id).having(func.count() > 1)
        old = conn.execute(select(o.c.order_id, o.c.customer_id, o.c.ordered_at)
                           .where(o.c.customer_id.in_(repeat))  # a returning customer's
                           .order_by(o.c.ordered_at.desc()).limit(1)).one()
    returning = json.dumps({"order_id": old[0], "customer_id": old[1],
                            "ordered_at": "2026-11-17T09:00:00Z"})
    result = _plan(shop_url, store_url, [returning])
    assert result.orders == [old[0]] and result.batches == []
    with connect(store_url).connect() as conn:
        assert conn.execute(select(contact_ledger)).all() == []

    add_first_order(shop_url, "C-NEW", "O-NEW", AT)
    settings = shop_settings()
    nightly_only = make_registry(make_program("thank_you", signal="first_purchase",
                                              template="thank_you", kind="transactional"))
    result = orders.plan_events(shop_url, store_url, [orders.event_for_order(
        shop_url, "O-NEW").to_json()], "r", settings=settings,
        renderer=messages.default_renderer(settings), secret="s", as_of=DAY,
        registry=nightly_only)
    assert result.orders == [] and "no enabled program has trigger: event" in result.skipped[0]


def test_an_event_that_came_before_its_order_is_skipped_and_the_night_thanks_instead(
        shop_url: str, store_url: str) -> None:
    early = json.dumps({"order_id": "O-LATE", "customer_id": "C-LATE",
                        "ordered_at": AT.isoformat()})
    result = _plan(shop_url, store_url, [early])
    assert result.orders == [] and "no such order" in result.skipped[0]
    assert _thank_yous(store_url, "C-LATE") == []

    add_first_order(shop_url, "C-LATE", "O-LATE", AT)
    night(shop_url, store_url, DAY, load_registry())
    assert [r["occurrence"] for r in _thank_yous(store_url, "C-LATE")] == [
        f"first_purchase::{DAY}"]
