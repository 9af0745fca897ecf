"""The SendGrid Event Webhook over HTTP against a real ``tend serve``, on SQLite and PostgreSQL:
signatures made with a real ECDSA key, every event kind's effect, retries that change nothing,
bad input refused without writing, and a store outage that loses nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _support import (
    WebhookSigner,
    add_ledger_messages,
    interruptible_store,
    running_service,
)
from sqlalchemy import func, select

from tend.listen.events import MAX_EVENTS, parse_events, suppression_reason
from tend.store import db
from tend.store.tables import complaints, contact_ledger, message_events, suppressions

M = {name: f"{i:032x}" for i, name in enumerate(
    ["delivered", "unknown", "bounce", "blocked", "spam", "unsub", "group", "dropped",
     "dropped_unknown", "invalid"], start=1)}


@pytest.fixture
def signer(monkeypatch: pytest.MonkeyPatch) -> WebhookSigner:
    s = WebhookSigner.new()
    monkeypatch.setenv("TEND_SENDGRID_WEBHOOK_KEY", s.public_key)
    monkeypatch.delenv("AIRFLOW_CONN_SENDGRID_DEFAULT", raising=False)
    return s


def event(kind: str, mid: str | None, n: int, **extra: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"email": f"c{n}@example.com", "timestamp": 1_790_000_000 + n,
                         "event": kind, "sg_event_id": f"ev-{kind}-{n}",
                         "sg_message_id": f"sg{n}.filter", **extra}
    if mid is not None:
        e["tend_message_id"] = mid
    return e


def seed(store_url: str) -> None:
    db.migrate(store_url)
    add_ledger_messages(store_url, [
        {"message_id": mid, "customer_id": f"cust-{name}",
         "status": "unknown" if name in ("unknown", "dropped_unknown") else "sent"}
        for name, mid in M.items()])


def batch() -> list[dict[str, Any]]:
    return [
        event("processed", M["delivered"], 1),
        event("delivered", M["delivered"], 2),
        event("open", M["delivered"], 3),
        event("click", M["delivered"], 4, url="https://shop.example/p/1"),
        event("delivered", M["unknown"], 5),
        event("bounce", M["bounce"], 6, type="bounce", reason="550 5.1.1 no such user"),
        event("bounce", M["blocked"], 7, type="blocked", reason="554 blocked"),
        event("spamreport", M["spam"], 8),
        event("unsubscribe", M["unsub"], 9),
        event("group_unsubscribe", M["group"], 10, asm_group_id=42),
        event("dropped", M["dropped"], 11, reason="Bounced Address"),
        event("dropped", M["dropped_unknown"], 12, reason="Invalid SMTPAPI header"),
        event("dropped", M["invalid"], 13, reason="Invalid"),
        event("deferred", M["delivered"], 14, response="try later", attempt="1"),
        event("delivered", "f" * 32, 15),        # a well-formed id the ledger never had
        event("delivered", "not-one-of-ours", 16),
        event("delivered", None, 17),
        {"event": "delivered", "timestamp": 1_790_000_000},             # no sg_event_id
        {"event": "delivered", "sg_event_id": "x", "timestamp": "soon"},  # bad timestamp
        {"event": "DROP TABLE", "sg_event_id": "y", "timestamp": 1},     # bad event name
        ["not", "an", "object"],
        "neither",
    ]


def post(c: httpx.Client, signer: WebhookSigner, doc: Any, *, at: float | None = None
         ) -> httpx.Response:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return c.post("/sendgrid/events", content=body, headers=signer.headers(body, at))


def state(store_url: str) -> dict[str, Any]:
    with db.connect(store_url).connect() as conn:
        return {
            "events": conn.execute(select(func.count()).select_from(message_events)).scalar(),
            "suppressions": sorted(conn.execute(select(
                suppressions.c.customer_id, suppressions.c.reason, suppressions.c.email,
                suppressions.c.source)).all()),
            "complaints": conn.execute(select(
                complaints.c.customer_id, complaints.c.source, complaints.c.message_id,
                complaints.c.resolved_at)).all(),
            "ledger": dict(conn.execute(select(contact_ledger.c.message_id,
                                               contact_ledger.c.status)).all()),
        }


def test_each_event_has_its_effect_once(store_url: str, tmp_path: Path,
                                        signer: WebhookSigner) -> None:
    seed(store_url)
    with running_service(store_url, tmp_path) as svc, httpx.Client(base_url=svc.url) as c:
        r = post(c, signer, batch())
        assert r.status_code == 200, r.text
        assert r.json() == {"accepted": 17, "skipped": 5}
        first = state(store_url)
        assert first["events"] == 17
        assert first["suppressions"] == [
            ("cust-bounce", "hard_bounce", "c6@example.com", "sendgrid:bounce"),
            ("cust-dropped", "hard_bounce", "c11@example.com", "sendgrid:dropped"),
            ("cust-group", "unsubscribed", "c10@example.com", "sendgrid:group_unsubscribe"),
            ("cust-invalid", "invalid_address", "c13@example.com", "sendgrid:dropped"),
            ("cust-spam", "spam_report", "c8@example.com", "sendgrid:spamreport"),
            ("cust-unsub", "unsubscribed", "c9@example.com", "sendgrid:unsubscribe"),
        ]
        assert [(cu, so, mi) for cu, so, mi, _ in first["complaints"]] == [
            ("cust-spam", "spam_report", M["spam"])]
        ledger = first["ledger"]
        assert ledger[M["unknown"]] == "sent"           # left unknown by a crash: settled
        assert ledger[M["dropped_unknown"]] == "failed"
        assert ledger[M["delivered"]] == "sent"

        with db.connect(store_url).connect() as conn:
            rows = {r.event_id: r for r in conn.execute(select(message_events))}
        assert rows["ev-click-4"].message_id == M["delivered"]
        assert rows["ev-click-4"].customer_id == "cust-delivered"
        assert json.loads(rows["ev-click-4"].detail)["url"] == "https://shop.example/p/1"
        assert rows["ev-delivered-15"].message_id is None   # unknown ids: stored, no message
        assert json.loads(rows["ev-delivered-16"].detail)["tend_message_id"] == "not-one-of-ours"

        # Staff answer the complaint; SendGrid then retries the whole delivery (new signature
        # and timestamp): nothing changes, the complaint is not reopened.
        with db.connect(store_url).begin() as conn:
            conn.execute(complaints.update().values(resolved_at=func.now()))
        resolved = state(store_url)
        again = post(c, signer, batch())
        assert again.status_code == 200 and again.json() == {"accepted": 17, "skipped": 5}
        assert state(store_url) == resolved


def test_forged_stale_and_malformed_requests_are_refused_and_write_nothing(
        store_url: str, tmp_path: Path, signer: WebhookSigner) -> None:
    seed(store_url)
    good = json.dumps([event("spamreport", M["spam"], 1)]).encode()
    other = WebhookSigner.new()
    with running_service(store_url, tmp_path) as svc, httpx.Client(base_url=svc.url) as c:
        before = state(store_url)
        url = "/sendgrid/events"
        answers = {
            "unsigned": c.post(url, content=good),
            "other key": c.post(url, content=good, headers=other.headers(good)),
            "tampered": c.post(url, content=good.replace(b"spamreport", b"unsubscribe"),
                               headers=signer.headers(good)),
            "stale": post(c, signer, good, at=time.time() - 11 * 60),
            "future": post(c, signer, good, at=time.time() + 11 * 60),
            "garbage signature": c.post(url, content=good, headers={
                **signer.headers(good), "X-Twilio-Email-Event-Webhook-Signature": "%%%"}),
            # latin-1 "²", a digit to str.isdigit, not to int
            "superscript timestamp": c.post(url, content=good, headers={
                **signer.headers(good), "X-Twilio-Email-Event-Webhook-Timestamp": b"\xb2"}),
            "non-UTF-8": post(c, signer, b'[{"event": "\xff\xfe"}]'),
            "not JSON": post(c, signer, b"[{"),
            "NaN": post(c, signer, b'[{"event":"open","sg_event_id":"n","timestamp":NaN}]'),
            "not an array": post(c, signer, {"event": "open"}),
            "too many": post(c, signer, [{}] * (MAX_EVENTS + 1)),
            "deep": post(c, signer, b"[" * 100_000 + b"]" * 100_000),
            "GET": c.get(url),
            "PUT": c.put(url, content=good),
            "oversized": c.post(url, content=b"[" + b" " * (3 * 1024 * 1024) + b"]",
                                headers=signer.headers(b"[]")),
        }
        statuses = {k: r.status_code for k, r in answers.items()}
        assert statuses == {
            "unsigned": 403, "other key": 403, "tampered": 403, "stale": 403, "future": 403,
            "garbage signature": 403, "superscript timestamp": 403, "non-UTF-8": 403,
            "not JSON": 400, "NaN": 400, "not an array": 400, "too many": 400, "deep": 400,
            "GET": 405, "PUT": 405, "oversized": 413}
        for r in answers.values():
            assert "Traceback" not in r.text and "spam" not in r.text
        assert state(store_url) == before
        assert svc.service.spool.pending() == 0
        ok = post(c, signer, good)
        assert ok.status_code == 200 and state(store_url) != before  # the key does work


def test_text_no_store_keeps_never_costs_an_event_its_effect(
        store_url: str, tmp_path: Path, signer: WebhookSigner) -> None:
    """JSON's \\u escapes can carry a lone surrogate (not UTF-8) or a NUL (not PostgreSQL
    text): not a 500 that loses the whole batch, and not a reason to drop a bounce or a spam
    report either. Such an address is dropped (the event counts by its message id) and such
    characters in the details are replaced."""
    seed(store_url)
    doc = [event("bounce", M["bounce"], 1, type="bounce", reason="550 bad \ud800"),
           event("spamreport", M["spam"], 2, email="c2\x00@example.com"),
           event("delivered", "\udfff" * 32, 3),
           event("unsubscribe", M["unsub"], 4)]
    with running_service(store_url, tmp_path) as svc, httpx.Client(base_url=svc.url) as c:
        r = post(c, signer, doc)
        assert r.status_code == 200 and r.json() == {"accepted": 4, "skipped": 0}
        assert svc.service.spool.pending() == 0
    after = state(store_url)
    assert after["events"] == 4
    assert [(c, m) for c, _, m, _ in after["complaints"]] == [("cust-spam", M["spam"])]
    assert [(c, r) for c, r, _, _ in after["suppressions"]] == [
        ("cust-bounce", "hard_bounce"), ("cust-spam", "spam_report"),
        ("cust-unsub", "unsubscribed")]


def test_without_a_key_the_endpoint_answers_503(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEND_SENDGRID_WEBHOOK_KEY", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_SENDGRID_DEFAULT", raising=False)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with running_service(url, tmp_path) as svc, httpx.Client(base_url=svc.url) as c:
        r = c.post("/sendgrid/events", content=b"[]")
        assert r.status_code == 503 and "not configured" in r.text


def test_the_key_may_come_from_the_sendgrid_connection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = WebhookSigner.new()
    monkeypatch.delenv("TEND_SENDGRID_WEBHOOK_KEY", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_SENDGRID_DEFAULT", json.dumps({
        "conn_type": "sendgrid", "password": "SG.x",
        "extra": {"webhook_public_key": s.public_key}}))
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with running_service(url, tmp_path) as svc, httpx.Client(base_url=svc.url) as c:
        assert post(c, s, []).status_code == 200
        assert post(c, WebhookSigner.new(), []).status_code == 403


def rsa_public_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(
    ).public_bytes(serialization.Encoding.PEM,
                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return "".join(pem.strip().splitlines()[1:-1])


@pytest.mark.parametrize("key", ["not-a-key", "rsa"])
def test_a_malformed_key_stops_the_service_with_a_clear_error(
        key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tend.errors import ConfigError
    from tend.listen.app import create_app

    monkeypatch.setenv("TEND_SENDGRID_WEBHOOK_KEY", rsa_public_key() if key == "rsa" else key)
    with pytest.raises(ConfigError, match="TEND_SENDGRID_WEBHOOK_KEY"):
        create_app(f"sqlite:///{tmp_path / 'store.db'}", spool_dir=tmp_path / "spool")


@pytest.fixture
def down_store(store_url: str) -> Iterator[Any]:
    seed(store_url)
    with interruptible_store(store_url) as store:
        yield store


def test_events_received_while_the_store_is_down_are_applied_when_it_is_back(
        down_store: Any, store_url: str, tmp_path: Path, signer: WebhookSigner) -> None:
    with running_service(down_store.url, tmp_path) as svc, httpx.Client(base_url=svc.url) as c:
        down_store.down()
        try:
            r = post(c, signer, batch())
            assert r.status_code == 200 and r.json()["accepted"] == 17
            assert post(c, signer, [event("unsubscribe", M["delivered"], 99)]).status_code == 200
            assert svc.service.spool.pending() == 2
            assert c.get("/healthz").json()["store"] == "unreachable"
        finally:
            down_store.up()
        deadline = time.monotonic() + 20
        while svc.service.spool.pending() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert svc.service.spool.pending() == 0
    after = state(store_url)
    assert after["events"] == 18
    assert ("cust-delivered", "unsubscribed", "c99@example.com", "sendgrid:unsubscribe") in \
        after["suppressions"]
    assert len(after["suppressions"]) == 7 and len(after["complaints"]) == 1
    assert after["ledger"][M["unknown"]] == "sent"


@pytest.mark.parametrize(("body", "reason"), [
    ({"event": "bounce", "type": "bounce"}, "hard_bounce"),
    ({"event": "bounce"}, "hard_bounce"),
    ({"event": "bounce", "type": "blocked"}, None),
    ({"event": "dropped", "reason": "Bounced Address"}, "hard_bounce"),
    ({"event": "dropped", "reason": "Invalid"}, "invalid_address"),
    ({"event": "dropped", "reason": "Unsubscribed Address"}, "unsubscribed"),
    ({"event": "dropped", "reason": "Spam Reporting Address"}, "spam_report"),
    ({"event": "dropped", "reason": "Recipient List over Package Quota"}, None),
    ({"event": "spamreport"}, "spam_report"),
    ({"event": "unsubscribe"}, "unsubscribed"),
    ({"event": "group_unsubscribe"}, "unsubscribed"),
    ({"event": "group_resubscribe"}, None),
    ({"event": "deferred"}, None),
    ({"event": "open"}, None),
])
def test_which_events_suppress(body: dict[str, Any], reason: str | None) -> None:
    assert suppression_reason(body) == reason


def test_parsing_keeps_records_small_and_plain() -> None:
    long = "x" * 5000
    events, skipped = parse_events(json.dumps([
        event("bounce", M["bounce"], 1, reason=long, type="bounce", extra={"nested": long}),
        event("open", M["bounce"], 2, email=long, timestamp=True),
    ]).encode())
    assert skipped == 1
    (e,) = events
    assert len(e["reason"]) == 300 and "nested" not in (e["detail"] or "")
    assert e["email"] == "c1@example.com" and e["mid"] == M["bounce"]
