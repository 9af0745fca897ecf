"""The run parameters the Tend DAGs declare, so the trigger form shows them.

Airflow copies a run's conf onto its params (``[core] dag_run_conf_overrides_params``, on by
default), so ``airflow dags trigger --conf '{"as_of": "2026-11-20"}'`` and the form reach the
tasks the same way; ``tend_airflow.runs`` reads them. Each call builds fresh ``Param`` objects:
Airflow resolves a Param in place, so two DAGs must not share one. Airflow is imported only
when a DAG asks for its Params, so the task-side modules that read the names stay importable
before Airflow is configured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow.sdk import Param

AS_OF = "as_of"
SENDGRID_SANDBOX = "sendgrid_sandbox"


def _as_of() -> Param:
    from airflow.sdk import Param

    return Param(
        None,
        type=["null", "string"],
        format="date",
        title="Night (as_of)",
        description=(
            "The business day to run, YYYY-MM-DD. Leave empty to let the run decide: a "
            "scheduled run takes the day that just ended, tend_programs the night tend_ingest "
            "reported, a manual run its logical date."
        ),
    )


def _sendgrid_sandbox() -> Param:
    from airflow.sdk import Param

    # Nullable, not a plain boolean: the trigger form submits every Param into the run's conf,
    # so a default of false would arrive as an explicit "sandbox off" and override a connection
    # kept in sandbox mode. The form's switch leaves the value null until it is touched.
    return Param(
        None,
        type=["null", "boolean"],
        title="SendGrid sandbox",
        description=(
            "Switch on to send this run through SendGrid's sandbox mode: SendGrid validates "
            "every message and delivers none. Left untouched, the run keeps the "
            "sendgrid_default connection's setting; switched on and then off again, this run "
            "sends for real even if the connection is in sandbox mode."
        ),
    )


_BUILDERS: dict[str, Callable[[], Param]] = {AS_OF: _as_of, SENDGRID_SANDBOX: _sendgrid_sandbox}


def dag_params(*names: str) -> dict[str, Param]:
    """Fresh ``Param`` objects for a DAG's ``params=``, by name (``AS_OF``, ...)."""
    return {name: _BUILDERS[name]() for name in names}
