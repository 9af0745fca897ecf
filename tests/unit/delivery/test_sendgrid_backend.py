"""The SendGrid backend against the local stand-in (a real HTTP server on a free port).

Every failure is sorted by one question: could SendGrid have accepted the request? The stand-in
records what it accepted, so each test checks the backend's verdict against the truth.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Iterator
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
from _support import free_port, numbered_message

from tend.delivery import (
    AuthRejected,
    DeliveryStatus,
    DeliveryStopped,
    OutgoingMessage,
    make_backend,
)
from tend.delivery.sendgrid import SendGridBackend, SendGridSettings
from tend.dev.fake_sendgrid import FaultPlan, RunningFake, run_in_thread
from tend.errors import ConfigError, DeliveryAuthError

KEY = "SG.secret-test-key-123"
SENT, FAILED, UNKNOWN = DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.UNKNOWN


@pytest.fixture
def fake() -> Iterator[RunningFake]:
    with run_in_thread(api_key=KEY, faults=FaultPlan(latency_ms=2, reset_ms=100)) as running:
        yield running


def backend_for(fake: RunningFake, **changes: object) -> SendGridBackend:
    settings = SendGridSettings(api_key=KEY, base_url=fake.url, read_timeout=2.0,
                                backoff_base=0.02, backoff_max=0.1)
    return SendGridBackend(replace(settings, **changes), rng=random.Random(1))  # type: ignore


def faults(fake: RunningFake, **plan: object) -> None:
    """The stand-in's faults, answering after 2 ms with a 100 ms rate-limit reset unless
    ``plan`` says otherwise."""
    settings: dict[str, Any] = {"latency_ms": 2, "reset_ms": 100, **plan}
    fake.fake.set_faults(FaultPlan(**settings))


def test_a_chunk_is_sent_concurrently_over_reused_connections(fake: RunningFake) -> None:
    with backend_for(fake, max_in_flight=8) as backend:
        first = backend.send([numbered_message(i) for i in range(120)])
        second = backend.send([numbered_message(i) for i in range(120, 240)])
    results = first + second
    assert [r.message_id for r in results] == [f"m{i:04d}" for i in range(240)]
    assert {r.status for r in results} == {SENT}
    accepted = {m["tend_message_id"]: m["x_message_id"] for m in fake.fake.messages()}
    assert {r.message_id: r.provider_id for r in results} == accepted  # X-Message-Id kept
    peers = {r["peer"] for r in fake.fake.request_log()}
    assert len(peers) <= 8  # keep-alive: never more connections than requests in flight


def test_the_api_key_travels_only_in_the_authorization_header(fake: RunningFake) -> None:
    backend = backend_for(fake)
    assert KEY not in repr(backend) and KEY not in repr(backend.settings)
    backend.close()


def test_429_waits_for_the_reset_then_sends(fake: RunningFake) -> None:
    faults(fake, by_message={"m0001": ["429", "429"]})
    with backend_for(fake) as backend:
        results = backend.send([numbered_message(i) for i in range(4)])
    assert [r.status for r in results] == [SENT] * 4
    outcomes = [r["outcome"] for r in fake.fake.request_log() if r["tend_message_id"] == "m0001"]
    assert outcomes == ["429", "429", "202"]
    assert backend.stats["rate_limited"] == 2
    assert fake.fake.accepted_counts()["m0001"] == 1


def test_503_and_refused_connections_are_retried_with_backoff(fake: RunningFake) -> None:
    faults(fake, by_message={"m0000": ["503", "503", "503"]})
    with backend_for(fake) as backend:
        [r] = backend.send([numbered_message(0)])
    assert r.status == SENT
    assert backend.stats["retries"] == 3
    assert fake.fake.accepted_counts() == {"m0000": 1}


@pytest.mark.parametrize(
    ("fault", "status", "accepted_by_sendgrid"),
    [("500", UNKNOWN, True), ("drop", UNKNOWN, True), ("slow", UNKNOWN, True),
     ("reset", UNKNOWN, False), ("400", FAILED, False), ("413", FAILED, False)],
)
def test_ambiguous_failures_are_unknown_and_never_resent(
        fake: RunningFake, fault: str, status: DeliveryStatus, accepted_by_sendgrid: bool) -> None:
    faults(fake, by_message={"m0002": [fault]}, slow_ms=1500)
    with backend_for(fake, read_timeout=0.4) as backend:
        results = backend.send([numbered_message(i) for i in range(5)])
    by_id = {r.message_id: r for r in results}
    assert by_id["m0002"].status == status
    assert {r.status for mid, r in by_id.items() if mid != "m0002"} == {SENT}
    requests = [r for r in fake.fake.request_log() if r["tend_message_id"] == "m0002"]
    assert len(requests) == 1  # one request, never a second one
    assert fake.fake.accepted_counts().get("m0002", 0) == int(accepted_by_sendgrid)
    if status == FAILED:
        assert by_id["m0002"].error.startswith(f"SendGrid {fault}:")
    else:
        assert "not resent" in by_id["m0002"].error


def test_a_400_carries_sendgrids_error_text(fake: RunningFake) -> None:
    with backend_for(fake) as backend:
        # Valid for Tend's builder, refused by SendGrid: an address without a dot in its domain.
        [r] = backend.send([numbered_message(0, to_email="nobody@localhost")])
    assert r.status == FAILED
    assert r.error.startswith("SendGrid 400: personalizations.0.to.0.email: Does not contain a "
                              "valid address")


def test_a_refused_message_costs_no_request(fake: RunningFake) -> None:
    with backend_for(fake) as backend:
        [r] = backend.send([numbered_message(0, headers={"To": "evil@example.com"})])
    assert r.status == FAILED and "reserved" in r.error
    assert fake.fake.request_log() == []


def test_401_stops_at_once_and_carries_what_completed(fake: RunningFake) -> None:
    faults(fake, by_message={"m0030": ["401"]})
    with backend_for(fake, max_in_flight=4) as backend, \
            pytest.raises(AuthRejected, match="check the sendgrid_default connection") as stop:
        backend.send([numbered_message(i) for i in range(100)])
    done = {r.message_id: r for r in stop.value.results}
    accepted = fake.fake.accepted_counts()
    assert set(done) == set(accepted)  # exactly the messages SendGrid took, no more, no less
    assert all(r.status == SENT for r in done.values())
    assert 30 <= len(done) < 100
    assert "m0030" not in done
    assert isinstance(stop.value, DeliveryAuthError)


def test_a_wrong_key_stops_the_chunk_without_leaking_the_key(
        fake: RunningFake, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with backend_for(fake, api_key="SG.wrong-key-456") as backend, \
            pytest.raises(AuthRejected) as stop:
        backend.send([numbered_message(i) for i in range(10)])
    assert stop.value.results == []
    assert "SG.wrong-key-456" not in str(stop.value) + caplog.text


def test_a_wrong_api_url_stops_the_run(fake: RunningFake) -> None:
    with backend_for(fake, base_url=fake.url + "/nope") as backend, \
            pytest.raises(DeliveryStopped, match="API URL is wrong"):
        backend.send([numbered_message(0)])


def test_a_rate_limit_that_never_lifts_stops_the_run(fake: RunningFake) -> None:
    faults(fake, rate=1.0, kinds=("429",))
    with backend_for(fake, max_rate_limit_wait=0.3) as backend, \
            pytest.raises(DeliveryStopped, match="429") as stop:
        backend.send([numbered_message(i) for i in range(3)])
    assert stop.value.results == []
    assert fake.fake.accepted_counts() == {}


def test_an_unreachable_sendgrid_stops_after_its_retries() -> None:
    settings = SendGridSettings(api_key=KEY, base_url=f"http://127.0.0.1:{free_port()}",
                                max_attempts=3, backoff_base=0.01, backoff_max=0.02)
    with SendGridBackend(settings) as backend, \
            pytest.raises(DeliveryStopped, match="unavailable after 3 attempts") as stop:
        backend.send([numbered_message(0), numbered_message(1)])
    assert stop.value.results == []
    assert backend.stats["retries"] == 4  # two messages, two retries each


def test_a_connection_refused_is_retried_until_sendgrid_is_back() -> None:
    port = free_port()
    settings = SendGridSettings(api_key=KEY, base_url=f"http://127.0.0.1:{port}",
                                max_attempts=8, backoff_base=0.2, backoff_max=0.5)
    backend = SendGridBackend(settings, rng=random.Random(2))
    outcome: dict[str, object] = {}
    worker = threading.Thread(target=lambda: outcome.update(r=backend.send([numbered_message(0)])))
    worker.start()
    try:
        while backend.stats["retries"] < 1 and worker.is_alive():
            threading.Event().wait(0.01)
        with run_in_thread(port=port) as fake:  # SendGrid comes back during the backoff
            worker.join(timeout=30)
            assert fake.fake.accepted_counts() == {"m0000": 1}
    finally:
        backend.close()
    [r] = outcome["r"]  # type: ignore[misc]
    assert r.status == SENT


def test_sandbox_mode_is_sent_but_delivers_nothing(fake: RunningFake) -> None:
    with backend_for(fake, sandbox=True) as backend:
        [r] = backend.send([numbered_message(0)])
    assert (r.status, r.provider_id) == (SENT, "sandbox")
    assert fake.fake.accepted_counts() == {}
    assert fake.fake.messages()[0]["sandbox"] is True


# -- settings -------------------------------------------------------------------------------

def conn(**fields: object) -> SimpleNamespace:
    base = {"conn_type": "sendgrid", "host": None, "port": None, "password": KEY, "schema": None,
            "login": None, "extra_dejson": {}}
    return SimpleNamespace(**{**base, **fields})


@pytest.mark.parametrize(
    ("fields", "url"),
    [({}, "https://api.sendgrid.com"),
     ({"host": "http://127.0.0.1:8089"}, "http://127.0.0.1:8089"),
     ({"host": "127.0.0.1", "port": 8089}, "http://127.0.0.1:8089"),
     ({"conn_type": "http", "host": "stand-in", "port": 9000}, "http://stand-in:9000"),
     ({"host": "eu.api.example"}, "https://eu.api.example"),
     ({"host": "proxy", "extra_dejson": {"scheme": "http"}}, "http://proxy")],
)
def test_the_connection_host_overrides_the_api_url(fields: dict[str, object], url: str) -> None:
    assert SendGridSettings.from_connection(conn(**fields), env={}).base_url == url


def test_connection_extras_and_the_sandbox_switch() -> None:
    c = conn(extra_dejson={"sandbox_mode": "true", "asm_group_id": "77", "max_in_flight": 16,
                           "chunk_size": 200, "read_timeout": "10"})
    s = SendGridSettings.from_connection(c, env={})
    assert (s.sandbox, s.asm_group_id, s.max_in_flight, s.chunk_size, s.read_timeout) == (
        True, 77, 16, 200, 10.0)
    assert SendGridSettings.from_connection(c, env={"TEND_SENDGRID_SANDBOX": "0"}).sandbox is False


def test_settings_from_the_environment() -> None:
    s = SendGridSettings.from_env({"TEND_SENDGRID_API_KEY": KEY, "TEND_SENDGRID_URL":
                                   "http://127.0.0.1:1", "TEND_SENDGRID_CHUNK_SIZE": "25",
                                   "TEND_SENDGRID_MAX_IN_FLIGHT": "8"})
    assert (s.api_key, s.base_url, s.chunk_size, s.max_in_flight) == (
        KEY, "http://127.0.0.1:1", 25, 8)
    assert SendGridSettings.from_env({"SENDGRID_API_KEY": "SG.x"}).api_key == "SG.x"


@pytest.mark.parametrize(
    ("make", "message"),
    [(lambda: SendGridSettings.from_env({}), "TEND_SENDGRID_API_KEY"),
     (lambda: SendGridSettings.from_connection(conn(password=""), env={}), "no password"),
     (lambda: SendGridSettings(api_key=KEY, base_url="ftp://x"), "not an http"),
     (lambda: SendGridSettings.from_env({"TEND_SENDGRID_API_KEY": "k",
                                         "TEND_SENDGRID_CHUNK_SIZE": "many"}), "a number"),
     (lambda: SendGridSettings.from_env({"TEND_SENDGRID_API_KEY": "k",
                                         "TEND_SENDGRID_SANDBOX": "maybe"}), "true or false"),
     (lambda: make_backend("sendgrid", env={}), "sendgrid_default")],
)
def test_configuration_errors_say_how_to_fix_them(make: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()  # type: ignore[operator]


def test_make_backend_builds_sendgrid_from_the_environment() -> None:
    backend = make_backend("SendGrid", env={"TEND_SENDGRID_API_KEY": KEY,
                                            "TEND_SENDGRID_CHUNK_SIZE": "300"})
    assert isinstance(backend, SendGridBackend) and backend.chunk_size == 300
    backend.close()


def test_two_chunks_at_once_share_one_loop_and_one_limit(fake: RunningFake) -> None:
    """send_batch hands chunks_in_flight chunks over from different threads at the same time."""
    from concurrent.futures import ThreadPoolExecutor

    with backend_for(fake, max_in_flight=4) as backend:
        start = threading.Barrier(2)

        def send(chunk: list[OutgoingMessage]) -> list[Any]:
            start.wait()  # both threads start the backend at the same instant
            return backend.send(chunk)

        with ThreadPoolExecutor(max_workers=2) as pool:
            a, b = pool.map(send, [[numbered_message(i) for i in range(40)],
                                   [numbered_message(i) for i in range(40, 80)]])
        loops = [t for t in threading.enumerate() if t.name == "tend-sendgrid"]
    assert {r.status for r in a + b} == {SENT}
    assert len(loops) == 1
    assert len({r["peer"] for r in fake.fake.request_log()}) <= 4  # the limit is shared


# -- the sliding window (submit) ---------------------------------------------------------------

def submit_all(backend: SendGridBackend, messages: list[OutgoingMessage]) -> list[Any]:
    """Submit ``messages`` as the engine does; the outcomes in the order they were reported."""
    import queue

    reported: queue.SimpleQueue[Any] = queue.SimpleQueue()
    backend.submit(messages, reported.put)
    out: list[Any] = []
    while len(out) < len(messages):
        out += reported.get(timeout=30)
    return out


def by_message(fake: RunningFake) -> dict[str, list[dict[str, Any]]]:
    log: dict[str, list[dict[str, Any]]] = {}
    for r in fake.fake.request_log():
        log.setdefault(r["tend_message_id"], []).append(r)
    return log


def test_a_slow_reply_gives_its_slot_to_the_next_request(fake: RunningFake) -> None:
    """One slot only, and the first request answers after 3 s: the others do not wait for it."""
    faults(fake, by_message={"m0000": ["slow"]}, slow_ms=3000)
    with backend_for(fake, max_in_flight=1, slow_after=0.1, read_timeout=10) as backend:
        outcomes = submit_all(backend, [numbered_message(i) for i in range(20)])
    assert [o.message_id for o in outcomes][-1] == "m0000"  # reported last...
    assert {o.status for o in outcomes} == {SENT}  # ...and still sent: no read timeout
    log = by_message(fake)
    slow_answered = log["m0000"][0]["answered_at"]
    others = [r for m, rs in log.items() if m != "m0000" for r in rs]
    assert len(others) == 19 and max(r["answered_at"] for r in others) < slow_answered


def test_a_503_backs_off_without_holding_a_slot(fake: RunningFake) -> None:
    faults(fake, by_message={"m0000": ["503"]})
    with backend_for(fake, max_in_flight=1, backoff_base=2.0, backoff_max=2.0) as backend:
        outcomes = submit_all(backend, [numbered_message(i) for i in range(10)])
    assert {o.status for o in outcomes} == {SENT} and outcomes[-1].message_id == "m0000"
    log = by_message(fake)
    retry = log["m0000"][1]  # the retry left after at least a second of backoff...
    others = [r for m, rs in log.items() if m != "m0000" for r in rs]
    assert max(r["answered_at"] for r in others) < retry["received_at"]  # ...others did not wait
    assert fake.fake.accepted_counts() == {f"m{i:04d}": 1 for i in range(10)}


def test_a_sporadic_429_pauses_only_its_own_request(fake: RunningFake) -> None:
    """A 429 with Retry-After: 1 for one message (the stand-in's default: a fault of that one
    request): it waits its second, without a slot, while the others are answered meanwhile."""
    faults(fake, reset_ms=1000, by_message={"m0003": ["429"]})
    with backend_for(fake, max_in_flight=4) as backend:
        outcomes = submit_all(backend, [numbered_message(i) for i in range(60)])
    assert {o.status for o in outcomes} == {SENT} and outcomes[-1].message_id == "m0003"
    refused, retry = by_message(fake)["m0003"]
    assert refused["outcome"] == "429" and retry["outcome"] == "202"
    assert retry["received_at"] >= refused["answered_at"] + 0.9  # its Retry-After was honoured
    meanwhile = [r for r in fake.fake.request_log()
                 if refused["answered_at"] < r["answered_at"] < retry["received_at"]]
    assert len(meanwhile) > 10  # the others kept flowing
    assert fake.fake.accepted_counts() == {f"m{i:04d}": 1 for i in range(60)}
    assert backend.stats["rate_limited"] == 1 and backend.stats["account_limited"] == 0


def test_an_account_limit_pauses_every_request_and_is_not_hammered(fake: RunningFake) -> None:
    """The stand-in with hold_429 (an account limit: after one 429, every request is refused
    until the reset): once most recent answers are 429 the whole backend waits for the reset,
    so only what was in flight or about to leave is refused meanwhile; then all go, once."""
    faults(fake, reset_ms=1000, hold_429=True, by_message={"m0003": ["429"]})
    in_flight = 8
    with backend_for(fake, max_in_flight=in_flight) as backend:
        outcomes = submit_all(backend, [numbered_message(i) for i in range(200)])
    assert {o.status for o in outcomes} == {SENT}
    log = fake.fake.request_log()
    first = next(r for r in log if r["outcome"] == "429")
    reset = first["answered_at"] + 1.0
    refused_while_limited = [r for r in log if r["while_limited"]]
    # Before the breaker trips: the requests in flight plus the few answers it needs to see.
    assert 0 < len(refused_while_limited) <= 3 * in_flight
    assert [r for r in log if first["answered_at"] + 0.3 < r["received_at"] < reset] == []
    assert any(r["received_at"] >= reset for r in log)  # the rest went after the pause
    assert set(fake.fake.accepted_counts().values()) == {1}
    assert len(fake.fake.accepted_counts()) == 200
    assert backend.stats["account_limited"] >= 1


def test_a_rejected_key_reports_what_never_left_as_not_sent(fake: RunningFake) -> None:
    from tend.delivery.base import NotSent

    faults(fake, by_message={"m0005": ["401"]})
    with backend_for(fake, max_in_flight=2) as backend:
        outcomes = submit_all(backend, [numbered_message(i) for i in range(40)])
    not_sent = [o for o in outcomes if isinstance(o, NotSent)]
    sent = {o.message_id for o in outcomes if not isinstance(o, NotSent)}
    assert not_sent and all(isinstance(o.reason, AuthRejected) for o in not_sent)
    assert sent == set(fake.fake.accepted_counts())  # a result exactly for what was accepted
    assert "m0005" in {o.message_id for o in not_sent}


def test_slow_after_comes_from_the_environment_and_must_be_positive() -> None:
    env = {"TEND_SENDGRID_API_KEY": KEY, "TEND_SENDGRID_SLOW_AFTER": "0.5"}
    assert SendGridSettings.from_env(env).slow_after == 0.5
    assert SendGridSettings.from_env({"TEND_SENDGRID_API_KEY": KEY}).slow_after == 1.0
    with pytest.raises(ConfigError, match="slow_after must be positive"):
        SendGridSettings.from_env({**env, "TEND_SENDGRID_SLOW_AFTER": "-1"})
    with pytest.raises(ConfigError, match="slow_after must be a positive number"):
        SendGridSettings(api_key=KEY, slow_after=0)
