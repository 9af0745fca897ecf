"""The thin layer between Airflow and Tend's domain core.

Only this package and ``dags/`` import airflow. It turns Airflow's world (connections,
Variables, the task context) into the plain values ``tend.nightly`` takes. Everything here is
called at task run time, never at DAG parse time.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tend import config

if TYPE_CHECKING:
    from tend.delivery import DeliveryBackend
    from tend.delivery.sendgrid import SendGridSettings
    from tend.delivery.smtp import SmtpSettings

log = logging.getLogger("tend")

SHOP_CONN_ID = "tend_shop"
STORE_CONN_ID = "tend_store"
DELIVERY_VARIABLE = "tend_delivery"
SENDGRID_CONN_ID = "sendgrid_default"
SMTP_CONN_ID = "smtp_default"
SANDBOX_CONF_KEY = "sendgrid_sandbox"


def _connection(conn_id: str) -> Any | None:
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return Connection.get(conn_id)
    except AirflowNotFoundException:
        return None


def _conn_url(conn_id: str) -> str | None:
    conn = _connection(conn_id)
    return None if conn is None else config.sqlalchemy_url_from_connection(conn)


def shop_url() -> str:
    """The ``tend_shop`` connection, else TEND_SHOP_URL, else the embedded demo shop."""
    return config.shop_url(_conn_url(SHOP_CONN_ID))


def store_url() -> str:
    """The ``tend_store`` connection, else TEND_STORE_URL, else the embedded SQLite store."""
    return config.store_url(_conn_url(STORE_CONN_ID))


def delivery_name() -> str:
    """The env var TEND_DELIVERY wins (deployments pin it); else the Variable; else outbox."""
    from airflow.sdk import Variable

    if config.delivery_pinned():
        return config.delivery_backend()
    return config.delivery_backend(Variable.get(DELIVERY_VARIABLE, default=None))


def sendgrid_settings(context: Mapping[str, Any] | None = None) -> SendGridSettings:
    """The SendGrid backend's settings, secrets included, from the ``sendgrid_default``
    connection: password = API key, host = API URL override (e.g. ``http://127.0.0.1:8025`` for
    ``tend fake-sendgrid``), extras for sandbox mode, ASM group, concurrency and timeouts.
    Without that connection, the environment (``TEND_SENDGRID_API_KEY``, ...). The run's conf
    ``{"sendgrid_sandbox": true}`` switches sandbox mode for that run only.
    """
    from tend.delivery.sendgrid import SendGridSettings, _flag

    conn = _connection(SENDGRID_CONN_ID)
    settings = (SendGridSettings.from_connection(conn) if conn is not None
                else SendGridSettings.from_env())
    conf = getattr((context or {}).get("dag_run"), "conf", None) or {}
    if conf.get(SANDBOX_CONF_KEY) is not None:
        settings = settings.with_(sandbox=_flag(conf[SANDBOX_CONF_KEY],
                                                f"the run's conf {SANDBOX_CONF_KEY}"))
    return settings


def smtp_settings() -> SmtpSettings:
    """The ``smtp_default`` connection (host, port, login, password; extras starttls/ssl),
    else ``TEND_SMTP_URL``."""
    from tend.delivery.smtp import SmtpSettings

    conn = _connection(SMTP_CONN_ID)
    return SmtpSettings.from_connection(conn) if conn is not None else SmtpSettings.from_env()


def delivery_backend(context: Mapping[str, Any] | None = None) -> DeliveryBackend:
    """The backend named by TEND_DELIVERY / the Variable, built from its Airflow connection."""
    from tend.delivery import make_backend

    name = delivery_name()
    if name == "sendgrid":
        return make_backend(name, sendgrid=sendgrid_settings(context))
    if name == "smtp":
        return make_backend(name, smtp=smtp_settings())
    return make_backend(name, outbox_dir=config.outbox_dir())


def send_batch_task(batch: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, int]:
    """The body of tend_programs' mapped ``send`` task: one batch id in, counts out.

    Rejected credentials fail the task without retries (a retry cannot fix a key); any other
    error fails it normally, and Airflow's retry sends what is still claimed.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from tend import messages
    from tend.config import ShopSettings
    from tend.delivery.engine import send_batch
    from tend.errors import DeliveryAuthError

    settings = ShopSettings.from_env()
    backend = delivery_backend(context)
    try:
        result = send_batch(store_url(), dt.date.fromisoformat(str(batch["as_of"])),
                            int(batch["batch_id"]), backend=backend,
                            renderer=messages.default_renderer(settings), settings=settings)
    except DeliveryAuthError as exc:
        raise AirflowFailException(str(exc)) from exc
    finally:
        backend.close()
    return dict(result.counts)


def as_of(context: Mapping[str, Any]) -> dt.date:
    """Which night this run is.

    1. an explicit ``as_of`` in the run's conf (``airflow dags trigger --conf``),
    2. the newest ``as_of`` carried by the triggering asset events (tend_programs after ingest),
    3. the logical date: for a scheduled (or backfill) run its data interval starts at the
       business night (taken in the DAG's timezone); for a manual run (``airflow dags test DAG
       DATE``, the UI) the calendar date the user gave, which Airflow parses as UTC midnight.
    """
    dag_run = context.get("dag_run")
    conf = getattr(dag_run, "conf", None) or {}
    if conf.get("as_of"):
        return _parse_date(conf["as_of"], "the run's conf as_of")
    events = context.get("triggering_asset_events") or {}
    dates = [
        _parse_date(e.extra["as_of"], "the asset event's as_of")
        for evs in events.values() for e in evs
        if getattr(e, "extra", None) and e.extra.get("as_of")
    ]
    if dates:
        return max(dates)
    logical = context.get("logical_date") or getattr(dag_run, "run_after", None)
    if logical is None:
        raise ValueError("this run has no logical date and no as_of; trigger it with "
                         '--conf \'{"as_of": "YYYY-MM-DD"}\'')
    run_type = getattr(dag_run, "run_type", None)
    # DagRunType is a str Enum whose str() is "DagRunType.SCHEDULED": compare its value.
    if getattr(run_type, "value", run_type) in ("scheduled", "backfill"):
        tz = context["dag"].timezone
        return logical.astimezone(tz).date()
    return logical.astimezone(dt.UTC).date()


def _parse_date(value: Any, what: str) -> dt.date:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError as exc:
        raise ValueError(f"{what} {value!r} is not a date; use YYYY-MM-DD") from exc


def run_id(context: Mapping[str, Any]) -> str:
    return str(context["run_id"])
