"""One night end to end in the core (no scheduler): run it twice, crash it, replay it."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import insert, select

from tend import messages, reports
from tend.config import ShopSettings
from tend.delivery import DeliveryResult, DeliveryStatus, OutboxBackend, OutgoingMessage, engine
from tend.errors import DeliveryAuthError
from tend.features import ingest
from tend.programs import plan
from tend.shop import schema as s
from tend.store.db import connect
from tend.store.tables import contact_ledger, customer_features, decision_log, quarantine

NIGHT = dt.date(2026, 11, 20)
SECRET = "test-secret"

pytestmark = pytest.mark.demo_shop(customers=400, seed=11, as_of=NIGHT)


SETTINGS = ShopSettings.from_env({})


class Recorder:
    """A backend that delivers through the outbox and counts every hand-over per message."""

    name = "recorder"

    def __init__(self, directory: Path, *, explode_on_call: int | None = None,
                 auth_error: bool = False) -> None:
        self.outbox = OutboxBackend(directory)
        self.delivered: Counter[str] = Counter()
        self.calls = 0
        self.explode_on_call = explode_on_call
        self.auth_error = auth_error

    def send(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        self.calls += 1
        if self.auth_error:
            raise DeliveryAuthError("401 from the provider: check the sendgrid_default connection")
        if self.calls == self.explode_on_call:
            # The worker is killed while its requests are in flight: half of the chunk left.
            for m in messages[: len(messages) // 2]:
                self.delivered[m.message_id] += 1
            raise KeyboardInterrupt("worker killed")
        results = self.outbox.send(messages)
        for r in results:
            if r.status == DeliveryStatus.SENT:
                self.delivered[r.message_id] += 1
        return results

    def close(self) -> None:
        self.outbox.close()


def plan_night(shop_url: str, store_url: str, night: dt.date = NIGHT) -> plan.PlanResult:
    return plan.plan_night(shop_url, store_url, night, f"run-{night}", settings=SETTINGS,
                              renderer=messages.default_renderer(SETTINGS), secret=SECRET,
                              batch_size=100)


def send_all(store_url: str, planned: plan.PlanResult, backend: Recorder,
             night: dt.date = NIGHT) -> Counter[str]:
    total: Counter[str] = Counter()
    for b in planned.batches:
        total.update(engine.send_batch(store_url, night, b, backend=backend,
                                        renderer=messages.default_renderer(SETTINGS),
                                        settings=SETTINGS, chunk_size=20).counts)
    return total


def ledger_rows(store_url: str) -> dict[str, str]:
    with connect(store_url).connect() as conn:
        rows = conn.execute(select(contact_ledger.c.message_id, contact_ledger.c.status)).all()
    return {m: st for m, st in rows}


def test_a_night_sends_once_and_a_rerun_sends_nothing_new(
    shop_url: str, store_url: str, tmp_path: Path
) -> None:
    backend = Recorder(tmp_path / "outbox")
    ingest.run_ingest(shop_url, store_url, NIGHT, "r1")
    first = plan_night(shop_url, store_url)
    sent = send_all(store_url, first, backend)
    assert first.claimed() > 20
    assert sent["sent"] == first.claimed()
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == first.claimed()
    before = ledger_rows(store_url)

    ingest.run_ingest(shop_url, store_url, NIGHT, "r2")
    again = plan_night(shop_url, store_url)
    assert again.claimed() == 0
    assert again.batches == []
    assert send_all(store_url, again, backend) == Counter()
    assert ledger_rows(store_url) == before
    assert max(backend.delivered.values()) == 1
    assert "already_claimed" in set(again.fates["fate"])


def test_every_candidate_has_a_recorded_fate(shop_url: str, store_url: str) -> None:
    ingest.run_ingest(shop_url, store_url, NIGHT, "r1")
    planned = plan_night(shop_url, store_url)
    with connect(store_url).connect() as conn:
        fates = pd.DataFrame(conn.execute(select(decision_log)).mappings().all())
    assert len(fates) == planned.candidates
    assert fates["reason"].str.len().min() > 0
    assert {"claimed", "no_consent"} <= set(fates["fate"])
    claimed = fates.loc[fates["fate"] == "claimed"]
    # a claimed message is explained by its signal's own sentence
    assert not claimed["reason"].str.contains("arbitration").any()
    lapsed = claimed.loc[claimed["program"] == "winback", "reason"]
    assert len(lapsed) and lapsed.str.contains("order").all()


def test_a_worker_killed_mid_chunk_never_causes_a_duplicate(
    shop_url: str, store_url: str, tmp_path: Path
) -> None:
    ingest.run_ingest(shop_url, store_url, NIGHT, "r1")
    planned = plan_night(shop_url, store_url)
    backend = Recorder(tmp_path / "outbox", explode_on_call=2)
    with pytest.raises(KeyboardInterrupt):
        send_all(store_url, planned, backend)
    mid_crash = Counter(ledger_rows(store_url).values())
    assert mid_crash["sending"] == 20  # exactly one chunk is ambiguous

    backend.explode_on_call = None
    retry = send_all(store_url, planned, backend)
    final = Counter(ledger_rows(store_url).values())
    assert retry["unknown"] == 20
    assert final == Counter({"sent": planned.claimed() - 20, "unknown": 20})
    assert max(backend.delivered.values()) == 1  # nothing delivered twice
    assert sum(backend.delivered.values()) == planned.claimed() - 20 + 10  # lost: none claimed


def test_rejected_credentials_stop_the_run_and_keep_messages_claimed(
    shop_url: str, store_url: str, tmp_path: Path
) -> None:
    ingest.run_ingest(shop_url, store_url, NIGHT, "r1")
    planned = plan_night(shop_url, store_url)
    with pytest.raises(DeliveryAuthError, match="sendgrid_default"):
        send_all(store_url, planned, Recorder(tmp_path / "o1", auth_error=True))
    assert set(ledger_rows(store_url).values()) == {"claimed"}
    assert send_all(store_url, planned, Recorder(tmp_path / "o2"))["sent"] == planned.claimed()


def test_bad_orders_are_quarantined_and_counted_not_fatal(shop_url: str, store_url: str) -> None:
    with connect(shop_url).begin() as conn:
        some_customer = conn.execute(select(s.customers.c.customer_id).limit(1)).scalar_one()
    bad = [
        ("BAD-1", "NOBODY", "2026-10-01 10:00:00", "10.00", "unknown customer"),
        ("BAD-2", some_customer, "2026-10-01 10:00:00", "-5.00", "negative order total"),
        ("BAD-3", some_customer, "2026-10-01 10:00:00", "5000000", "absurd amount"),
        ("BAD-4", some_customer, "not a date", "10.00", "unparseable ordered_at"),
    ]
    raw = connect(shop_url).raw_connection()
    try:
        raw.executemany(
            "INSERT INTO orders (order_id, customer_id, ordered_at, total, currency) "
            "VALUES (?, ?, ?, ?, 'CAD')", [b[:4] for b in bad])
        raw.commit()
    finally:
        raw.close()
    result = ingest.run_ingest(shop_url, store_url, NIGHT, "r1")
    reasons = " | ".join(result.quarantined)
    for *_, expected in bad:
        assert expected in reasons
    with connect(store_url).connect() as conn:
        stored = conn.execute(select(quarantine.c.record_key, quarantine.c.reason)).all()
    assert {k for k, _ in stored} == {"BAD-1", "BAD-2", "BAD-3", "BAD-4"}
    assert any("quarantined" in line for line in result.lines())


def test_incremental_nights_equal_a_full_rebuild(
    shop_url: str, store_url: str, tmp_path: Path
) -> None:
    for offset in (60, 31, 30, 7, 0):
        night = NIGHT - dt.timedelta(days=offset)
        result = ingest.run_ingest(shop_url, store_url, night, f"r{offset}")
        assert result.mode == ("full" if offset == 60 else "incremental")
    incremental = _features(store_url)

    full_store = f"sqlite:///{tmp_path / 'full.db'}"
    from tend.store import migrate

    migrate(full_store)
    ingest.run_ingest(shop_url, full_store, NIGHT, "full", full=True)
    pd.testing.assert_frame_equal(incremental, _features(full_store))


def test_replaying_an_earlier_night_rebuilds_as_of_that_night(
    shop_url: str, store_url: str
) -> None:
    ingest.run_ingest(shop_url, store_url, NIGHT, "r1")
    earlier = NIGHT - dt.timedelta(days=90)
    result = ingest.run_ingest(shop_url, store_url, earlier, "replay")
    assert result.mode == "full"
    feats = _features(store_url)
    assert (feats["last_order_at"] < pd.Timestamp(earlier + dt.timedelta(days=1), tz="UTC")).all()


def test_why_tells_the_story_of_a_customer(shop_url: str, store_url: str, tmp_path: Path) -> None:
    ingest.run_ingest(shop_url, store_url, NIGHT, "r1")
    planned = plan_night(shop_url, store_url)
    send_all(store_url, planned, Recorder(tmp_path / "outbox"))
    with connect(store_url).connect() as conn:
        cid, program = conn.execute(
            select(decision_log.c.customer_id, decision_log.c.program)
            .where(decision_log.c.fate == "claimed").limit(1)).one()
    story = "\n".join(reports.why_lines(store_url, cid, NIGHT))
    assert program in story and "claimed" in story and ": sent (outbox:" in story
    assert "no decisions recorded" in reports.why_lines(store_url, "NOBODY")[0]


def test_summary_counts_match_the_ledger(shop_url: str, store_url: str, tmp_path: Path) -> None:
    ingest.run_ingest(shop_url, store_url, NIGHT, "r1")
    planned = plan_night(shop_url, store_url)
    send_all(store_url, planned, Recorder(tmp_path / "outbox"))
    text = "\n".join(reports.summary_lines(store_url, NIGHT))
    assert f"candidates  {planned.candidates:,}" in text
    assert f"sent        {planned.claimed():,}" in text
    assert "no_consent" in text


def _features(url: str) -> pd.DataFrame:
    with connect(url).connect() as conn:
        df = pd.DataFrame(conn.execute(select(customer_features)).mappings().all())
    for col in ("first_order_at", "last_order_at"):  # SQLite gives naive UTC, PostgreSQL aware
        df[col] = pd.to_datetime(df[col], utc=True)
    return (df.drop(columns=["as_of", "updated_at"]).sort_values("customer_id")
            .reset_index(drop=True))


def test_an_empty_shop_night_is_quiet(tmp_path: Path, store_url: str) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    s.metadata.create_all(connect(url))
    with connect(url).begin() as conn:
        conn.execute(insert(s.products).values(sku="X", name="X", category="x", price=1))
    result = ingest.run_ingest(url, store_url, NIGHT, "r")
    assert result.changed_customers == 0
    assert plan_night(url, store_url).candidates == 0
