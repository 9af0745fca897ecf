"""What a DAG run asks for: which night it is, its id, and its per-run switches.

A run's choices arrive as its params (the trigger form, or the conf Airflow copies onto them);
the conf is read too, so a deployment that turns ``[core] dag_run_conf_overrides_params`` off
keeps working. A Param left empty (null, or an empty string from a cleared text field) means
the run did not ask.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from tend_airflow.params import AS_OF, SENDGRID_SANDBOX


def run_value(context: Mapping[str, Any], key: str) -> Any | None:
    """The run's ``key``: its Param when set, else the run's conf, else None."""
    value = (context.get("params") or {}).get(key)
    if value is not None and value != "":
        return value
    conf = getattr(context.get("dag_run"), "conf", None) or {}
    return conf.get(key)


def as_of(context: Mapping[str, Any]) -> dt.date:
    """Which night this run is.

    1. an explicit ``as_of`` (the trigger form, or ``airflow dags trigger --conf``),
    2. the newest ``as_of`` carried by the triggering asset events (tend_programs after ingest),
    3. the logical date: for a scheduled (or backfill) run its data interval starts at the
       business night (taken in the DAG's timezone); for a manual run (``airflow dags test DAG
       DATE``, the UI) the calendar date the user gave, which Airflow parses as UTC midnight.
    """
    explicit = run_value(context, AS_OF)
    if explicit:
        return _parse_date(explicit, "the run's as_of")
    events = context.get("triggering_asset_events") or {}
    dates = [
        _parse_date(e.extra["as_of"], "the asset event's as_of")
        for evs in events.values() for e in evs
        if getattr(e, "extra", None) and e.extra.get("as_of")
    ]
    if dates:
        return max(dates)
    dag_run = context.get("dag_run")
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


def program_night(context: Mapping[str, Any], ingested: dt.date | None
                  ) -> tuple[dt.date, list[dt.date]]:
    """Which night tend_programs plans, and the other nights its asset events named.

    The store holds the features of one night, the one the last ingest brought it to
    (``ingested``), and only that night can be planned. So:

    1. an explicit ``as_of`` (the form, ``--conf``) is planned as asked (a night the
       features are not at fails with the fix: ingest it first);
    2. with asset events, the ingested night, and every other night they name is returned so
       the run can say it was not planned (it was ingested, then overtaken by a later ingest);
    3. a manual run without either (the UI's plain "Trigger", ``airflow dags test``) plans the
       ingested night, whatever its logical date.
    """
    explicit = run_value(context, AS_OF)
    if explicit:
        return _parse_date(explicit, "the run's as_of"), []
    if ingested is None:
        raise ValueError("no night has been ingested yet: run tend_ingest first (the features "
                         "tend_programs plans from come from it)")
    events = context.get("triggering_asset_events") or {}
    named = {
        _parse_date(e.extra["as_of"], "the asset event's as_of")
        for evs in events.values() for e in evs
        if getattr(e, "extra", None) and e.extra.get("as_of")
    }
    return ingested, sorted(named - {ingested})


def sendgrid_sandbox(context: Mapping[str, Any] | None) -> Any | None:
    """The run's SendGrid sandbox switch as given (a flag to parse), or None to keep the
    connection's setting."""
    return None if context is None else run_value(context, SENDGRID_SANDBOX)


def run_id(context: Mapping[str, Any]) -> str:
    return str(context["run_id"])


def _parse_date(value: Any, what: str) -> dt.date:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError as exc:
        raise ValueError(f"{what} {value!r} is not a date; use YYYY-MM-DD") from exc
