"""The Airflow adapter: which night a run is, and how connections become SQLAlchemy URLs.

Airflow reads AIRFLOW_HOME when it is first imported, so the ``airflow_sdk`` fixture points it at a
throw-away directory before the first import (nothing is written to ~/airflow). Connections are
real ``airflow.sdk.Connection`` objects built the way Airflow builds them (from a URI or from the
JSON form of ``AIRFLOW_CONN_*``). ``Connection.get`` outside a task falls back to Airflow's
environment-variable secrets backend (no SUPERVISOR_COMMS, no metadata DB), which is exactly the
``AIRFLOW_CONN_TEND_SHOP`` path, so shop_url()/store_url() resolution is tested here directly;
the integration test covers it again inside real task runs.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from types import ModuleType, SimpleNamespace
from typing import Any

import pendulum
import pytest
from sqlalchemy.engine import make_url

from tend.config import sqlalchemy_url_from_connection
from tend.errors import TendError
from tend_airflow import connections, delivery, runs

TORONTO = pendulum.timezone("America/Toronto")
TOKYO = pendulum.timezone("Asia/Tokyo")
UTC = pendulum.UTC


# -- as_of ------------------------------------------------------------------------------------

def event(as_of: Any = None, **extra: Any) -> SimpleNamespace:
    """An asset event as the task sees it (only ``extra`` matters to as_of)."""
    if as_of is not None:
        extra["as_of"] = as_of
    return SimpleNamespace(extra=extra)


def context(
    *,
    conf: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    events: dict[str, list[Any]] | None = None,
    logical: dt.datetime | None = None,
    run_type: Any = "manual",
    tz: Any = TORONTO,
    run_after: dt.datetime | None = None,
) -> dict[str, Any]:
    dag_run = SimpleNamespace(conf=conf, run_type=run_type, run_after=run_after)
    return {
        "dag": SimpleNamespace(timezone=tz),
        "dag_run": dag_run,
        "params": params or {},
        "logical_date": logical,
        "triggering_asset_events": events or {},
        "run_id": "manual__test",
    }


NOV20_UTC_MIDNIGHT = pendulum.datetime(2026, 11, 20, tz="UTC")
# 22:00 on Nov 20 in Toronto is 03:00 on Nov 21 in UTC: the two readings disagree.
LATE_EVENING_TORONTO = pendulum.datetime(2026, 11, 21, 3, tz="UTC")
# 02:00 on Nov 20 in Tokyo is 17:00 on Nov 19 in UTC.
TOKYO_2AM = pendulum.datetime(2026, 11, 20, 2, tz=TOKYO)

AS_OF_CASES = [
    pytest.param(
        context(conf={"as_of": "2026-11-18"}, events={"a": [event("2026-11-20")]},
                 logical=LATE_EVENING_TORONTO, run_type="scheduled"),
        dt.date(2026, 11, 18), id="conf-wins-over-events-and-logical-date"),
    pytest.param(
        context(params={"as_of": "2026-11-16"}, conf={"as_of": "2026-11-18"},
                events={"a": [event("2026-11-20")]}, logical=NOV20_UTC_MIDNIGHT),
        dt.date(2026, 11, 16), id="param-wins-over-conf-and-events"),
    pytest.param(context(params={"as_of": None}, conf={"as_of": "2026-11-18"},
                         logical=NOV20_UTC_MIDNIGHT),
                 dt.date(2026, 11, 18), id="param-left-empty-falls-back-to-conf"),
    pytest.param(context(params={"as_of": ""}, events={"a": [event("2026-11-19")]},
                         logical=NOV20_UTC_MIDNIGHT),
                 dt.date(2026, 11, 19), id="param-blank-falls-back-to-events"),
    pytest.param(context(conf={"as_of": dt.date(2026, 11, 17)}, logical=NOV20_UTC_MIDNIGHT),
                 dt.date(2026, 11, 17), id="conf-date-object"),
    pytest.param(context(conf={"as_of": "2026-11-17T23:30:00+00:00"}, logical=NOV20_UTC_MIDNIGHT),
                 dt.date(2026, 11, 17), id="conf-timestamp-keeps-its-date"),
    pytest.param(context(conf={"other": 1}, logical=NOV20_UTC_MIDNIGHT),
                 dt.date(2026, 11, 20), id="conf-without-as-of-is-ignored"),
    pytest.param(
        context(events={"tend://customer_features": [event("2026-11-19"), event("2026-11-20")],
                        "tend://other": [event("2026-11-17"), event(None, rows=3)]},
                logical=pendulum.datetime(2026, 11, 25, tz="UTC"), run_type="asset_triggered"),
        dt.date(2026, 11, 20), id="events-newest-as-of-of-several"),
    pytest.param(context(events={"a": [event(None, rows=3)]}, logical=NOV20_UTC_MIDNIGHT,
                         run_type="asset_triggered"),
                 dt.date(2026, 11, 20), id="events-without-as-of-fall-back-to-logical-date"),
    pytest.param(context(logical=NOV20_UTC_MIDNIGHT, run_type="manual", tz=TORONTO),
                 dt.date(2026, 11, 20), id="manual-utc-midnight-not-shifted-to-dag-tz"),
    pytest.param(context(logical=LATE_EVENING_TORONTO, run_type="manual", tz=TORONTO),
                 dt.date(2026, 11, 21), id="manual-uses-utc-date"),
    pytest.param(context(logical=None, run_after=pendulum.datetime(2026, 11, 20, 12, tz="UTC")),
                 dt.date(2026, 11, 20), id="manual-without-logical-date-uses-run-after"),
    pytest.param(context(logical=LATE_EVENING_TORONTO, run_type="scheduled", tz=TORONTO),
                 dt.date(2026, 11, 20), id="scheduled-converts-to-dag-tz-west"),
    pytest.param(context(logical=TOKYO_2AM.in_timezone("UTC"), run_type="scheduled", tz=TOKYO),
                 dt.date(2026, 11, 20), id="scheduled-converts-to-dag-tz-east"),
    pytest.param(
        context(logical=pendulum.datetime(2026, 11, 20, 7, tz="UTC"), run_type="scheduled",
                tz=TORONTO),
        dt.date(2026, 11, 20), id="scheduled-tend-ingest-0200-toronto"),
]


@pytest.mark.parametrize(("ctx", "expected"), AS_OF_CASES)
def test_as_of(ctx: dict[str, Any], expected: dt.date) -> None:
    assert runs.as_of(ctx) == expected


@pytest.mark.parametrize(
    "conf_value",
    ["20/11/2026", "tomorrow", "2026-13-01", "2026-11", 3.5],
)
def test_as_of_bad_conf_date(conf_value: Any) -> None:
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        runs.as_of(context(conf={"as_of": conf_value}, logical=NOV20_UTC_MIDNIGHT))


def test_as_of_bad_param_date() -> None:
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        runs.as_of(context(params={"as_of": "tomorrow"}, logical=NOV20_UTC_MIDNIGHT))


def test_as_of_bad_event_date() -> None:
    ctx = context(events={"a": [event("2026-11-20"), event("not-a-date")]},
                  logical=NOV20_UTC_MIDNIGHT)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        runs.as_of(ctx)


def test_as_of_without_any_date() -> None:
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        runs.as_of(context(logical=None, run_after=None))


# The same decisions with the objects the task runner really hands a task: the SDK's DagRun model
# (run_type is the SDK's DagRunType enum) and a TriggeringAssetEventsAccessor.

def sdk_dag_run(airflow_sdk: ModuleType, run_type: str, logical: dt.datetime,
                conf: dict[str, Any] | None = None) -> Any:
    from airflow.sdk.api.datamodels._generated import DagRun

    return DagRun.model_validate({
        "dag_id": "tend_ingest", "run_id": f"{run_type}__x", "logical_date": logical,
        "data_interval_start": logical, "data_interval_end": logical + dt.timedelta(days=1),
        "run_after": logical + dt.timedelta(days=1), "start_date": None, "end_date": None,
        "run_type": run_type, "state": "running", "conf": conf, "consumed_asset_events": [],
        "partition_key": None,
    })


def test_as_of_manual_sdk_dag_run(airflow_sdk: ModuleType) -> None:
    run = sdk_dag_run(airflow_sdk, "manual", LATE_EVENING_TORONTO)
    ctx = {"dag": SimpleNamespace(timezone=TORONTO), "dag_run": run,
           "logical_date": LATE_EVENING_TORONTO, "triggering_asset_events": {}}
    assert runs.as_of(ctx) == dt.date(2026, 11, 21)


@pytest.mark.parametrize("run_type", ["scheduled", "backfill"])
def test_as_of_scheduled_sdk_dag_run(airflow_sdk: ModuleType, run_type: str) -> None:
    """Inside a task run_type is a str Enum (str() is 'DagRunType.SCHEDULED'): compare values."""
    logical = TOKYO_2AM.in_timezone("UTC")  # the night of Nov 20 in Tokyo, Nov 19 in UTC
    run = sdk_dag_run(airflow_sdk, run_type, logical)
    ctx = {"dag": SimpleNamespace(timezone=TOKYO), "dag_run": run, "logical_date": logical,
           "triggering_asset_events": {}}
    assert runs.as_of(ctx) == dt.date(2026, 11, 20)


def test_as_of_from_real_triggering_asset_events(airflow_sdk: ModuleType) -> None:
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    def ref(name: str, extra: dict[str, Any], aliases: tuple[str, ...] = ()) -> Any:
        # The server sends the normalised URI it stored ("tend://x" is stored as "tend://x/").
        uri = airflow_sdk.Asset(uri=f"tend://{name}", name=name).uri
        return AssetEventDagRunReferenceResult(
            asset={"name": name, "uri": uri, "extra": {}}, extra=extra,
            source_task_id="ingest_orders", source_dag_id="tend_ingest",
            source_run_id="scheduled__x", source_map_index=-1,
            source_aliases=[{"name": a} for a in aliases],
            timestamp=pendulum.datetime(2026, 11, 21, 7, tz="UTC"),
        )

    events = TriggeringAssetEventsAccessor.build([
        ref("customer_features", {"as_of": "2026-11-19", "changed_customers": 3}),
        ref("customer_features", {"as_of": "2026-11-20", "changed_customers": 5}, ("nightly",)),
        ref("other", {"rows": 1}),
    ])
    run = sdk_dag_run(airflow_sdk, "asset_triggered", pendulum.datetime(2026, 11, 23, tz="UTC"))
    ctx = {"dag": SimpleNamespace(timezone=UTC), "dag_run": run,
           "logical_date": run.logical_date, "triggering_asset_events": events}
    assert runs.as_of(ctx) == dt.date(2026, 11, 20)

    with_conf = sdk_dag_run(airflow_sdk, "asset_triggered", run.logical_date,
                            conf={"as_of": "2026-11-15"})
    assert runs.as_of({**ctx, "dag_run": with_conf}) == dt.date(2026, 11, 15)


def test_as_of_from_the_params_airflow_resolves(airflow_sdk: ModuleType) -> None:
    """The DAG's Params with a run's conf merged in, as the task runner builds them."""
    from airflow.sdk.definitions.param import ParamsDict

    from tend_airflow.params import AS_OF, SENDGRID_SANDBOX, dag_params

    def resolved(conf: dict[str, Any]) -> dict[str, Any]:
        params = ParamsDict(dag_params(AS_OF, SENDGRID_SANDBOX))
        params.update(conf)
        return params.validate()

    run = sdk_dag_run(airflow_sdk, "manual", NOV20_UTC_MIDNIGHT)
    ctx = {"dag": SimpleNamespace(timezone=TORONTO), "dag_run": run,
           "logical_date": NOV20_UTC_MIDNIGHT, "triggering_asset_events": {}}
    assert runs.as_of({**ctx, "params": resolved({})}) == dt.date(2026, 11, 20)
    assert runs.as_of({**ctx, "params": resolved({"as_of": "2026-11-18"})}) == (
        dt.date(2026, 11, 18))
    assert resolved({}) == {"as_of": None, "sendgrid_sandbox": None}


@pytest.mark.parametrize(("conf", "ok"), [
    ({"as_of": "2026-11-20"}, True),
    ({"as_of": None}, True),
    ({"sendgrid_sandbox": True}, True),
    ({"sendgrid_sandbox": False}, True),
    ({"sendgrid_sandbox": None}, True),
    ({"as_of": "20/11/2026"}, False),
    ({"as_of": "2026-13-01"}, False),
    ({"sendgrid_sandbox": "maybe"}, False),
])
def test_params_validate_what_a_run_gives(airflow_sdk: ModuleType, conf: dict[str, Any],
                                          ok: bool) -> None:
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    from tend_airflow.params import AS_OF, SENDGRID_SANDBOX, dag_params

    params = ParamsDict(dag_params(AS_OF, SENDGRID_SANDBOX))
    if ok:
        params.update(conf)
        params.validate()
    else:
        with pytest.raises(ParamValidationError):
            params.update(conf)
            params.validate()


def test_dag_params_are_fresh_objects(airflow_sdk: ModuleType) -> None:
    """Airflow resolves a Param in place: two DAGs must not share one."""
    from tend_airflow.params import AS_OF, dag_params

    assert dag_params(AS_OF)[AS_OF] is not dag_params(AS_OF)[AS_OF]


def test_run_id() -> None:
    assert runs.run_id({"run_id": "scheduled__2026-11-20T07:00:00+00:00"}) == (
        "scheduled__2026-11-20T07:00:00+00:00")


# -- sqlalchemy_url_from_connection, with real Airflow connections ---------------------------

SPECIAL_PASSWORD = "p@ss:w/o#rd %?&=+ é"


def quote_all(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


URI_CASES = [
    pytest.param("sqlite:////abs/path/shop.db", "sqlite:////abs/path/shop.db", id="sqlite-abs"),
    pytest.param("sqlite:///relative/shop.db", "sqlite:///relative/shop.db", id="sqlite-rel"),
    pytest.param("postgresql://user@host:5432/db", "postgresql://user@host:5432/db",
                 id="postgresql"),
    pytest.param("postgres://user@host:5432/db", "postgresql://user@host:5432/db",
                 id="postgres-scheme"),
    pytest.param("postgresql://user@host/db", "postgresql://user@host/db", id="no-port"),
    pytest.param("postgresql+psycopg://user@host:5432/db",
                 "postgresql+psycopg://user@host:5432/db", id="explicit-driver"),
    pytest.param("mysql://user:pw@host:3306/shop", "mysql://user:pw@host:3306/shop", id="mysql"),
    pytest.param("postgresql://user@host:5432/db?sslmode=require",
                 "postgresql://user@host:5432/db?sslmode=require", id="sslmode-extra-to-query"),
    pytest.param(
        "postgresql://user@host:5432/db?sqlalchemy_url="
        + quote_all("postgresql+psycopg://other@elsewhere/db?application_name=tend"),
        "postgresql+psycopg://other@elsewhere/db?application_name=tend",
        id="extra-sqlalchemy-url-wins"),
]


@pytest.mark.parametrize(("uri", "expected"), URI_CASES)
def test_url_from_connection_uri(airflow_sdk: ModuleType, uri: str, expected: str) -> None:
    conn = airflow_sdk.Connection(conn_id="tend_shop", uri=uri)
    assert sqlalchemy_url_from_connection(conn) == expected


def test_url_from_connection_from_uri_classmethod(airflow_sdk: ModuleType) -> None:
    conn = airflow_sdk.Connection.from_uri("sqlite:////abs/path/shop.db", conn_id="tend_shop")
    assert sqlalchemy_url_from_connection(conn) == "sqlite:////abs/path/shop.db"


def test_password_with_special_characters_round_trips(airflow_sdk: ModuleType) -> None:
    user = "tend@shop"
    uri = f"postgresql://{quote_all(user)}:{quote_all(SPECIAL_PASSWORD)}@db.internal:6432/tend"
    conn = airflow_sdk.Connection(conn_id="tend_store", uri=uri)
    assert conn.password == SPECIAL_PASSWORD  # what Airflow decoded
    url = make_url(sqlalchemy_url_from_connection(conn))
    assert (url.drivername, url.username, url.password, url.host, url.port, url.database) == (
        "postgresql", user, SPECIAL_PASSWORD, "db.internal", 6432, "tend")


def test_sslmode_extra_becomes_query_param(airflow_sdk: ModuleType) -> None:
    conn = airflow_sdk.Connection(
        conn_id="tend_store", conn_type="postgres", host="db", login="tend", password="secret",
        schema="tend", port=5432, extra=json.dumps({"sslmode": "verify-full"}),
    )
    url = make_url(sqlalchemy_url_from_connection(conn))
    assert url.query == {"sslmode": "verify-full"}
    assert url.render_as_string(hide_password=False) == (
        "postgresql://tend:secret@db:5432/tend?sslmode=verify-full")


def test_extra_sqlalchemy_url_wins_over_fields(airflow_sdk: ModuleType) -> None:
    conn = airflow_sdk.Connection(
        conn_id="tend_shop", conn_type="postgres", host="ignored", schema="ignored",
        extra=json.dumps({"sqlalchemy_url": "sqlite:////srv/tend/shop.db", "sslmode": "x"}),
    )
    assert sqlalchemy_url_from_connection(conn) == "sqlite:////srv/tend/shop.db"


def test_connection_json_form(airflow_sdk: ModuleType) -> None:
    conn = airflow_sdk.Connection.from_json(json.dumps({
        "conn_type": "postgresql", "host": "db", "login": "tend", "password": SPECIAL_PASSWORD,
        "schema": "tend", "port": 5432, "extra": {"sslmode": "require"},
    }), conn_id="tend_store")
    url = make_url(sqlalchemy_url_from_connection(conn))
    assert (url.drivername, url.password, url.query) == (
        "postgresql", SPECIAL_PASSWORD, {"sslmode": "require"})


# -- shop_url()/store_url()/delivery_name() resolution ---------------------------------------

@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any, airflow_sdk: ModuleType
              ) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_", "TEND_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TEND_VAR_DIR", str(tmp_path))
    return monkeypatch


@pytest.mark.parametrize(("fn", "conn_env", "url_env", "default"), [
    (connections.shop_url, "AIRFLOW_CONN_TEND_SHOP", "TEND_SHOP_URL", "shop.db"),
    (connections.store_url, "AIRFLOW_CONN_TEND_STORE", "TEND_STORE_URL", "store.db"),
], ids=["shop", "store"])
def test_url_resolution(clean_env: pytest.MonkeyPatch, tmp_path: Any, fn: Any, conn_env: str,
                        url_env: str, default: str) -> None:
    # Nothing set: the embedded default under TEND_VAR_DIR.
    assert fn() == f"sqlite:///{tmp_path.resolve() / default}"
    # TEND_*_URL when the connection is not defined.
    clean_env.setenv(url_env, "sqlite:////from/env/var.db")
    assert fn() == "sqlite:////from/env/var.db"
    # The Airflow connection wins over TEND_*_URL.
    clean_env.setenv(conn_env, "sqlite:////from/connection/x.db")
    assert fn() == "sqlite:////from/connection/x.db"
    # ... in its JSON form too.
    clean_env.setenv(conn_env, json.dumps({
        "conn_type": "postgres", "host": "db", "login": "tend", "password": SPECIAL_PASSWORD,
        "schema": "tend", "port": 5432, "extra": {"sslmode": "require"}}))
    url = make_url(fn())
    assert (url.drivername, url.host, url.password, url.query) == (
        "postgresql", "db", SPECIAL_PASSWORD, {"sslmode": "require"})
    # Removing the connection falls back again (no stale cache).
    clean_env.delenv(conn_env)
    assert fn() == "sqlite:////from/env/var.db"


def test_delivery_name_resolution(clean_env: pytest.MonkeyPatch) -> None:
    assert delivery.delivery_name() == "outbox"
    clean_env.setenv("AIRFLOW_VAR_TEND_DELIVERY", "smtp")
    assert delivery.delivery_name() == "smtp"
    clean_env.setenv("TEND_DELIVERY", "sendgrid")
    assert delivery.delivery_name() == "sendgrid"


def test_complaints_digest_task(clean_env: pytest.MonkeyPatch, tmp_path: Any,
                                caplog: pytest.LogCaptureFixture) -> None:
    from tend.store import complaints, migrate
    from tend.store.db import connect
    from tend_airflow import tasks

    store = f"sqlite:///{tmp_path / 'store.db'}"
    migrate(store)
    clean_env.setenv("TEND_STORE_URL", store)
    with connect(store).begin() as conn:
        complaints.open_complaint(conn, customer_id="C1", source="survey", rating=1,
                                  now=dt.datetime.now(dt.UTC))
    # no staff address: a warning, not a failed night
    assert tasks.complaints_digest({}) == 0
    assert "TEND_STAFF_EMAIL is not set" in caplog.text
    clean_env.setenv("TEND_STAFF_EMAIL", "service@shop.example")
    assert tasks.complaints_digest({}) == 1
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 1
    assert tasks.complaints_digest({}) == 0


# -- the daily pull of SendGrid's suppression lists -------------------------------------------

def test_pull_suppressions_runs_with_the_sendgrid_connection(
        clean_env: pytest.MonkeyPatch, tmp_path: Any, demo_shops: Any) -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    from tend.dev.fake_sendgrid import run_in_thread
    from tend.shop.read import read_customers
    from tend.store import migrate
    from tend_airflow import tasks

    shop = demo_shops(customers=400, seed=11, as_of=dt.date(2026, 11, 20))
    store = f"sqlite:///{tmp_path / 'store.db'}"
    migrate(store)
    clean_env.setenv("AIRFLOW_CONN_TEND_SHOP", shop)
    clean_env.setenv("AIRFLOW_CONN_TEND_STORE", store)
    with pytest.raises(AirflowSkipException):  # outbox: nothing to pull
        tasks.pull_suppressions()
    email = read_customers(shop, ["C000001"])["email"].iloc[0]
    with run_in_thread(api_key="SG.airflow") as fake:
        fake.fake.set_suppressions({"spam_reports": [{"email": email, "created": 1_780_000_000}]})
        clean_env.setenv("TEND_DELIVERY", "sendgrid")
        clean_env.setenv("AIRFLOW_CONN_SENDGRID_DEFAULT", json.dumps(
            {"conn_type": "sendgrid", "host": fake.url, "password": "SG.airflow"}))
        assert tasks.pull_suppressions() == {"spam_reports_customers": 1}


@pytest.mark.parametrize("value", [
    '{"conn_type": "sendgrid", "password": "SG.k", "extra": {"webhook_public_key": "MFkw"}}',
    "sendgrid://:SG.k@?webhook_public_key=MFkw%2B%3D",
    "sendgrid://:SG.k@?__extra__=%7B%22webhook_public_key%22%3A+%22MFkw%22%7D",
])
def test_tend_serve_reads_the_sendgrid_connection_as_airflow_does(
        clean_env: pytest.MonkeyPatch, value: str) -> None:
    """tend serve reads AIRFLOW_CONN_SENDGRID_DEFAULT without Airflow; it must agree."""
    from tend.config import env_connection

    clean_env.setenv("AIRFLOW_CONN_SENDGRID_DEFAULT", value)
    ours = env_connection("sendgrid_default")
    theirs = connections.connection("sendgrid_default")
    assert ours is not None and theirs is not None
    assert ours.extra_dejson == theirs.extra_dejson
    assert ours.password == theirs.password


# -- tend_campaign: the form and its first task ------------------------------------------------

CAMPAIGN_FORM = {"name": "winter-news", "subject_en": "Hi", "subject_fr": "Salut"}


@pytest.mark.parametrize(("conf", "ok"), [
    ({}, True),
    # what the form sends for optional words left empty, or typed and then cleared
    ({"preheader_en": None, "text_en": None, "headline_fr": None, "text_fr": ""}, True),
    ({"audience": "loyalty_tier", "audience_tier": "gold", "offer": "percent",
      "offer_amount": 15, "send_at": "10:30", "proof_to": ["a@shop.example"],
      "max_recipients": 100, "holdout_pct": 10, "dry_run": False}, True),
    ({"name": "Winter News"}, False),
    ({"audience": "everyone"}, False),
    ({"holdout_pct": 80}, False),
    ({"send_at": "tomorrow"}, False),
    ({"proof_to": ["not an address"]}, False),
    ({"subject_fr": ""}, False),
    ({"offer": "free"}, False),
])
def test_the_campaign_form_validates_what_a_run_gives(airflow_sdk: ModuleType,
                                                      conf: dict[str, Any], ok: bool) -> None:
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    from tend_airflow.params import campaign_params

    params = ParamsDict(campaign_params())
    if ok:
        params.update(CAMPAIGN_FORM | conf)
        params.validate()
    else:
        with pytest.raises(ParamValidationError):
            params.update(CAMPAIGN_FORM | conf)
            params.validate()


def test_a_real_campaign_through_the_sendgrid_sandbox_is_refused(
        clean_env: pytest.MonkeyPatch) -> None:
    """Sandbox mode records messages sent that SendGrid dropped: the campaign's name would be
    burnt. A dry run through it is fine (nothing reaches the ledger)."""
    from airflow.sdk.exceptions import AirflowFailException

    from tend_airflow import tasks

    clean_env.setenv("TEND_DELIVERY", "sendgrid")
    clean_env.setenv("TEND_SENDGRID_API_KEY", "SG.test")
    ctx = {"params": CAMPAIGN_FORM | {"dry_run": False, "sendgrid_sandbox": True},
           "dag_run": SimpleNamespace(conf={})}
    with pytest.raises(AirflowFailException, match="field 'dry_run': SendGrid is in sandbox"):
        tasks.campaign_check(ctx)
    bad = {"params": CAMPAIGN_FORM | {"send_at": "23:00"}, "dag_run": SimpleNamespace(conf={})}
    with pytest.raises(AirflowFailException, match="field 'send_at'"):
        tasks.campaign_check(bad)


# -- tend_programs' traps: which night, the run's colour, runs dated in the future --------------


NOV18, NOV20 = dt.date(2026, 11, 18), dt.date(2026, 11, 20)


@pytest.mark.parametrize(("ctx", "night", "overtaken"), [
    # a plain "Trigger" (logical date = now, no event): the ingested night, not a DataError
    (context(logical=pendulum.datetime(2026, 12, 6, 11, tz="UTC")), NOV20, []),
    # a leftover event of an older night and the ingest's: the ingested one, the other named
    (context(events={"a": [event("2026-11-18"), event("2026-11-20")]}), NOV20, [NOV18]),
    (context(events={"a": [event("2026-11-20"), event("2026-11-22")]}), NOV20,
     [dt.date(2026, 11, 22)]),
    # an explicit night is planned as asked
    (context(params={"as_of": "2026-11-18"}, events={"a": [event("2026-11-20")]}), NOV18, []),
])
def test_program_night(ctx: dict[str, Any], night: dt.date, overtaken: list[dt.date]) -> None:
    assert runs.program_night(ctx, NOV20) == (night, overtaken)


def test_program_night_before_any_ingest() -> None:
    with pytest.raises(ValueError, match="run tend_ingest first"):
        runs.program_night(context(), None)


def test_the_night_check_fails_the_run_while_messages_failed_or_wait(
        clean_env: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from tend.store import migrate
    from tend.store.db import connect
    from tend.store.tables import contact_ledger
    from tend_airflow import tasks

    store = f"sqlite:///{tmp_path / 'store.db'}"
    migrate(store)
    clean_env.setenv("TEND_STORE_URL", store)
    now = dt.datetime.now(dt.UTC)

    def row(mid: str, status: str, program: str = "winback") -> dict[str, Any]:
        return {"message_id": mid * 32, "customer_id": mid, "program": program,
                "occurrence": "o", "kind": "marketing", "status": status, "as_of": NOV20,
                "run_id": "r", "batch_id": 0, "claimed_at": now}

    with connect(store).begin() as conn:
        conn.execute(contact_ledger.insert(), [row("a", "sent"),
                                               row("b", "claimed", "campaign:spring")])
        # the send stage stopped these: the customers opted out after planning
        conn.execute(contact_ledger.insert(), [
            row("e", "failed") | {"error": "suppressed after planning (unsubscribed); not sent"},
            row("f", "failed") | {"error": "preferences changed after planning (the customer "
                                           "paused marketing until 2027-01-01); not sent"}])
    tasks.night_check("2026-11-20")  # a campaign's waiting message is not the night's
    with connect(store).begin() as conn:
        conn.execute(contact_ledger.insert(), [row("c", "failed"), row("d", "claimed")])
    with pytest.raises(AirflowFailException,
                       match="night 2026-11-20: 1 failed, 1 still waiting to be sent"):
        tasks.night_check("2026-11-20")
    # A SendGrid sandbox run is red too (nothing was delivered), and says it was a rehearsal.
    clean_env.setenv("TEND_DELIVERY", "sendgrid")
    clean_env.setenv("TEND_SENDGRID_API_KEY", "SG.test")
    run = {"dag_run": SimpleNamespace(conf={"sendgrid_sandbox": True}), "params": {}}
    with pytest.raises(AirflowFailException, match=r"night 2026-11-20 was a rehearsal \(Send"
                       r"Grid sandbox\): nothing was delivered, 1 failed, 1 still waiting"):
        tasks.night_check("2026-11-20", run)
    with pytest.raises(AirflowFailException, match="night 2026-11-20: 1 failed"):
        tasks.night_check("2026-11-20", {**run, "dag_run": SimpleNamespace(conf={})})
    # SendGrid settings that cannot be read (no key) failed the send tasks already; check
    # still gives its verdict, not a ConfigError Airflow would retry
    clean_env.delenv("TEND_SENDGRID_API_KEY")
    with pytest.raises(AirflowFailException, match="night 2026-11-20: 1 failed"):
        tasks.night_check("2026-11-20", run)


def test_after_a_failed_plan_the_last_tasks_end_at_once(
        clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """No night from plan (it failed): summary says why, kpi skips, check fails without a
    retry; none of them touches the store (TEND_STORE_URL is unset here)."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from tend_airflow import tasks

    asked: list[tuple[str, str]] = []

    def pull(task_ids: str, key: str) -> None:
        asked.append((task_ids, key))

    night = tasks.planned_night({"ti": SimpleNamespace(xcom_pull=pull)})
    assert night is None and asked == [("plan", tasks.AS_OF_XCOM)]
    caplog.set_level("INFO", logger="tend")
    tasks.summary(night, None)
    assert "plan did not finish" in caplog.text
    with pytest.raises(AirflowSkipException, match="plan did not finish"):
        tasks.kpi(night)
    with pytest.raises(AirflowFailException, match="plan did not finish"):
        tasks.night_check(night)
    ti = SimpleNamespace(xcom_pull=lambda task_ids, key: "2026-11-20")
    assert tasks.planned_night({"ti": ti}) == "2026-11-20"


def test_tend_errors_fail_plan_at_once_in_one_line(clean_env: pytest.MonkeyPatch,
                                                   tmp_path: Any) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from tend.store import migrate
    from tend_airflow import tasks

    store = f"sqlite:///{tmp_path / 'store.db'}"
    migrate(store)
    clean_env.setenv("TEND_STORE_URL", store)
    with pytest.raises(AirflowFailException, match=r"^no night has been ingested yet"):
        tasks.plan(context())


@pytest.mark.parametrize(("body", "refused"), [
    (b'{"logical_date": "2099-01-01T00:00:00Z", "conf": {}}', True),
    (b'{"logical_date": "2099-01-01T00:00:00"}', True),
    (b'{"logical_date": "2026-01-01T00:00:00+00:00"}', False),
    (b'{"logical_date": null}', False),
    (b'{}', False),
    (b'not json', False),
    (b'[1]', False),
])
def test_a_future_logical_date_is_refused_at_the_trigger(airflow_sdk: ModuleType, body: bytes,
                                                         refused: bool) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from tend_airflow.page.future import RefuseFutureRuns

    api = FastAPI()
    seen: list[bytes] = []

    @api.post("/api/v2/dags/{dag_id}/dagRuns")
    async def trigger(dag_id: str, request: Any = None) -> dict[str, str]:
        return {"dag_id": dag_id}

    @api.middleware("http")
    async def record(request: Any, call_next: Any) -> Any:
        seen.append(await request.body())
        return await call_next(request)

    client = TestClient(RefuseFutureRuns(api))
    got = client.post("/api/v2/dags/tend_programs/dagRuns", content=body)
    if refused:
        assert got.status_code == 400
        assert "in the future" in got.json()["detail"] and seen == []
    else:
        assert seen == [body]  # passed on whole
    other = client.post("/api/v2/dags/someone_else/dagRuns", content=body)
    assert other.status_code != 400  # another DAG is not ours to judge


def test_a_bad_shop_fails_ingest_at_once_in_one_line(clean_env: pytest.MonkeyPatch,
                                                     tmp_path: Any) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from tend_airflow import tasks

    clean_env.setenv("TEND_SHOP_URL", f"sqlite:///{tmp_path / 'empty-shop.db'}")
    clean_env.setenv("TEND_STORE_URL", f"sqlite:///{tmp_path / 'store.db'}")
    ctx = context(params={"as_of": "2026-11-20"})
    with pytest.raises(AirflowFailException) as failed:
        tasks.ingest(ctx)
    assert "\n" not in str(failed.value) and isinstance(failed.value.__cause__, TendError)


def test_plan_names_the_nights_its_events_named_that_were_never_planned(
        clean_env: pytest.MonkeyPatch, tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A leftover asset event of an older night: the ingested night is planned, and the older
    one, overtaken before anyone planned it, is named with its replay."""
    from tend.dashboard import read_dashboard, warnings
    from tend.dev.demo import generate_demo_shop
    from tend.features.ingest import run_ingest
    from tend.store import migrate
    from tend_airflow import tasks

    shop, store = f"sqlite:///{tmp_path / 'shop.db'}", f"sqlite:///{tmp_path / 'store.db'}"
    generate_demo_shop(shop, customers=40, seed=2, as_of=NOV20)
    migrate(store)
    run_ingest(shop, store, NOV20, "i")
    clean_env.setenv("TEND_SHOP_URL", shop)
    clean_env.setenv("TEND_STORE_URL", store)
    clean_env.setenv("TEND_VAR_DIR", str(tmp_path))
    ti = SimpleNamespace(xcom_push=lambda key, value: pushed.update({key: value}))
    pushed: dict[str, Any] = {}
    ctx = context(events={"a": [event("2026-11-18"), event("2026-11-20")]}) | {"ti": ti}
    tasks.plan(ctx)
    assert pushed["as_of"] == "2026-11-20"
    # The plan's seconds per step, in XCom for a scaling measurement.
    from tend.programs.plan import PLAN_STEPS

    assert set(pushed["timings"]) == set(PLAN_STEPS)
    assert all(seconds >= 0 for seconds in pushed["timings"].values())
    assert "night 2026-11-18 was ingested but a later ingest (2026-11-20) overtook it" \
        in caplog.text
    # ... and the night's summary says so first, with what was and was not offered
    caplog.clear()
    tasks.summary("2026-11-20", context())
    first = caplog.records[0]
    assert first.levelname == "WARNING" and first.getMessage().startswith(
        "WARNING: night 2026-11-18 was never planned: the ingest of 2026-11-20 overtook it")
    assert "tend_ingest then tend_programs with as_of 2026-11-18" in first.getMessage()
    # ... as does the Tend page
    page = read_dashboard(store)
    assert [u["as_of"] for u in page.unplanned] == [dt.date(2026, 11, 18)]
    assert any("night 2026-11-18 was never planned" in w for w in warnings(page))
    caplog.clear()
    tasks.plan(context(events={"a": [event("2026-11-20")]}) | {"ti": ti})
    assert "overtook" not in caplog.text
    # a replay of the missed night plans it: it is no longer reported
    run_ingest(shop, store, NOV18, "replay")
    tasks.plan(context(params={"as_of": "2026-11-18"}) | {"ti": ti})
    caplog.clear()
    tasks.summary("2026-11-20", context())
    assert "never planned" not in caplog.text and read_dashboard(store).unplanned == []


def test_a_send_through_smtp_is_rescheduled_for_the_end_of_quiet_hours(
        clean_env: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """SMTP delivers at once, so messages outside the send window stay claimed and the send
    task goes up_for_reschedule until the first opening, instead of mailing at 02:00 or
    spending a retry; what may go at any hour (receipts) went."""
    from _support import smtp_inbox
    from airflow.sdk.exceptions import AirflowRescheduleException

    from tend import messages
    from tend.config import ShopSettings
    from tend.dev.demo import generate_demo_shop
    from tend.features.ingest import run_ingest
    from tend.programs import plan
    from tend.programs.caps import SendWindow
    from tend.store import migrate
    from tend.store.db import connect
    from tend.store.tables import contact_ledger
    from tend_airflow import tasks

    shop, store = f"sqlite:///{tmp_path / 'shop.db'}", f"sqlite:///{tmp_path / 'store.db'}"
    generate_demo_shop(shop, customers=120, seed=4, as_of=NOV20)
    migrate(store)
    run_ingest(shop, store, NOV20, "i")
    settings = ShopSettings.from_env({})
    planned = plan.plan_night(shop, store, NOV20, "r", settings=settings,
                              renderer=messages.default_renderer(settings), secret="s")
    # One second a day: closed, at any moment of the test, for every customer's timezone.
    closed = SendWindow(dt.time(3, 0, 0), dt.time(3, 0, 1))
    pushed: dict[str, Any] = {}
    ctx = context() | {"ti": SimpleNamespace(xcom_push=lambda k, v: pushed.update({k: v}))}
    with smtp_inbox() as (inbox, port):
        clean_env.setenv("TEND_STORE_URL", store)
        clean_env.setenv("TEND_DELIVERY", "smtp")
        clean_env.setenv("AIRFLOW_CONN_SMTP_DEFAULT", f"smtp://127.0.0.1:{port}")
        with pytest.raises(AirflowRescheduleException) as later:
            tasks.send(NOV20.isoformat(), planned.batches[0], ctx, send_window=closed)
    with connect(store).connect() as conn:
        rows = conn.execute(contact_ledger.select().where(
            contact_ledger.c.batch_id == planned.batches[0])).mappings().all()
    waiting = {r["message_id"] for r in rows if r["status"] == "claimed"}
    assert waiting == {r["message_id"] for r in rows if r["kind"] != "transactional"}
    assert set(inbox.counts()) == {r["message_id"] for r in rows} - waiting
    now = dt.datetime.now(dt.UTC)
    assert now < later.value.reschedule_date <= now + dt.timedelta(days=1, hours=1)
    assert "seconds" in pushed["timings"]
