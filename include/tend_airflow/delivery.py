"""The delivery backend a send task uses, built from Airflow's Variable and connections.

``TEND_DELIVERY`` (a deployment pins it) or the Variable ``tend_delivery`` names the backend;
``sendgrid_default`` and ``smtp_default`` hold its settings and secrets, the environment stands
in when they are not defined, and a run may switch SendGrid's sandbox mode for itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tend import config
from tend_airflow import runs
from tend_airflow.connections import connection
from tend_airflow.params import SENDGRID_SANDBOX

if TYPE_CHECKING:
    from tend.delivery import DeliveryBackend
    from tend.delivery.sendgrid import SendGridSettings
    from tend.delivery.smtp import SmtpSettings

DELIVERY_VARIABLE = "tend_delivery"
SENDGRID_CONN_ID = "sendgrid_default"
SMTP_CONN_ID = "smtp_default"


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
    Without that connection, the environment (``TEND_SENDGRID_API_KEY``, ...). The run's
    ``sendgrid_sandbox`` param (or conf) switches sandbox mode for that run only.
    """
    from tend.delivery.sendgrid import SendGridSettings, _flag

    conn = connection(SENDGRID_CONN_ID)
    settings = (SendGridSettings.from_connection(conn) if conn is not None
                else SendGridSettings.from_env())
    switch = runs.sendgrid_sandbox(context)
    if switch is not None:
        settings = settings.with_(sandbox=_flag(switch, f"the run's {SENDGRID_SANDBOX}"))
    return settings


def smtp_settings() -> SmtpSettings:
    """The ``smtp_default`` connection (host, port, login, password; extras starttls/ssl),
    else ``TEND_SMTP_URL``."""
    from tend.delivery.smtp import SmtpSettings

    conn = connection(SMTP_CONN_ID)
    return SmtpSettings.from_connection(conn) if conn is not None else SmtpSettings.from_env()


def sandboxed(context: Mapping[str, Any] | None = None) -> bool:
    """Whether this run delivers through SendGrid's sandbox (validated, never delivered)."""
    return delivery_name() == "sendgrid" and sendgrid_settings(context).sandbox


def delivery_backend(context: Mapping[str, Any] | None = None) -> DeliveryBackend:
    """The backend named by TEND_DELIVERY / the Variable, built from its Airflow connection."""
    from tend.delivery import make_backend

    name = delivery_name()
    if name == "sendgrid":
        return make_backend(name, sendgrid=sendgrid_settings(context))
    if name == "smtp":
        return make_backend(name, smtp=smtp_settings(), smtp_journal=config.smtp_journal_dir())
    return make_backend(name, outbox_dir=config.outbox_dir())
