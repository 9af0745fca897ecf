"""Kill tests: SIGKILL a real sending worker at random points, rerun, and count.

The worker is the real CLI (``tend send --delivery sendgrid``) in its own process, sending a
planned demo night over HTTP to the local SendGrid stand-in, with the contact store on SQLite or
PostgreSQL. It is killed several times, at random instants (during start-up, rendering, or with
requests in flight, when the stand-in has accepted a random number of messages), then run to the
end. The stand-in is the customer's inbox: it must never have accepted a message twice, and every
claimed message must end sent, failed or unknown (``unknown`` only for a chunk that was in
flight at a kill: at most two chunks of 25 per kill, SendGrid's chunks_in_flight).

The random seed is printed with every failure; ``TEND_KILL_SEED=N`` replays it.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tend import messages
from tend.config import ShopSettings
from tend.dev.fake_sendgrid import FaultPlan, RunningFake, run_in_thread
from tend.features import ingest
from tend.programs import plan
from tend.store.db import connect
from tend.store.tables import contact_ledger

NIGHT = dt.date(2026, 11, 20)
KEY = "SG.kill-test"
CHUNK = 25
KILLS = 4
TEND = Path(sys.executable).parent / "tend"
SEED = int(os.environ.get("TEND_KILL_SEED", time.time_ns() % 1_000_000))

pytestmark = pytest.mark.demo_shop(customers=1200, seed=23, as_of=NIGHT)


@pytest.fixture
def fake() -> Iterator[RunningFake]:
    with run_in_thread(api_key=KEY, faults=FaultPlan(latency_ms=20)) as running:
        yield running


def ledger(store_url: str) -> dict[str, dict[str, Any]]:
    with connect(store_url).connect() as conn:
        return {r["message_id"]: dict(r) for r in conn.execute(select(contact_ledger)).mappings()}


def worker(store_url: str, fake: RunningFake) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TEND_SENDGRID_API_KEY": KEY, "TEND_SENDGRID_URL": fake.url,
           "TEND_SENDGRID_CHUNK_SIZE": str(CHUNK), "TEND_SENDGRID_CHUNKS_IN_FLIGHT": "2",
           "TEND_SENDGRID_MAX_IN_FLIGHT": "8",
           "TEND_DELIVERY": "sendgrid"}
    return subprocess.Popen(
        [str(TEND), "send", "--as-of", NIGHT.isoformat(), "--batch", "0", "--delivery",
         "sendgrid", "--store", store_url],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_a_worker_killed_at_random_points_never_sends_twice_and_loses_nothing(
        demo_shop: str, store_url: str, fake: RunningFake) -> None:
    rng = random.Random(SEED)
    why = f"(TEND_KILL_SEED={SEED})"
    settings = ShopSettings.from_env({})
    ingest.run_ingest(demo_shop, store_url, NIGHT, "r1")
    planned = plan.plan_night(demo_shop, store_url, NIGHT, "r1", settings=settings,
                                 renderer=messages.default_renderer(settings), secret="s",
                                 batch_size=100_000)
    claimed = planned.claimed()
    assert planned.batches == [0] and claimed > 6 * CHUNK

    kills = 0
    for _ in range(KILLS):
        before = len(fake.fake.accepted_counts())
        if before >= claimed - CHUNK:
            break
        proc = worker(store_url, fake)
        if rng.random() < 0.3:  # any instant: start-up, rendering, the first requests
            deadline = time.monotonic() + rng.uniform(0.2, 3.0)
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.002)
        else:  # with requests in flight: after a random number of acceptances
            target = before + rng.randint(1, 3 * CHUNK)
            while len(fake.fake.accepted_counts()) < target and proc.poll() is None:
                time.sleep(0.001)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        mid = Counter(r["status"] for r in ledger(store_url).values())
        assert mid["sending"] <= 2 * CHUNK, f"more than two chunks were 'sending' {mid} {why}"

    final = worker(store_url, fake)
    out, _ = final.communicate(timeout=120)
    assert final.returncode == 0, out.decode()[-3000:]
    again = worker(store_url, fake)  # a rerun of a finished batch sends nothing new
    again.communicate(timeout=120)

    rows = ledger(store_url)
    accepted = fake.fake.accepted_counts()
    statuses = Counter(r["status"] for r in rows.values())
    assert kills >= 1, why
    assert max(accepted.values()) == 1, f"a message was accepted twice {why}"
    assert set(statuses) <= {"sent", "failed", "unknown"}, f"{statuses} {why}"
    assert sum(statuses.values()) == claimed, why
    accepted_ids = {m["tend_message_id"]: m["x_message_id"] for m in fake.fake.messages()}
    for mid, row in rows.items():
        if row["status"] == "sent":  # recorded with SendGrid's own id
            assert accepted_ids.get(mid) == row["provider_id"], f"{mid} {why}"
        if mid in accepted_ids:  # everything SendGrid took is sent, or at worst unknown
            assert row["status"] in ("sent", "unknown"), f"{mid} {row['status']} {why}"
    # SendGrid hands two chunks over at once: at most two chunks per kill become ambiguous.
    assert statuses["unknown"] <= kills * 2 * CHUNK, f"{statuses} after {kills} kills {why}"
    assert len(fake.fake.request_log()) == len(accepted), why  # no request was ever repeated
