"""The tend serve application's guards, over HTTP against a real uvicorn."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from _support import running_service, sent_survey

from tend.listen.app import SECURITY_HEADERS
from tend.listen.spool import Spool
from tend.messages.tokens import make_token
from tend.store import db, suppressions

MID = "0123456789abcdef0123456789abcdef"


def test_health_answers_and_bodies_are_bounded(store_url: str, tmp_path: Path) -> None:
    with running_service(store_url, tmp_path) as svc, httpx.Client(base_url=svc.url) as c:
        r = c.get("/healthz")
        assert r.status_code == 200 and r.json() == {"status": "ok", "store": "ok", "spooled": 0,
                                                     "quarantined": 0}
        assert c.post("/healthz").status_code == 405
        big = c.post("/healthz", content=b"x" * (3 * 1024 * 1024))
        assert big.status_code == 413 and "Traceback" not in big.text
        missing = c.get("/nothing/here")
        assert missing.status_code == 404 and missing.headers["content-type"].startswith(
            "text/plain")


def spooled(action: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A record as :meth:`Service.record` spools it during an outage."""
    return {"action": action, "payload": payload, "at": dt.datetime.now(dt.UTC).isoformat()}


def unsubscribed(store_url: str) -> set[str]:
    with db.connect(store_url).connect() as conn:
        held = suppressions.active(conn)
    return set(held.loc[held["reason"] == "unsubscribed", "customer_id"])


def wait_until_replayed(svc: Any) -> None:
    deadline = time.monotonic() + 20
    while svc.service.spool.pending() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_spooled_record_that_cannot_apply_is_quarantined_and_the_others_are_applied(
        store_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Records spooled before a restart: the ones that fail on every try (text no store
    keeps, an action this version does not know) must not hold back the unsubscribes."""
    sent_survey(store_url, "cus_1", MID)
    poison = [
        spooled("survey_answer", {"customer_id": "cus_1", "message_id": MID, "rating": 1,
                                  "comment": "bad \ud800"}),
        spooled("from_a_newer_version", {}),
    ]
    if store_url.startswith("postgresql"):  # a DataError, not an outage: no use retrying it
        poison.append(spooled("unsubscribe", {"customer_id": "cus_3", "source": "x\x00"}))
    spool = Spool(tmp_path / "spool")
    spool.append(spooled("unsubscribe", {"customer_id": "cus_1", "source": "one_click"}))
    for record in poison:
        spool.append(record)
    spool.append(spooled("unsubscribe", {"customer_id": "cus_2", "source": "one_click"}))

    with running_service(store_url, tmp_path) as svc, httpx.Client(base_url=svc.url) as c:
        wait_until_replayed(svc)
        health = c.get("/healthz").json()
        # a click after the replay is applied at once
        assert c.post(f"/unsubscribe/{make_token('test-secret', 'cus_4')}",
                      data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert (health["spooled"], health["quarantined"]) == (0, len(poison))
    assert unsubscribed(store_url) == {"cus_1", "cus_2", "cus_4"}
    (failed,) = (tmp_path / "spool").glob("failed-*.jsonl")
    kept = [json.loads(line) for line in failed.read_text().splitlines()]
    assert [r["action"] for r in kept] == [r["action"] for r in poison]
    assert kept[0]["payload"]["comment"] == "bad \ud800"  # kept as it came, for the operator
    assert "UnicodeEncodeError" in kept[0]["failed"]["error"]
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == len(poison) and all("docs/listen.md" in e for e in errors)


def test_the_replay_goes_on_after_an_unexpected_error(
        store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    calls = []
    replay = Spool.replay

    def failing_once(self: Spool, *args: Any, **kwargs: Any) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise PermissionError("the spool directory is not readable")
        return replay(self, *args, **kwargs)

    monkeypatch.setattr(Spool, "replay", failing_once)
    Spool(tmp_path / "spool").append(
        spooled("unsubscribe", {"customer_id": "cus_1", "source": "one_click"}))
    with running_service(store_url, tmp_path) as svc:
        wait_until_replayed(svc)
        assert svc.service.spool.pending() == 0
    assert len(calls) >= 2 and unsubscribed(store_url) == {"cus_1"}
    (error,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "replaying the spool failed" in error.getMessage()


def test_a_500_is_plain_has_the_security_headers_and_logs_no_token_nor_address(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from tend.listen import pages

    def broken(*args: Any) -> str:
        raise RuntimeError("cannot verify for marie.tremblay@example.com")

    monkeypatch.setattr(pages, "verify_token", broken)
    token = make_token("test-secret", "cus_1", "unsubscribe")
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with running_service(url, tmp_path) as svc, httpx.Client(base_url=svc.url) as c:
        r = c.get(f"/unsubscribe/{token}")
    assert r.status_code == 500 and r.headers["content-type"].startswith("text/plain")
    assert "Traceback" not in r.text and "marie" not in r.text
    for name, value in SECURITY_HEADERS:
        assert r.headers[name.decode()] == value.decode()
    assert "unhandled error on GET /unsubscribe/{token}" in caplog.text
    assert "RuntimeError: cannot verify for m***y@example.com" in caplog.text
    assert token not in caplog.text and "marie.tremblay" not in caplog.text


def test_a_store_not_migrated_yet_is_waited_for_not_quarantined(store_url: str) -> None:
    """Spooled records wait (rather than go to quarantine) while the store lacks its tables,
    as during an upgrade; a record the store refuses for its own content does not wait."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from tend.listen.app import _retry_later

    def error_of(statement: str, **params: Any) -> DBAPIError:
        with db.connect(store_url).connect() as conn, pytest.raises(DBAPIError) as caught:
            conn.execute(text(statement), params)
        return caught.value

    assert _retry_later(error_of("SELECT * FROM no_such_table"))
    assert _retry_later(error_of("SELECT no_such_column FROM suppressions"))
    if store_url.startswith("postgresql"):
        assert not _retry_later(error_of("SELECT CAST(:v AS text)", v="x\x00"))
    assert not _retry_later(ValueError("not a database error"))


def test_a_click_while_the_store_is_mid_upgrade_is_spooled_not_lost(
        store_url: str, tmp_path: Path) -> None:
    """While a table is missing (a migration running), a one-click unsubscribe is answered
    and spooled, as in an outage, then applied once the table is back: a mail provider does
    not retry it, so a 500 here would keep mailing someone who said stop."""
    from sqlalchemy import text
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from tend.listen.app import Service

    assert Service.can_wait(PoolTimeout("every pooled connection is busy"))
    with running_service(store_url, tmp_path, replay_seconds=0.2) as svc, \
            httpx.Client(base_url=svc.url) as c:
        engine = db.connect(store_url)
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE suppressions RENAME TO suppressions_aside"))
        try:
            r = c.post(f"/unsubscribe/{make_token('test-secret', 'cus_9')}",
                       data={"List-Unsubscribe": "One-Click"})
            assert r.status_code == 200
            assert svc.service.spool.pending() == 1
        finally:
            with engine.begin() as conn:
                conn.execute(text("ALTER TABLE suppressions_aside RENAME TO suppressions"))
        wait_until_replayed(svc)
        assert c.get("/healthz").json()["quarantined"] == 0
    assert unsubscribed(store_url) == {"cus_9"}
