"""send_batch + the ledger + the real SendGrid backend against the local stand-in.

A demo night is planned for real (demo shop -> ingest -> plan), then sent through HTTP to the
stand-in with faults. The stand-in's request log is the truth: the ledger must agree with it for
every message, and no message may ever be accepted twice. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from _support import DemoShops, private_pg_schema
from sqlalchemy import select, update

from tend import messages
from tend.config import ShopSettings
from tend.delivery import DeliveryResult, OutgoingMessage, engine
from tend.delivery.sendgrid import SendGridBackend, SendGridSettings
from tend.dev.fake_sendgrid import FaultPlan, RunningFake, run_in_thread
from tend.errors import DeliveryAuthError, DeliveryError
from tend.features import ingest
from tend.programs import plan
from tend.programs.caps import SendWindow
from tend.store import ledger as store_ledger
from tend.store import migrate
from tend.store.db import connect
from tend.store.tables import contact_ledger

NIGHT = dt.date(2026, 11, 20)
SETTINGS = ShopSettings.from_env({})
KEY = "SG.send-batch-test"
AMBIGUOUS = {"500", "drop", "reset"}
ALWAYS_OPEN = SendWindow(dt.time(0, 0), dt.time(23, 59, 59))


@pytest.fixture(scope="module",
                params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def planned_night(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                  demo_shops: DemoShops) -> Iterator[tuple[str, plan.PlanResult]]:
    """A demo night planned once per backend; each test starts from its claimed ledger."""
    folder = tmp_path_factory.mktemp("night")
    shop_url = demo_shops(customers=400, seed=11, as_of=NIGHT)
    with ExitStack() as stack:
        store_url = (f"sqlite:///{folder / 'store.db'}" if request.param == "sqlite"
                     else stack.enter_context(private_pg_schema()))
        yield store_url, _plan(shop_url, store_url)


def _plan(shop_url: str, store_url: str) -> plan.PlanResult:
    migrate(store_url)
    ingest.run_ingest(shop_url, store_url, NIGHT, "r1")
    result = plan.plan_night(shop_url, store_url, NIGHT, "run-1", settings=SETTINGS,
                                renderer=messages.default_renderer(SETTINGS), secret="s",
                                batch_size=100)
    assert result.claimed() > 50
    return result


@pytest.fixture
def store_url(planned_night: tuple[str, plan.PlanResult]) -> str:
    """The planned store, every message back to 'claimed' (as right after planning)."""
    url = planned_night[0]
    with connect(url).begin() as conn:
        conn.execute(update(contact_ledger).values(status="claimed", provider_id=None, error=None,
                                                   sending_at=None, finished_at=None))
    return url


@pytest.fixture
def planned(planned_night: tuple[str, plan.PlanResult], store_url: str) -> plan.PlanResult:
    return planned_night[1]


@pytest.fixture
def fake() -> Iterator[RunningFake]:
    with run_in_thread(api_key=KEY, faults=FaultPlan(latency_ms=1)) as running:
        yield running


def sendgrid_settings(fake: RunningFake, **changes: Any) -> SendGridSettings:
    # A read timeout no answer reaches even on a loaded machine (a test that needs one sets
    # it), and slow replies give their slot back early, so those paths run in every test.
    opts: dict[str, Any] = {"api_key": KEY, "base_url": fake.url, "chunk_size": 20,
                            "max_in_flight": 8, "read_timeout": 10, "slow_after": 0.1,
                            "backoff_base": 0.01, "backoff_max": 0.05, "max_attempts": 8,
                            **changes}
    return SendGridSettings(**opts)


def sendgrid(fake: RunningFake, **changes: Any) -> SendGridBackend:
    return SendGridBackend(sendgrid_settings(fake, **changes))


def sending_at_handover(store_url: str, messages: Sequence[OutgoingMessage]) -> set[str]:
    """The ledger's 'sending' rows when the engine hands ``messages`` over, which must be
    among them (marked before they leave)."""
    sending = {m for m, r in ledger(store_url).items() if r["status"] == "sending"}
    assert {m.message_id for m in messages} <= sending  # marked before it was handed over
    return sending


def send_all(store_url: str, planned: plan.PlanResult, backend: Any,
             **kwargs: Any) -> Counter[str]:
    total: Counter[str] = Counter()
    kwargs.setdefault("send_window", ALWAYS_OPEN)
    for b in planned.batches:
        total.update(engine.send_batch(store_url, NIGHT, b, backend=backend,
                                        renderer=messages.default_renderer(SETTINGS),
                                        settings=SETTINGS,
                                        **kwargs).counts)
    return total


def ledger(store_url: str) -> dict[str, dict[str, Any]]:
    with connect(store_url).connect() as conn:
        rows = conn.execute(select(contact_ledger)).mappings().all()
    return {r["message_id"]: dict(r) for r in rows}


def test_ten_percent_mixed_faults_every_message_ends_in_the_right_state(
        planned: plan.PlanResult, store_url: str, fake: RunningFake) -> None:
    kinds = ("429", "503", "500", "slow", "drop", "reset", "400")
    # 10% random faults (seeded per message), plus one of each kind so every path is exercised.
    # A slow reply comes after the slot was given back but long before the read timeout, so
    # every outcome is decided by the stand-in's answer, never by how loaded the machine is.
    ids = sorted(ledger(store_url))
    fake.fake.set_faults(FaultPlan(
        rate=0.1, kinds=kinds, seed=6, reset_ms=50, slow_ms=300, latency_ms=1,
        by_message={mid: [kind] for mid, kind in zip(ids[::9], kinds, strict=False)}))
    with sendgrid(fake) as backend:
        counts = send_all(store_url, planned, backend)

    requests: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in fake.fake.request_log():
        requests[r["tend_message_id"]].append(r)
    rows = ledger(store_url)
    injected = Counter(r["outcome"] for rs in requests.values() for r in rs)
    assert {"429", "503", "500", "slow", "drop", "reset", "400"} <= set(injected), injected
    assert set(requests) == set(rows)  # every claimed message was tried...
    for mid, row in rows.items():
        outcomes = [r["outcome"] for r in requests[mid]]
        last = requests[mid][-1]
        # ...retried only after answers that prove SendGrid did not take it...
        assert all(o in ("429", "503") for o in outcomes[:-1]), (mid, outcomes)
        # ...and it ends in the state the last answer implies.
        if last["outcome"] in ("202", "slow"):
            assert (row["status"], row["provider_id"]) == ("sent", last["x_message_id"])
        elif last["outcome"] in AMBIGUOUS:
            assert row["status"] == "unknown", (mid, outcomes, row)
        else:
            assert last["outcome"] == "400" and row["status"] == "failed"
            assert row["error"].startswith("SendGrid 400: content: ")
    assert max(fake.fake.accepted_counts().values()) == 1  # no duplicate, ever
    assert counts == Counter(r["status"] for r in rows.values())
    assert counts["unknown"] > 0 and counts["failed"] > 0 and counts["sent"] > 0


def test_rejected_key_mid_chunk_releases_only_what_never_left(
        planned: plan.PlanResult, store_url: str, fake: RunningFake) -> None:
    ids = sorted(ledger(store_url))
    fake.fake.set_faults(FaultPlan(latency_ms=1, by_message={ids[30]: ["401"]}))
    with sendgrid(fake) as backend, \
            pytest.raises(DeliveryAuthError, match="sendgrid_default"):
        send_all(store_url, planned, backend)
    rows = ledger(store_url)
    accepted = fake.fake.accepted_counts()
    statuses = Counter(r["status"] for r in rows.values())
    assert set(statuses) == {"sent", "claimed"}  # nothing left 'sending', nothing lost
    assert {m for m, r in rows.items() if r["status"] == "sent"} == set(accepted)
    assert rows[ids[30]]["status"] == "claimed"
    # The batches sent before the one the key was refused in went out whole.
    stopped_in = planned.batches.index(rows[ids[30]]["batch_id"])
    assert all(r["status"] == "sent" for r in rows.values()
               if r["batch_id"] in planned.batches[:stopped_in])

    fake.fake.set_faults(FaultPlan(latency_ms=1))
    with sendgrid(fake) as backend:
        send_all(store_url, planned, backend)
    assert Counter(r["status"] for r in ledger(store_url).values()) == {"sent": len(rows)}
    assert set(fake.fake.accepted_counts().values()) == {1}


def test_an_unavailable_sendgrid_leaves_messages_claimed_for_the_retry(
        planned: plan.PlanResult, store_url: str, fake: RunningFake) -> None:
    fake.fake.set_faults(FaultPlan(latency_ms=1, rate=1.0, kinds=("503",)))
    with sendgrid(fake, max_attempts=2) as backend, \
            pytest.raises(DeliveryError, match="unavailable after 2 attempts"):
        send_all(store_url, planned, backend)
    assert {r["status"] for r in ledger(store_url).values()} == {"claimed"}
    fake.fake.set_faults(FaultPlan(latency_ms=1))
    with sendgrid(fake) as backend:
        assert send_all(store_url, planned, backend)["sent"] == planned.claimed()


class Inspecting:
    """Delegates to a backend, checking the ledger every time a chunk is handed over."""

    name = "inspecting"
    chunk_size = 15

    def __init__(self, store_url: str, inner: Any, chunks_in_flight: int = 1) -> None:
        self.store_url, self.inner = store_url, inner
        self.chunks_in_flight = chunks_in_flight
        self.sending_seen: list[int] = []
        self.sizes: list[int] = []

    def send(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        sending = sending_at_handover(self.store_url, messages)
        if self.chunks_in_flight == 1:
            assert sending == {m.message_id for m in messages}  # ...and nothing else is out
        self.sending_seen.append(len(sending))
        self.sizes.append(len(messages))
        return self.inner.send(messages)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize("window", [1, 2])
def test_at_most_the_backends_window_of_chunks_is_sending(
        planned: plan.PlanResult, store_url: str, fake: RunningFake, window: int) -> None:
    fake.fake.set_faults(FaultPlan(latency_ms=5))
    backend = Inspecting(store_url, sendgrid(fake), chunks_in_flight=window)
    send_all(store_url, planned, backend)
    backend.close()
    assert max(backend.sending_seen) <= 15 * window  # the bound on ambiguous messages
    if window == 2:
        assert max(backend.sending_seen) > 15  # two chunks really were in flight together
    assert sum(backend.sizes) == planned.claimed()
    assert {r["status"] for r in ledger(store_url).values()} == {"sent"}


class WindowWatch(SendGridBackend):
    """The real backend, checking the ledger each time the engine hands it a slice."""

    def __init__(self, store_url: str, settings: SendGridSettings) -> None:
        super().__init__(settings)
        self.store_url = store_url
        self.sending_seen: list[int] = []

    def submit(self, messages: Sequence[OutgoingMessage], done: Any) -> None:
        sending = sending_at_handover(self.store_url, messages)
        self.sending_seen.append(len(sending))
        super().submit(messages, done)


def test_the_window_refills_while_slow_replies_wait_and_stays_bounded(
        planned: plan.PlanResult, store_url: str, fake: RunningFake) -> None:
    """Slices of 10, four at once: while a third of the requests answer late, new slices keep
    leaving, and never more than the window (40) is 'sending'."""
    fake.fake.set_faults(FaultPlan(latency_ms=1, rate=0.3, kinds=("slow",), seed=3, slow_ms=400))
    settings = sendgrid_settings(fake, chunk_size=10, chunks_in_flight=4, max_in_flight=4)
    backend = WindowWatch(store_url, settings)
    with backend:
        counts = send_all(store_url, planned, backend)
    assert counts == Counter(sent=planned.claimed())
    assert max(backend.sending_seen) <= 40
    assert max(backend.sending_seen) > 10  # slices really overlapped
    assert set(fake.fake.accepted_counts().values()) == {1}


def test_an_interrupt_mid_window_records_what_was_in_flight(
        planned: plan.PlanResult, store_url: str, fake: RunningFake,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM (KeyboardInterrupt here) while slow requests are out: the send stops handing
    over, records every answer that comes, and leaves nothing 'sending'."""
    fake.fake.set_faults(FaultPlan(latency_ms=1, rate=0.5, kinds=("slow",), seed=4, slow_ms=300))
    real = engine._Pipeline._hand_over
    handed = {"n": 0}

    def interrupt_fourth(self: Any, chunk: Any) -> None:
        handed["n"] += 1
        if handed["n"] == 4:
            raise KeyboardInterrupt
        real(self, chunk)

    monkeypatch.setattr(engine._Pipeline, "_hand_over", interrupt_fourth)
    with sendgrid(fake, chunk_size=10, chunks_in_flight=4) as backend, \
            pytest.raises(KeyboardInterrupt):
        send_all(store_url, planned, backend)
    statuses = Counter(r["status"] for r in ledger(store_url).values())
    assert statuses == {"sent": 30, "claimed": planned.claimed() - 30}
    assert len(fake.fake.accepted_counts()) == 30


class Exploding:
    name = "exploding"
    chunk_size = 10

    def send(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        raise DeliveryError("the provider library blew up mid-chunk")

    def close(self) -> None:
        pass


def test_a_backend_that_cannot_say_what_left_makes_its_chunk_unknown(
        planned: plan.PlanResult, store_url: str) -> None:
    with pytest.raises(DeliveryError, match="blew up"):
        send_all(store_url, planned, Exploding())
    statuses = Counter(r["status"] for r in ledger(store_url).values())
    assert statuses == {"unknown": 10, "claimed": planned.claimed() - 10}


def test_progress_lines_and_a_summary_table(
        planned: plan.PlanResult, store_url: str, fake: RunningFake,
        caplog: pytest.LogCaptureFixture) -> None:
    ticks = iter(range(0, 10_000, 7))  # every clock reading is 7 s after the previous one
    caplog.set_level(logging.INFO, logger="tend")
    with sendgrid(fake) as backend:
        result = engine.send_batch(store_url, NIGHT, planned.batches[0], backend=backend,
                                    renderer=messages.default_renderer(SETTINGS), settings=SETTINGS,
                                    clock=lambda: float(next(ticks)), send_window=ALWAYS_OPEN)
    progress = [r.getMessage() for r in caplog.records if "done (sent" in r.getMessage()]
    assert progress, caplog.text
    assert "msg/s" in progress[-1] and "ETA" in progress[-1]
    assert f"/{result.total:,} done" in progress[-1]
    table = result.table_lines()
    assert table[0].split() == ["batch", str(planned.batches[0]), "(sendgrid)", "messages"]
    assert table[2].split() == ["sent", f"{result.counts['sent']:,}"]
    assert [line.split()[0] for line in table[2:5]] == ["sent", "failed", "unknown"]
    assert "render" in table[-1] and "waiting for sendgrid" in table[-1]
    assert caplog.records[-1].getMessage() == table[-1]  # the task log ends with the table


def test_quiet_hours_schedule_delivery_for_the_next_opening(
        planned: plan.PlanResult, store_url: str, fake: RunningFake) -> None:
    three_am_utc = dt.datetime(2026, 11, 21, 3, 0, tzinfo=dt.UTC)  # 22:00 in Montréal
    with sendgrid(fake) as backend:
        engine.send_batch(store_url, NIGHT, planned.batches[0], backend=backend,
                           renderer=messages.default_renderer(SETTINGS), settings=SETTINGS,
                           send_window=SendWindow(dt.time(9), dt.time(20)),
                           wall_clock=lambda: three_am_utc)
    window = SendWindow(dt.time(9), dt.time(20))
    with connect(store_url).connect() as conn:
        contexts = store_ledger.contexts_of(conn, list(ledger(store_url)))
    seen = {}
    for m in fake.fake.messages():
        tz = json.loads(contexts[m["tend_message_id"]]).get("timezone")
        expected = window.next_send_time(three_am_utc, tz, "America/Toronto")
        assert m["send_at"] == (None if expected is None else int(expected.timestamp()))
        seen[tz] = m["send_at"]
    nine_am_toronto = dt.datetime(2026, 11, 21, 14, 0, tzinfo=dt.UTC)  # EST = UTC-5
    assert seen["America/Toronto"] == int(nine_am_toronto.timestamp())
    assert len(set(seen.values())) > 1  # each customer's own morning


def test_transactional_mail_is_not_held_by_quiet_hours() -> None:
    ctx = ('{"template": "winback", "locale": "en", "timezone": "America/Toronto", '
           '"customer": {"email": "a@example.com"}}')
    row = SimpleNamespace(message_id="m", customer_id="C1", program="receipt",
                          kind="transactional", run_id="r", context=ctx)

    class FakeRenderer:
        def render(self, *args: Any, **kwargs: Any) -> Any:
            return type("R", (), {"subject": "s", "text": "t", "html": "h", "headers": {}})()

    night = dt.datetime(2026, 11, 21, 3, 0, tzinfo=dt.UTC)
    window = SendWindow(dt.time(9), dt.time(20))
    assert engine._message(row, FakeRenderer(), SETTINGS, window, night).send_at is None
    row.kind = "marketing"
    assert engine._message(row, FakeRenderer(), SETTINGS, window, night).send_at == (
        dt.datetime(2026, 11, 21, 14, 0, tzinfo=dt.UTC))


def test_results_of_a_finished_chunk_are_recorded_even_if_the_worker_is_interrupted(
        planned: plan.PlanResult, store_url: str, fake: RunningFake,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM (KeyboardInterrupt here) while the next chunk renders: the chunk in flight is
    still recorded, so it does not become 'unknown' on the retry."""
    calls = {"n": 0}
    real = engine._message

    def interrupt_second_chunk(*args: Any, **kwargs: Any) -> OutgoingMessage:
        calls["n"] += 1
        if calls["n"] == 25:  # rendering the second chunk of 20
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "_message", interrupt_second_chunk)
    with sendgrid(fake) as backend, pytest.raises(KeyboardInterrupt):
        send_all(store_url, planned, backend)
    statuses = Counter(r["status"] for r in ledger(store_url).values())
    assert statuses == {"sent": 20, "claimed": planned.claimed() - 20}


def test_a_bounce_received_between_planning_and_sending_stops_that_message(
        planned: plan.PlanResult, store_url: str, fake: RunningFake, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SendGrid reports (signed, over HTTP to a real tend serve) that last week's message to a
    customer bounced; tonight's message to them, claimed already, is not sent."""
    import httpx
    from _support import WebhookSigner, add_ledger_messages, running_service

    from tend.store.tables import message_events, suppressions

    signer = WebhookSigner.new()
    monkeypatch.setenv("TEND_SENDGRID_WEBHOOK_KEY", signer.public_key)
    rows = ledger(store_url)
    target = sorted(rows)[len(rows) // 2]  # in the middle of a batch, not its first chunk
    customer = rows[target]["customer_id"]
    last_week = "e" * 32
    add_ledger_messages(store_url, [{"message_id": last_week, "customer_id": customer}],
                        as_of=NIGHT - dt.timedelta(days=7))
    body = json.dumps([{"event": "bounce", "type": "bounce", "sg_event_id": "b-1",
                        "timestamp": 1_790_000_000, "email": "x@example.com",
                        "tend_message_id": last_week}]).encode()
    try:
        with running_service(store_url, tmp_path) as svc:
            r = httpx.post(f"{svc.url}/sendgrid/events", content=body,
                           headers=signer.headers(body))
            assert r.status_code == 200
        with sendgrid(fake) as backend:
            counts = send_all(store_url, planned, backend)
        after = ledger(store_url)
        assert after[target]["status"] == "failed"
        assert after[target]["error"].startswith("suppressed after planning (hard bounce)")
        assert target not in fake.fake.accepted_counts()
        assert counts["suppressed"] == 1 and counts["sent"] == planned.claimed() - 1
    finally:
        with connect(store_url).begin() as conn:
            conn.execute(contact_ledger.delete().where(contact_ledger.c.message_id == last_week))
            conn.execute(suppressions.delete())
            conn.execute(message_events.delete())


def test_a_pause_or_an_offers_opt_out_chosen_after_planning_stops_those_messages(
        planned: plan.PlanResult, store_url: str, fake: RunningFake) -> None:
    """The preferences page between plan and send: a customer who takes a break gets none of
    tonight's marketing; one who opts out of offers keeps a reminder but not an offer; a
    pause already over, and service mail, go as planned."""
    from tend.programs.consent import REMINDER_SIGNALS
    from tend.store import preferences
    from tend.store.tables import preferences as preferences_table

    rows = ledger(store_url)
    with connect(store_url).connect() as conn:
        contexts = {m: json.loads(c) for b in planned.batches
                    for m, c in store_ledger.batch_contexts(conn, NIGHT, b).items()}
    signal = {m: contexts[m]["signal"]["name"] for m in rows}
    by_customer: dict[str, list[str]] = defaultdict(list)
    for m, r in sorted(rows.items()):
        by_customer[r["customer_id"]].append(m)
    marketing = [c for c, ms in by_customer.items()
                 if all(rows[m]["kind"] == "marketing" for m in ms)]
    offer = next(c for c in marketing if signal[by_customer[c][0]] not in REMINDER_SIGNALS)
    reminder = next(c for c in marketing if signal[by_customer[c][0]] in REMINDER_SIGNALS)
    paused, past = [c for c in marketing if c not in (offer, reminder)][:2]
    service = next(c for c, ms in by_customer.items()
                   if all(rows[m]["kind"] == "service" for m in ms))
    now = store_ledger.now()
    today = dt.datetime.now(dt.UTC).date()
    chosen = {paused: preferences.Preferences(paused_until=today + dt.timedelta(days=30)),
              past: preferences.Preferences(paused_until=today),
              service: preferences.Preferences(paused_until=today + dt.timedelta(days=30)),
              offer: preferences.Preferences(offers_opt_out=True),
              reminder: preferences.Preferences(offers_opt_out=True)}
    try:
        with connect(store_url).begin() as conn:
            for customer, prefs in chosen.items():
                preferences.save(conn, customer, prefs, now=now)
        with sendgrid(fake) as backend:
            counts = send_all(store_url, planned, backend)
        after = ledger(store_url)
        stopped = {after[m]["customer_id"]: after[m]["error"] for m in after
                   if after[m]["status"] == "failed"}
        assert set(stopped) == {paused, offer}
        assert stopped[paused].startswith("preferences changed after planning (the customer "
                                          "paused marketing until")
        assert "opted out of offers" in stopped[offer]
        assert all(after[m]["status"] == "sent"
                   for c in (past, service, reminder) for m in by_customer[c])
        assert counts["suppressed"] == len(by_customer[paused]) + len(by_customer[offer])
        assert counts["sent"] == planned.claimed() - counts["suppressed"]
    finally:
        with connect(store_url).begin() as conn:
            conn.execute(preferences_table.delete())


def test_smtp_keeps_each_message_claimed_until_its_customers_quiet_hours_end(
        planned: plan.PlanResult, store_url: str) -> None:
    """SMTP delivers what it is handed at once, so quiet hours are kept by the engine: a
    message outside the window in its customer's timezone stays claimed, and the attempt at
    the first opening the result names sends those whose window is open by then. Attempt by
    attempt, every message leaves inside its customer's window, once."""
    from _support import smtp_inbox

    from tend import config
    from tend.delivery.smtp import SmtpBackend, SmtpSettings

    window = SendWindow(dt.time(9), dt.time(20))
    with connect(store_url).connect() as conn:
        contexts = {m: json.loads(c) for b in planned.batches
                    for m, c in store_ledger.batch_contexts(conn, NIGHT, b).items()}
    kind = {m: r["kind"] for m, r in ledger(store_url).items()}
    zone = {m: c.get("timezone") for m, c in contexts.items()}
    clock = dt.datetime(2026, 11, 21, 3, 0, tzinfo=dt.UTC)  # the night's run: dark in America
    sent_at: dict[str, dt.datetime] = {}
    with smtp_inbox() as (inbox, port):
        backend = SmtpBackend(SmtpSettings(host="127.0.0.1", port=port))
        for attempt in range(48):
            held, first = 0, None
            for b in planned.batches:
                result = engine.send_batch(store_url, NIGHT, b, backend=backend,
                                           renderer=messages.default_renderer(SETTINGS),
                                           settings=SETTINGS, send_window=window,
                                           wall_clock=lambda c=clock: c)
                held += result.held
                if result.held_until is not None:
                    first = min(first or result.held_until, result.held_until)
            for m, r in ledger(store_url).items():
                if r["status"] == "sent":
                    sent_at.setdefault(m, clock)
            if attempt == 0:
                assert 0 < held < len(kind) and first is not None and first > clock
            if not held:
                break
            assert first is not None and first > clock
            clock = first
        backend.close()
        assert not held, "every message left within two days of attempts"
        assert inbox.counts() == dict.fromkeys(kind, 1)  # each once, none lost
    assert set(sent_at) == set(kind)
    for m, at in sent_at.items():
        if kind[m] == "transactional":
            continue
        assert window.next_send_time(at, zone[m], config.business_timezone()) is None, (
            m, at, zone[m])


def test_a_sandbox_rehearsal_counts_nowhere_and_the_real_send_follows(
        planned: plan.PlanResult, store_url: str, fake: RunningFake,
        caplog: pytest.LogCaptureFixture) -> None:
    claimed = len(ledger(store_url))
    caplog.set_level(logging.INFO, logger="tend")
    with sendgrid(fake, sandbox=True, read_timeout=10) as backend:
        results = [engine.send_batch(store_url, NIGHT, b, backend=backend,
                                     renderer=messages.default_renderer(SETTINGS),
                                     settings=SETTINGS, send_window=ALWAYS_OPEN)
                   for b in planned.batches]
    assert Counter(r["status"] for r in ledger(store_url).values()) == Counter(claimed=claimed)
    assert sum(sum(r.rehearsal.values()) for r in results) == claimed
    assert not any(r.counts for r in results)
    assert "rehearsal" in caplog.text and "back to 'claimed'" in caplog.text
    assert fake.fake.accepted_counts() == {}  # the stand-in delivers nothing in sandbox mode
    with sendgrid(fake, read_timeout=10) as backend:  # the real run sends every message once
        assert send_all(store_url, planned, backend) == Counter(sent=claimed)
    assert set(fake.fake.accepted_counts().values()) == {1}


def test_the_outbox_resolves_what_a_crash_left_unknown(
        planned: plan.PlanResult, store_url: str, tmp_path: Any) -> None:
    from tend.delivery import OutboxBackend

    outbox = OutboxBackend(tmp_path / "outbox")
    ids = sorted(ledger(store_url))
    went, never = ids[:10], ids[10:20]
    # A crash: twenty messages left 'sending'; ten of them had been written, and one of the
    # other ten was cut off halfway (a temporary file, never renamed).
    assert send_all(store_url, planned, outbox)["sent"] == len(ids)
    for mid in never:
        outbox.path_for(mid).unlink()
    (outbox.directory / f".{never[0]}.abc.tmp").write_bytes(b"half a message")
    with connect(store_url).begin() as conn:
        conn.execute(update(contact_ledger)
                     .where(contact_ledger.c.message_id.in_(went + never))
                     .values(status="sending", provider_id=None))
    results = [engine.send_batch(store_url, NIGHT, b, backend=outbox,
                                 renderer=messages.default_renderer(SETTINGS), settings=SETTINGS,
                                 send_window=ALWAYS_OPEN) for b in planned.batches]
    assert sum(r.recovered_unknown for r in results) == 20
    assert sum(r.resolved_sent for r in results) == 10
    assert sum(r.resolved_released for r in results) == 10
    assert sum(r.counts["sent"] for r in results) == 10  # the ten that never left, sent now
    assert not any(r.unknown_left or r.warning_lines() for r in results)
    rows = ledger(store_url)
    assert Counter(r["status"] for r in rows.values()) == Counter(sent=len(ids))
    assert {p.stem for p in outbox.directory.glob("*.eml")} == set(ids)
    assert not list(outbox.directory.glob(".*.tmp"))
    assert rows[went[0]]["provider_id"] == f"outbox:{went[0]}.eml"


def test_unknown_messages_lead_the_send_result_with_the_reconcile_command(
        planned: plan.PlanResult, store_url: str, fake: RunningFake) -> None:
    ids = sorted(ledger(store_url))
    fake.fake.set_faults(FaultPlan(latency_ms=1, by_message={ids[0]: ["500"]}))
    with sendgrid(fake) as backend:
        results = [engine.send_batch(store_url, NIGHT, b, backend=backend,
                                     renderer=messages.default_renderer(SETTINGS),
                                     settings=SETTINGS, send_window=ALWAYS_OPEN)
                   for b in planned.batches]
    [hit] = [r for r in results if r.unknown_left]
    lines = hit.lines()
    assert lines[0].startswith(f"WARNING: 1 message(s) of batch {hit.batch_id} of {NIGHT}")
    assert any(f"tend reconcile --as-of {NIGHT} --batch {hit.batch_id} --release" in line
               for line in lines[:5])
