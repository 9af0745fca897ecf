"""The thin layer between Airflow and Tend's domain core.

Only this package and ``dags/`` import airflow. It turns Airflow's world (connections,
Variables, the task context) into the plain values ``tend.nightly`` takes. Everything here is
called at task run time, never at DAG parse time.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from tend import config

log = logging.getLogger("tend")

SHOP_CONN_ID = "tend_shop"
STORE_CONN_ID = "tend_store"
DELIVERY_VARIABLE = "tend_delivery"


def _conn_url(conn_id: str) -> str | None:
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        return None
    return config.sqlalchemy_url_from_connection(conn)


def shop_url() -> str:
    """The ``tend_shop`` connection, else TEND_SHOP_URL, else the embedded demo shop."""
    return config.shop_url(_conn_url(SHOP_CONN_ID))


def store_url() -> str:
    """The ``tend_store`` connection, else TEND_STORE_URL, else the embedded SQLite store."""
    return config.store_url(_conn_url(STORE_CONN_ID))


def delivery_name() -> str:
    """The env var TEND_DELIVERY wins (deployments pin it); else the Variable; else outbox."""
    import os

    from airflow.sdk import Variable

    if os.environ.get("TEND_DELIVERY"):
        return config.delivery_backend()
    return config.delivery_backend(Variable.get(DELIVERY_VARIABLE, default=None))


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
