"""The daily pull of SendGrid's suppression lists, against the local stand-in over HTTP, into
a store on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import select

from tend.cli import main
from tend.delivery.sendgrid import SendGridSettings
from tend.dev.fake_sendgrid import RunningFake, run_in_thread
from tend.errors import ConfigError
from tend.listen.pull import PAGE, pull_suppressions
from tend.shop.read import read_customers
from tend.store.db import connect
from tend.store.tables import suppressions

NIGHT = dt.date(2026, 11, 20)
pytestmark = pytest.mark.demo_shop(customers=400, seed=11, as_of=NIGHT)
KEY = "SG.pull-test"
LISTED = 1_780_000_000


@pytest.fixture
def fake() -> Iterator[RunningFake]:
    with run_in_thread(api_key=KEY) as running:
        yield running


def emails(demo_shop: str, n: int) -> dict[str, str]:
    ids = [f"C{i:06d}" for i in range(1, 200)]
    found = read_customers(demo_shop, ids).dropna(subset=["email"])
    rows = found.drop_duplicates("email").head(n)
    assert len(rows) == n
    return dict(zip(rows["customer_id"], rows["email"], strict=True))


def stored(store_url: str) -> list[tuple[str, str, str, str, dt.datetime]]:
    s = suppressions
    with connect(store_url).connect() as conn:
        return sorted(conn.execute(select(s.c.customer_id, s.c.reason, s.c.email, s.c.source,
                                          s.c.created_at)).all())


def test_every_list_is_read_page_by_page_and_matched_to_customers(
        fake: RunningFake, store_url: str, demo_shop: str) -> None:
    (a, ea), (b, eb), (c, ec), (d, ed), (e, ee) = emails(demo_shop, 5).items()
    strangers = [{"email": f"stranger{i}@elsewhere.example", "created": LISTED}
                 for i in range(PAGE + 20)]  # two pages
    fake.fake.set_suppressions({
        "bounces": [{"email": ea.upper(), "created": LISTED, "reason": "550", "status": "5.1.1"}],
        "blocks": [{"email": eb, "created": LISTED, "reason": "blocked"}],
        "spam_reports": [{"email": ec, "created": LISTED, "ip": "10.0.0.1"}],
        "invalid_emails": [{"email": ed, "created": LISTED, "reason": "Mail domain invalid"}],
        "unsubscribes": [*strangers, {"email": ee, "created": "not a time"}, {"email": None}],
    })
    settings = SendGridSettings(api_key=KEY, base_url=fake.url)
    now = dt.datetime(2026, 11, 21, 4, 0, tzinfo=dt.UTC)
    result = pull_suppressions(settings, store_url, demo_shop, now=lambda: now)
    assert dict(result.listed) == {"bounces": 1, "blocks": 1, "spam_reports": 1,
                                   "invalid_emails": 1, "unsubscribes": PAGE + 21}
    assert dict(result.matched) == {"bounces": 1, "spam_reports": 1, "invalid_emails": 1,
                                    "unsubscribes": 1}
    listed_at = dt.datetime.fromtimestamp(LISTED, dt.UTC)
    rows = [(cid, reason, email, source, when.replace(tzinfo=dt.UTC) if when.tzinfo is None
             else when) for cid, reason, email, source, when in stored(store_url)]
    assert rows == sorted([
        (a, "hard_bounce", ea.lower(), "sendgrid_list:bounces", listed_at),
        (c, "spam_report", ec.lower(), "sendgrid_list:spam_reports", listed_at),
        (d, "invalid_address", ed.lower(), "sendgrid_list:invalid_emails", listed_at),
        (e, "unsubscribed", ee.lower(), "sendgrid_list:unsubscribes", now),
    ])
    assert b not in {r[0] for r in rows}  # a block says nothing against the address
    # Rerun the next day: nothing changes.
    pull_suppressions(settings, store_url, demo_shop, now=lambda: now + dt.timedelta(days=1))
    assert [r[:4] for r in stored(store_url)] == [r[:4] for r in rows]


def test_a_refused_key_is_a_config_error_and_writes_nothing(
        fake: RunningFake, store_url: str, demo_shop: str) -> None:
    with pytest.raises(ConfigError, match="Suppressions"):
        pull_suppressions(SendGridSettings(api_key="SG.wrong", base_url=fake.url), store_url,
                          demo_shop)
    assert stored(store_url) == []


def test_the_cli_pulls_with_the_environment_settings(
        fake: RunningFake, store_url: str, demo_shop: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    ((cid, email),) = emails(demo_shop, 1).items()
    httpx.post(f"{fake.url}/_suppressions", json={"bounces": [{"email": email,
                                                               "created": LISTED}]})
    monkeypatch.setenv("TEND_SENDGRID_API_KEY", KEY)
    monkeypatch.setenv("TEND_SENDGRID_URL", fake.url)
    assert main(["suppressions", "pull", "--store", store_url, "--db", demo_shop]) == 0
    out = capsys.readouterr().out
    assert "bounces" in out and "not suppressed" in out
    assert [r[:2] for r in stored(store_url)] == [(cid, "hard_bounce")]


def test_rate_limits_are_waited_out_and_an_outage_is_an_error(
        fake: RunningFake, store_url: str, demo_shop: str) -> None:
    from tend.dev.fake_sendgrid import FaultPlan
    from tend.errors import DeliveryError

    ((cid, email),) = emails(demo_shop, 1).items()
    fake.fake.set_suppressions({"unsubscribes": [{"email": email, "created": LISTED}]})
    settings = SendGridSettings(api_key=KEY, base_url=fake.url)
    waits: list[float] = []
    fake.fake.set_faults(FaultPlan(script=["429", "429"], reset_ms=1500))
    pull_suppressions(settings, store_url, demo_shop, sleep=waits.append)
    assert len(waits) == 2 and all(0.1 <= w <= 1.6 for w in waits)
    assert [r[:2] for r in stored(store_url)] == [(cid, "unsubscribed")]
    fake.fake.set_faults(FaultPlan(script=["ok", "503"]))
    with pytest.raises(DeliveryError, match="503 on /v3/suppression/blocks"):
        pull_suppressions(settings, store_url, demo_shop, sleep=waits.append)
