"""The local SendGrid stand-in: validates like SendGrid documents, records, injects faults.

A real HTTP server on 127.0.0.1 (a free port), spoken to over real HTTP.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tend.dev.fake_sendgrid import FaultPlan, RunningFake, run_in_thread, validate_mail_send

AUTH = {"Authorization": "Bearer SG.test-key"}


def doc(**changes: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "personalizations": [{"to": [{"email": "marie@example.com", "name": "Marie"}]}],
        "from": {"email": "hello@shop.example", "name": "Shop"},
        "reply_to": {"email": "help@shop.example"},
        "subject": "Hello",
        "content": [{"type": "text/plain", "value": "hi"}, {"type": "text/html", "value": "<p>"}],
        "headers": {"List-Unsubscribe": "<https://x/u>",
                    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
        "categories": ["winback", "marketing"],
        "custom_args": {"tend_message_id": "m1", "program": "winback", "kind": "marketing",
                        "run_id": "r1"},
        "asm": {"group_id": 12},
        "mail_settings": {"sandbox_mode": {"enable": False}},
    }
    d.update(changes)
    return d


@pytest.fixture
def fake() -> Iterator[RunningFake]:
    with run_in_thread(api_key="SG.test-key") as running:
        yield running


@pytest.fixture
def client(fake: RunningFake) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, headers=AUTH, timeout=10) as c:
        yield c


def test_a_valid_message_is_accepted_with_a_message_id(fake: RunningFake,
                                                        client: httpx.Client) -> None:
    r = client.post("/v3/mail/send", json=doc())
    assert r.status_code == 202
    assert len(r.headers["X-Message-Id"]) == 22
    [m] = client.get("/_messages").json()["messages"]
    assert m["tend_message_id"] == "m1" and m["x_message_id"] == r.headers["X-Message-Id"]
    assert m["to"] == ["marie@example.com"] and m["categories"] == ["winback", "marketing"]
    assert client.get("/_counts").json() == {"m1": 1}
    assert client.get("/_stats").json()["duplicates"] == 0
    client.post("/v3/mail/send", json=doc())
    assert client.get("/_stats").json()["duplicates"] == 1  # the same tend_message_id twice


def test_sandbox_mode_validates_and_sends_nothing(client: httpx.Client) -> None:
    r = client.post("/v3/mail/send", json=doc(mail_settings={"sandbox_mode": {"enable": True}}))
    assert r.status_code == 200 and "X-Message-Id" not in r.headers
    assert client.get("/_counts").json() == {}
    assert client.get("/_messages").json()["messages"][0]["sandbox"] is True


@pytest.mark.parametrize(
    ("headers", "reason"),
    [({}, "authorization required"),
     ({"Authorization": "Bearer SG.wrong"}, "invalid, expired, or revoked"),
     ({"Authorization": "Basic abc"}, "authorization required")],
)
def test_a_missing_or_wrong_key_is_401(fake: RunningFake, headers: dict[str, str],
                                       reason: str) -> None:
    r = httpx.post(f"{fake.url}/v3/mail/send", json=doc(), headers=headers)
    assert r.status_code == 401
    assert reason in r.json()["errors"][0]["message"]


def _errors(payload: Any) -> list[str]:
    return [f"{e['field']}: {e['message']}" for e in validate_mail_send(payload)]


BAD: list[tuple[str, Any, str]] = [
    ("no personalizations", doc(personalizations=[]), "at least one personalization"),
    ("1001 personalizations",
     doc(personalizations=[{"to": [{"email": f"a{i}@example.com"}]} for i in range(1001)]),
     "limited to 1000 personalizations"),
    ("no to", doc(personalizations=[{}]), "to parameter is required"),
    ("bad address", doc(personalizations=[{"to": [{"email": "not-an-address"}]}]),
     "valid address"),
    ("long address", doc(personalizations=[{"to": [{"email": "a" * 310 + "@example.com"}]}]),
     "320 characters"),
    ("duplicate recipient",
     doc(personalizations=[{"to": [{"email": "a@example.com"}, {"email": "A@example.com"}]}]),
     "only be included once"),
    ("no from", {k: v for k, v in doc().items() if k != "from"}, "from object must be provided"),
    ("no subject", {k: v for k, v in doc().items() if k != "subject"}, "subject is required"),
    ("empty subject", doc(subject=""), "at least one character"),
    ("html before text", doc(content=[{"type": "text/html", "value": "<p>"},
                                      {"type": "text/plain", "value": "hi"}]),
     "text/plain needs to be first"),
    ("empty content value", doc(content=[{"type": "text/plain", "value": ""}]),
     "at least one character"),
    ("no content", {k: v for k, v in doc().items() if k != "content"}, "content param is required"),
    ("11 categories", doc(categories=[f"c{i}" for i in range(11)]), "limit of 10 categories"),
    ("long category", doc(categories=["x" * 256]), "longer than 255"),
    ("repeated category", doc(categories=["a", "a"]), "unique list"),
    ("non-ascii category", doc(categories=["Noël"]), "non-ASCII"),
    ("integer custom arg", doc(custom_args={"tend_message_id": 7}), "must be strings"),
    ("empty custom args", doc(custom_args={}), "cannot be empty"),
    ("huge custom args", doc(custom_args={"k": "v" * 10_001}), "10,000 bytes"),
    ("reserved header", doc(headers={"Reply-To": "x@example.com"}), "reserved keys"),
    ("header with a space", doc(headers={"X Bad": "1"}), "empty spaces"),
    ("non-string header", doc(headers={"X-N": 1}), "must be strings"),
    ("float send_at", doc(send_at=1.5), "Unix timestamp as an integer"),
    ("send_at too far", doc(send_at=int(time.time()) + 73 * 3600), "72 hours"),
    ("asm group not int", doc(asm={"group_id": "12"}), "ASM group ID must be an integer"),
    ("sandbox not bool", doc(mail_settings={"sandbox_mode": {"enable": "yes"}}),
     "should be a boolean"),
]


@pytest.mark.parametrize(("case", "payload", "expected"), BAD, ids=[b[0] for b in BAD])
def test_documented_400_errors(case: str, payload: Any, expected: str) -> None:
    assert any(expected in e for e in _errors(payload)), _errors(payload)


def test_the_reference_document_is_valid() -> None:
    assert validate_mail_send(doc()) == []
    assert validate_mail_send(copy.deepcopy(doc(send_at=int(time.time()) + 3600))) == []


def test_a_bad_payload_gets_sendgrids_400_shape(client: httpx.Client) -> None:
    r = client.post("/v3/mail/send", json=doc(categories=["a", "a"]))
    assert r.status_code == 400
    [error] = r.json()["errors"]
    assert error["field"] == "categories" and error["help"].startswith("http")
    assert client.get("/_stats").json()["accepted"] == 0


def test_non_json_body_and_wrong_content_type(client: httpx.Client) -> None:
    assert client.post("/v3/mail/send", content=b"{nope",
                       headers={"Content-Type": "application/json"}).status_code == 400
    assert client.post("/v3/mail/send", content=b"x",
                       headers={"Content-Type": "text/plain"}).status_code == 415
    invalid_utf8 = client.post("/v3/mail/send", content=b'{"subject": "\xff"}',
                               headers={"Content-Type": "application/json"})
    assert invalid_utf8.status_code == 415
    assert invalid_utf8.json()["errors"][0]["message"] == "Invalid UTF8 in request"


def test_scripted_faults_in_order(client: httpx.Client) -> None:
    r = client.post("/_faults", json={"script": ["429", "503", "500", "ok", "400", "413"],
                                      "reset_ms": 250, "hold_429": False})
    assert r.status_code == 200
    statuses = []
    for i in range(6):
        resp = client.post("/v3/mail/send", json=doc(custom_args={"tend_message_id": f"m{i}"}))
        statuses.append(resp.status_code)
        if resp.status_code == 429:
            assert resp.headers["X-RateLimit-Remaining"] == "0"
            assert float(resp.headers["X-RateLimit-Reset"]) > time.time()
            assert "Retry-After" not in resp.headers  # sub-second reset: no integer Retry-After
    assert statuses == [429, 503, 500, 202, 400, 413]
    log = client.get("/_requests").json()["requests"]
    assert [(r["tend_message_id"], r["accepted"]) for r in log] == [
        ("m0", False), ("m1", False), ("m2", True), ("m3", True), ("m4", False), ("m5", False)]
    assert client.get("/_counts").json() == {"m2": 1, "m3": 1}  # a 500 may still have queued it


def test_whole_second_resets_come_with_retry_after(client: httpx.Client) -> None:
    client.post("/_faults", json={"script": ["429"], "reset_ms": 2000})
    r = client.post("/v3/mail/send", json=doc())
    assert r.headers["Retry-After"] == "2"
    assert int(r.headers["X-RateLimit-Reset"]) >= int(time.time()) + 1


def test_hold_429_holds_every_request_until_its_reset(client: httpx.Client) -> None:
    """hold_429 models an account's rate limit: after a 429, the next request (another
    message, another connection) is refused too, with the same reset, and counted as sent
    while limited."""
    client.post("/_faults", json={"script": ["429"], "reset_ms": 5000, "hold_429": True})
    first = client.post("/v3/mail/send", json=doc(custom_args={"tend_message_id": "m1"}))
    with httpx.Client(base_url=str(client.base_url), headers=client.headers) as other:
        second = other.post("/v3/mail/send", json=doc(custom_args={"tend_message_id": "m2"}))
    assert (first.status_code, second.status_code) == (429, 429)
    assert second.headers["X-RateLimit-Reset"] == first.headers["X-RateLimit-Reset"]
    assert 1 <= int(second.headers["Retry-After"]) <= 5
    log = client.get("/_requests").json()["requests"]
    assert [r["while_limited"] for r in log] == [False, True]
    assert all(r["received_at"] <= r["answered_at"] for r in log)
    assert client.get("/_stats").json()["while_limited"] == 1
    client.post("/_faults", json={"script": []})  # a new plan lifts the limit
    assert client.post("/v3/mail/send", json=doc()).status_code == 202


def test_by_default_a_429_refuses_only_its_own_request(client: httpx.Client) -> None:
    """The issue's fault model: injected faults are independent, a 429 included."""
    client.post("/_faults", json={"script": ["429"], "reset_ms": 5000})
    assert client.get("/_faults").json()["hold_429"] is False
    assert client.post("/v3/mail/send", json=doc()).status_code == 429
    assert client.post("/v3/mail/send", json=doc()).status_code == 202
    assert client.get("/_stats").json()["while_limited"] == 0


def test_per_message_faults_and_dropped_connections(client: httpx.Client) -> None:
    client.post("/_faults", json={"by_message": {"m-drop": ["drop"], "m-auth": ["401"]}})
    with pytest.raises(httpx.TransportError):
        client.post("/v3/mail/send", json=doc(custom_args={"tend_message_id": "m-drop"}))
    assert client.post("/v3/mail/send",
                       json=doc(custom_args={"tend_message_id": "m-auth"})).status_code == 401
    assert client.post("/v3/mail/send",
                       json=doc(custom_args={"tend_message_id": "m-drop"})).status_code == 202
    assert client.get("/_counts").json() == {"m-drop": 2}  # dropped after accepting it


def test_slow_replies_answer_late(client: httpx.Client) -> None:
    client.post("/_faults", json={"script": ["slow"], "slow_ms": 1500})
    with pytest.raises(httpx.ReadTimeout):
        client.post("/v3/mail/send", json=doc(), timeout=httpx.Timeout(10, read=0.2))
    assert client.get("/_stats").json()["accepted"] == 1


def test_random_faults_are_seeded(client: httpx.Client) -> None:
    def run() -> list[int]:
        client.post("/_reset")
        client.post("/_faults", json={"rate": 0.5, "kinds": ["503", "400"], "seed": 3})
        return [client.post("/v3/mail/send", json=doc()).status_code for _ in range(20)]

    first = run()
    assert first == run()
    assert {202, 503, 400} <= set(first)


def test_bad_fault_settings_are_refused(client: httpx.Client) -> None:
    r = client.post("/_faults", json={"kinds": ["teapot"], "rate": 0.1})
    assert r.status_code == 400 and "unknown fault" in r.json()["error"]
    assert client.post("/_faults", json={"colour": 1}).status_code == 400
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaultPlan(rate=2)


def test_records_accepted_messages_to_a_jsonl_file(tmp_path: Path) -> None:
    record = tmp_path / "accepted.jsonl"
    with run_in_thread(record_file=record, keep_payloads=True) as fake:
        httpx.post(f"{fake.url}/v3/mail/send", json=doc(), headers=AUTH)
        httpx.post(f"{fake.url}/v3/mail/send", json=doc(subject=""), headers=AUTH)
    [line] = record.read_text().splitlines()
    row = json.loads(line)
    assert row["tend_message_id"] == "m1" and row["payload"]["subject"] == "Hello"


def test_the_cli_serves_a_stand_in(tmp_path: Path) -> None:
    tend = Path(sys.executable).parent / "tend"
    proc = subprocess.Popen(
        [str(tend), "fake-sendgrid", "--port", "0", "--latency-ms", "1",
         "--fault-rate", "1", "--faults", "503", "--record", str(tmp_path / "r.jsonl")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        match = re.search(r"listening on (http://127\.0\.0\.1:(\d+))", banner)
        assert match and match.group(2) != "0", banner
        url = match.group(1)
        with httpx.Client(base_url=url, timeout=30) as c:
            assert c.post("/v3/mail/send", json=doc(), headers=AUTH).status_code == 503
            c.post("/_faults", json={"rate": 0})
            assert c.post("/v3/mail/send", json=doc(), headers=AUTH).status_code == 202
            assert c.get("/_stats").json()["outcomes"] == {"503": 1, "202": 1}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 1


def test_the_cli_refuses_unknown_faults(capsys: pytest.CaptureFixture[str]) -> None:
    from tend.cli import main

    assert main(["fake-sendgrid", "--faults", "teapot", "--fault-rate", "1"]) == 2
    assert "unknown fault" in capsys.readouterr().err


def test_suppression_lists_are_served_as_sendgrid_pages_them(client: httpx.Client,
                                                              fake: RunningFake) -> None:
    entries = [{"email": f"a{i}@x.example", "created": 1_780_000_000 + i} for i in range(7)]
    told = client.post("/_suppressions", json={"bounces": entries})
    assert told.status_code == 200 and told.json()["bounces"] == 7
    page = client.get("/v3/suppression/bounces", params={"limit": 3, "offset": 3})
    assert page.json() == entries[3:6]
    window = client.get("/v3/suppression/bounces",
                        params={"start_time": 1_780_000_005, "end_time": 1_780_000_006})
    assert window.json() == entries[5:7]
    assert client.get("/v3/suppression/unsubscribes").json() == []
    assert client.get("/v3/suppression/bounces", params={"limit": 501}).status_code == 400
    assert client.get("/v3/suppression/bounces", params={"offset": "x"}).status_code == 400
    assert httpx.get(f"{fake.url}/v3/suppression/bounces").status_code == 401
    assert client.post("/_suppressions", json={"nope": []}).status_code == 400
    client.post("/_reset")
    assert client.get("/v3/suppression/bounces").json() == []
