"""``tend publish-order``: the shop's order as an event on the real Redis."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
from _support import add_first_order, require_redis

from tend.cli import main

DAY = dt.date(2026, 11, 18)

pytestmark = pytest.mark.demo_shop(customers=60, seed=2, as_of=DAY)


def test_publish_order_tells_whether_anyone_listened(
        shop_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import redis

    url = f"{require_redis()}/12"
    channel = f"tend-test-cli-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("TEND_ORDER_EVENTS_URL", url)
    monkeypatch.setenv("TEND_ORDER_EVENTS_CHANNEL", channel)
    add_first_order(shop_url, "C-CLI", "O-CLI", dt.datetime(2026, 11, 18, 9, tzinfo=dt.UTC))

    assert main(["publish-order", "O-CLI", "--db", shop_url]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["order_id"] == "O-CLI"
    assert "nobody is subscribed" in err and "nightly run will still see" in err

    client = redis.Redis.from_url(url)
    sub = client.pubsub()
    try:
        sub.subscribe(channel)
        sub.get_message(timeout=5)
        assert main(["publish-order", "O-CLI", "--db", shop_url]) == 0
        got = sub.get_message(timeout=5)
        assert got is not None and json.loads(got["data"])["customer_id"] == "C-CLI"
    finally:
        sub.close()
        client.close()
    capsys.readouterr()

    assert main(["publish-order", "O-MISSING", "--db", shop_url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no order 'O-MISSING'" in err


def test_an_order_the_night_would_set_aside_is_not_published(
        shop_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A line quantity the shop's rules refuse ('two', 2.5) is one line naming the order and
    the rule, exit 2, and nothing published: no traceback, no quantity silently rounded."""
    import sqlite3

    from tend.config import sqlite_file

    add_first_order(shop_url, "C-BAD", "O-BAD", dt.datetime(2026, 11, 18, 9, tzinfo=dt.UTC))
    for quantity, rule in (("two", "not a positive whole number"), ("2.5", "whole number")):
        with sqlite3.connect(sqlite_file(shop_url)) as conn:
            conn.execute("UPDATE order_lines SET quantity = ? WHERE order_id = 'O-BAD'",
                         (quantity,))
        assert main(["publish-order", "O-BAD", "--db", shop_url]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1, err
        assert "order O-BAD, sku " in err and rule in err and "sets it aside too" in err


def test_an_order_time_that_is_no_date_is_one_line(
        shop_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3

    from tend.config import sqlite_file

    add_first_order(shop_url, "C-WHEN", "O-WHEN", dt.datetime(2026, 11, 18, 9, tzinfo=dt.UTC))
    with sqlite3.connect(sqlite_file(shop_url)) as conn:
        conn.execute("UPDATE orders SET ordered_at = 'yesterday' WHERE order_id = 'O-WHEN'")
    assert main(["publish-order", "O-WHEN", "--db", shop_url]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "'yesterday', which is not a date" in err
