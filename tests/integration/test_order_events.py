"""An "order placed" event on the real Redis thanks a first order through a real Airflow, and
the nightly run that sees the same order later sends no second thank-you.

The cluster (``airflow_cluster``: scheduler, dag-processor, triggerer, api-server, one Celery
worker) knows only tend_events, and schedules for real (``use_job_schedule`` on): the asset
watcher runs in the triggerer, subscribed to a channel of this test's own. Once it listens
(``PUBSUB NUMSUB``), a new customer's first order is written to the shop and announced with
``tend publish-order``; the watcher's asset event schedules tend_events, whose ``plan`` claims
the thank-you and whose ``send`` writes it to the outbox. Then ``tend night`` for the same day
(ingest, plan, send, outside Airflow) finds that thank-you already claimed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from _support import PROJECT, add_first_order, require_redis
from airflow_cluster import AirflowCluster, airflow_cluster
from sqlalchemy import select

from tend.store import migrate
from tend.store.db import connect
from tend.store.tables import contact_ledger, decision_log

TODAY = dt.datetime.now(dt.UTC).date()
TEND = Path(sys.executable).parent / "tend"
REDIS_DB = 12

pytestmark = [pytest.mark.slow, pytest.mark.postgres,
              pytest.mark.demo_shop(customers=150, seed=3, as_of=TODAY - dt.timedelta(days=1))]


def wait_for(what: str, ready: Any, cluster: AirflowCluster, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n{cluster.diagnose()}")


def thank_yous(store: str, customer_id: str) -> list[dict[str, Any]]:
    with connect(store).connect() as conn:
        return [dict(r) for r in conn.execute(select(contact_ledger).where(
            contact_ledger.c.customer_id == customer_id,
            contact_ledger.c.program == "thank_you")).mappings()]


def outbox_messages_to(outbox: Path, email: str) -> list[Path]:
    return [p for p in outbox.rglob("*.eml") if email in p.read_text(errors="replace")]


def test_an_order_event_thanks_within_the_test_and_the_night_does_not_repeat_it(
        tmp_path: Path, shop_url: str) -> None:
    import redis

    redis_url = f"{require_redis()}/{REDIS_DB}"
    channel = f"tend-test-orders-{uuid.uuid4().hex[:8]}"
    store = f"sqlite:///{tmp_path / 'store.db'}"
    migrate(store)
    outbox = tmp_path / "outbox"
    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(PROJECT / "dags" / "tend_events.py", dags / "tend_events.py")
    tend_env = {
        "TEND_STORE_URL": store, "TEND_SHOP_URL": shop_url, "TEND_OUTBOX_DIR": str(outbox),
        "TEND_SECRET_KEY": "order-events-test", "TEND_VAR_DIR": str(tmp_path / "var"),
        "TEND_ORDER_EVENTS_CHANNEL": channel,
    }
    env = {
        **tend_env,
        "AIRFLOW_CONN_TEND_SHOP": shop_url,
        "AIRFLOW_CONN_TEND_STORE": store,
        "AIRFLOW_VAR_TEND_DELIVERY": "outbox",
        "AIRFLOW_CONN_TEND_ORDER_EVENTS": json.dumps({
            "conn_type": "redis", "host": "127.0.0.1", "port": 6379,
            "extra": {"db": REDIS_DB}}),
        # Only tend_events, scheduled for real: its asset watcher is what is under test.
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "True",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
    }
    client = redis.Redis.from_url(redis_url)
    try:
        with airflow_cluster(tmp_path / "cluster", workers=1, env=env) as cluster:
            def listening() -> bool:
                return dict(client.pubsub_numsub(channel)).get(channel.encode(), 0) >= 1

            wait_for(f"the triggerer to subscribe to {channel}", listening, cluster)
            cluster.note("the watcher listens")
            ordered_at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
            add_first_order(shop_url, "C-EVT", "O-EVT", ordered_at)
            published = subprocess.run(
                [str(TEND), "publish-order", "O-EVT", "--db", shop_url, "--url", redis_url,
                 "--channel", channel], capture_output=True, text=True, timeout=60,
                env={**os.environ, **tend_env})
            assert published.returncode == 0, published.stderr
            assert json.loads(published.stdout)["customer_id"] == "C-EVT"
            cluster.note("published O-EVT")

            def finished_run() -> dict[str, Any] | None:
                runs = cluster.api("GET", "dags/tend_events/dagRuns")["dag_runs"]
                done = [r for r in runs if r["state"] in ("success", "failed")]
                return done[0] if done else None

            run = wait_for("a tend_events run", finished_run, cluster, timeout=240)
            cluster.note(f"tend_events {run['dag_run_id']}: {run['state']}")
            assert run["state"] == "success", cluster.diagnose()
            assert run["run_type"] == "asset_triggered"
            sent = thank_yous(store, "C-EVT")
            assert [(r["status"], r["as_of"]) for r in sent] == [("sent", TODAY)], sent
            assert len(outbox_messages_to(outbox, "c-evt@example.com")) == 1
    finally:
        client.close()

    night = subprocess.run(
        [str(TEND), "night", "--db", shop_url, "--store", store, "--as-of", TODAY.isoformat(),
         "--delivery", "outbox"], capture_output=True, text=True, timeout=300,
        env={**os.environ, **tend_env})
    assert night.returncode == 0, night.stderr[-3000:]
    assert len(thank_yous(store, "C-EVT")) == 1
    assert len(outbox_messages_to(outbox, "c-evt@example.com")) == 1
    with connect(store).connect() as conn:
        fates = conn.execute(select(decision_log.c.fate, decision_log.c.run_id).where(
            decision_log.c.customer_id == "C-EVT",
            decision_log.c.program == "thank_you")).all()
    assert [fate for fate, _ in fates] == ["claimed"]
    assert fates[0][1] == run["dag_run_id"], "the event's run decided it, not the night"
