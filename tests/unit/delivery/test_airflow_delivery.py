"""The Airflow glue for delivery: connections -> backend settings, the send task, the pool.

Connections are given the way Airflow documents (``AIRFLOW_CONN_SENDGRID_DEFAULT``); outside a
task ``Connection.get`` reads them from the environment-variable secrets backend, so no metadata
database is needed. The send task body runs for real against the local SendGrid stand-in.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from _support import PROJECT, DemoShops
from sqlalchemy import select, update

from tend import messages
from tend.config import ShopSettings
from tend.delivery.outbox import OutboxBackend
from tend.delivery.sendgrid import SendGridBackend
from tend.delivery.smtp import SmtpBackend
from tend.dev.fake_sendgrid import FaultPlan, run_in_thread
from tend.errors import ConfigError
from tend.features import ingest
from tend.programs import plan
from tend.store import migrate
from tend.store.db import connect
from tend.store.tables import contact_ledger

NIGHT = dt.date(2026, 11, 20)
KEY = "SG.airflow-test-key"


@pytest.fixture
def tend_airflow(airflow_sdk: ModuleType, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    for var in ("AIRFLOW_CONN_SENDGRID_DEFAULT", "AIRFLOW_CONN_SMTP_DEFAULT", "TEND_DELIVERY",
                "TEND_SENDGRID_API_KEY", "SENDGRID_API_KEY", "TEND_SENDGRID_URL",
                "TEND_SENDGRID_SANDBOX", "TEND_SMTP_URL"):
        monkeypatch.delenv(var, raising=False)
    import tend_airflow.delivery
    import tend_airflow.tasks

    return tend_airflow


def run(conf: dict[str, Any] | None = None, params: dict[str, Any] | None = None
        ) -> dict[str, Any]:
    pushed: dict[str, Any] = {}
    ti = SimpleNamespace(pushed=pushed, xcom_push=lambda key, value: pushed.update({key: value}))
    return {"dag_run": SimpleNamespace(conf=conf or {}), "params": params or {},
            "run_id": "manual__test", "ti": ti}


def test_sendgrid_settings_from_the_connection(tend_airflow: ModuleType,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SENDGRID_DEFAULT", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": 8089, "password": KEY,
        "extra": {"asm_group_id": 12, "chunk_size": 250}}))
    s = tend_airflow.delivery.sendgrid_settings(run())
    assert (s.api_key, s.base_url, s.asm_group_id, s.chunk_size, s.sandbox) == (
        KEY, "http://127.0.0.1:8089", 12, 250, False)
    assert tend_airflow.delivery.sendgrid_settings(run({"sendgrid_sandbox": True})).sandbox is True


def test_the_sandbox_param_switches_the_run_only_when_set(
        tend_airflow: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    def sandbox(conn_sandbox: bool, **run_kwargs: Any) -> bool:
        monkeypatch.setenv("AIRFLOW_CONN_SENDGRID_DEFAULT", json.dumps({
            "conn_type": "http", "password": KEY, "extra": {"sandbox_mode": conn_sandbox}}))
        return tend_airflow.delivery.sendgrid_settings(run(**run_kwargs)).sandbox

    # The trigger form's switch turns sandbox mode on for the run.
    assert sandbox(False, params={"sendgrid_sandbox": True}) is True
    # Left untouched it does not ask: the connection's setting stays. The form submits every
    # Param into the conf, so the untouched switch arrives there as null too.
    form_conf = {"as_of": None, "sendgrid_sandbox": None}
    assert sandbox(True, params={"sendgrid_sandbox": None}, conf=form_conf) is True
    assert sandbox(False, params={"sendgrid_sandbox": None}, conf=form_conf) is False
    # Switched off explicitly (the form, or --conf), the run sends for real.
    assert sandbox(True, params={"sendgrid_sandbox": False},
                   conf={"as_of": None, "sendgrid_sandbox": False}) is False
    assert sandbox(True, conf={"sendgrid_sandbox": False}) is False
    assert sandbox(False, conf={"sendgrid_sandbox": "true"}) is True
    with pytest.raises(ConfigError, match="sendgrid_sandbox must be true or false"):
        sandbox(False, conf={"sendgrid_sandbox": "maybe"})


def test_sendgrid_connection_as_a_uri(tend_airflow: ModuleType,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SENDGRID_DEFAULT", f"sendgrid://:{KEY}@")
    s = tend_airflow.delivery.sendgrid_settings(run())
    assert (s.api_key, s.base_url) == (KEY, "https://api.sendgrid.com")


def test_without_the_connection_the_environment_is_read(
        tend_airflow: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="sendgrid_default"):
        tend_airflow.delivery.sendgrid_settings(run())
    monkeypatch.setenv("TEND_SENDGRID_API_KEY", KEY)
    assert tend_airflow.delivery.sendgrid_settings(run()).api_key == KEY


def test_the_backend_follows_tend_delivery(tend_airflow: ModuleType, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEND_OUTBOX_DIR", str(tmp_path))
    monkeypatch.setenv("TEND_DELIVERY", "outbox")
    assert isinstance(tend_airflow.delivery.delivery_backend(run()), OutboxBackend)
    monkeypatch.setenv("TEND_DELIVERY", "smtp")
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", "smtp://tend:pw@mail.example:587")
    smtp = tend_airflow.delivery.delivery_backend(run())
    assert isinstance(smtp, SmtpBackend)
    assert (smtp.settings.host, smtp.settings.port, smtp.settings.starttls) == (
        "mail.example", 587, True)
    monkeypatch.setenv("TEND_DELIVERY", "sendgrid")
    monkeypatch.setenv("AIRFLOW_CONN_SENDGRID_DEFAULT", f"http://:{KEY}@127.0.0.1:9")
    sg = tend_airflow.delivery.delivery_backend(run())
    assert isinstance(sg, SendGridBackend) and sg.settings.base_url == "http://127.0.0.1:9"
    sg.close()


@pytest.fixture(scope="module")
def planned_store(tmp_path_factory: pytest.TempPathFactory, demo_shops: DemoShops
                  ) -> tuple[str, list[int]]:
    shop = demo_shops(customers=250, seed=5, as_of=NIGHT)
    store = f"sqlite:///{tmp_path_factory.mktemp('night') / 'store.db'}"
    migrate(store)
    settings = ShopSettings.from_env({})
    ingest.run_ingest(shop, store, NIGHT, "r1")
    planned = plan.plan_night(shop, store, NIGHT, "r1", settings=settings,
                                 renderer=messages.default_renderer(settings),
                                 secret="s", batch_size=40)
    return store, planned.batches


@pytest.fixture
def claimed_night(planned_store: tuple[str, list[int]],
                  monkeypatch: pytest.MonkeyPatch) -> tuple[str, list[int]]:
    store, batches = planned_store
    with connect(store).begin() as conn:
        conn.execute(update(contact_ledger).values(status="claimed", provider_id=None, error=None,
                                                   sending_at=None, finished_at=None))
    monkeypatch.setenv("AIRFLOW_CONN_TEND_STORE", store)
    return store, batches


def statuses(store: str) -> list[str]:
    with connect(store).connect() as conn:
        return [s for (s,) in conn.execute(select(contact_ledger.c.status))]


def test_the_send_task_sends_a_batch_through_the_connection(
        tend_airflow: ModuleType, claimed_night: tuple[str, list[int]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    store, batches = claimed_night
    with run_in_thread(api_key=KEY, faults=FaultPlan(latency_ms=1)) as fake:
        monkeypatch.setenv("TEND_DELIVERY", "sendgrid")
        monkeypatch.setenv("AIRFLOW_CONN_SENDGRID_DEFAULT", f"http://:{KEY}@127.0.0.1:{fake.port}")
        ctx = run()
        counts = tend_airflow.tasks.send(NIGHT.isoformat(), batches[0], ctx)
        assert counts == {"sent": 40}
        # Where the batch's time went, for a scaling measurement to add up across batches.
        timings = ctx["ti"].pushed["timings"]
        assert {"seconds", "render", "ledger"} <= set(timings)
        assert timings["seconds"] >= timings["render"] > 0
        assert len(fake.fake.accepted_counts()) == 40
    assert statuses(store).count("sent") == 40


def test_a_refused_key_fails_the_task_without_retries(
        tend_airflow: ModuleType, claimed_night: tuple[str, list[int]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    store, batches = claimed_night
    with run_in_thread(api_key=KEY) as fake:
        monkeypatch.setenv("TEND_DELIVERY", "sendgrid")
        monkeypatch.setenv("AIRFLOW_CONN_SENDGRID_DEFAULT",
                           f"http://:SG.revoked@127.0.0.1:{fake.port}")
        with pytest.raises(AirflowFailException, match="check the sendgrid_default connection"):
            tend_airflow.tasks.send(NIGHT.isoformat(), batches[0], run())
    assert set(statuses(store)) == {"claimed"}


def load_programs_dag(airflow_sdk: ModuleType) -> Any:
    spec = importlib.util.spec_from_file_location("tend_programs_dag",
                                                  PROJECT / "dags" / "tend_programs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dags = [v for v in vars(module).values() if isinstance(v, airflow_sdk.DAG)]
    if not dags:  # the @dag decorator registers the DAG object on the module's call
        dags = [module.tend_programs()]
    return dags[0]


def test_the_send_task_runs_in_the_tend_send_pool(airflow_sdk: ModuleType,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEND_SEND_TASKS_PER_RUN", raising=False)
    send = load_programs_dag(airflow_sdk).get_task("send")
    assert send.pool == "tend_send"
    assert send.max_active_tis_per_dagrun == 4
    assert send.retries >= 1
    # A larger deployment lets one night send more batches at once (docs/capacity.md).
    monkeypatch.setenv("TEND_SEND_TASKS_PER_RUN", "12")
    assert load_programs_dag(airflow_sdk).get_task("send").max_active_tis_per_dagrun == 12


def test_send_is_mapped_over_the_planned_batch_ids(airflow_sdk: ModuleType) -> None:
    dag = load_programs_dag(airflow_sdk)
    assert set(dag.task_ids) == {"plan", "send", "summary", "complaints_digest", "kpi",
                                 "check"}
    send = dag.get_task("send")
    mapped = send.op_kwargs_expand_input.value["batch_id"]
    assert (mapped.operator.task_id, mapped.key) == ("plan", "return_value")
    as_of = send.partial_kwargs["op_kwargs"]["as_of"]
    assert (as_of.operator.task_id, as_of.key) == ("plan", "as_of")
    assert dag.get_task("summary").upstream_task_ids == {"plan", "send"}
    assert dag.get_task("complaints_digest").upstream_task_ids == {"summary"}
    kpi = dag.get_task("kpi")  # the results count what was sent, whatever send did
    assert kpi.upstream_task_ids == {"plan", "send"}
    assert kpi.trigger_rule == "all_done"
    # check tells the truth about the night's sends (tasks.night_check); every last task's
    # failure turns the run red
    assert dag.get_task("check").upstream_task_ids == {"plan", "summary"}
    assert dag.get_task("check").trigger_rule == "all_done"
    assert {t.task_id for t in dag.leaves} == {"check", "complaints_digest", "kpi"}
