"""Delivery: hand rendered messages to a backend through one batch-shaped interface.

Three backends, chosen by ``TEND_DELIVERY`` / the Airflow Variable ``tend_delivery``:

* ``outbox`` (the embedded default) writes ``.eml`` files to a directory, so a fresh install can
  run every program end to end without any email account;
* ``smtp`` sends over one reused connection to any relay, or to Mailpit locally
  (:mod:`tend.delivery.smtp`);
* ``sendgrid`` is production: SendGrid's v3 Mail Send API over a pooled keep-alive client with
  bounded concurrency (:mod:`tend.delivery.sendgrid`). ``tend fake-sendgrid`` serves a local
  stand-in (:mod:`tend.dev.fake_sendgrid`, a developer tool) for tests, benchmarks and rehearsals.

The heavy modules are imported only when their backend is built, so the outbox path (and DAG
parsing) never imports aiohttp.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from tend.delivery.base import (
    DEFAULT_CHUNK_SIZE,
    AuthRejected,
    DeliveryBackend,
    DeliveryResult,
    DeliveryStatus,
    DeliveryStopped,
    OutgoingMessage,
    Resolution,
    chunk_size_of,
    chunks_in_flight_of,
    safe_display_name,
)
from tend.delivery.outbox import OutboxBackend
from tend.errors import ConfigError

if TYPE_CHECKING:
    from tend.delivery.sendgrid import SendGridSettings
    from tend.delivery.smtp import SmtpSettings

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "KNOWN_BACKENDS",
    "AuthRejected",
    "DeliveryBackend",
    "DeliveryResult",
    "DeliveryStatus",
    "DeliveryStopped",
    "OutboxBackend",
    "OutgoingMessage",
    "Resolution",
    "chunk_size_of",
    "chunks_in_flight_of",
    "configured_backend",
    "make_backend",
    "safe_display_name",
]

KNOWN_BACKENDS: tuple[str, ...] = ("outbox", "smtp", "sendgrid")


def make_backend(
    name: str,
    *,
    outbox_dir: Path | None = None,
    sendgrid: SendGridSettings | None = None,
    smtp: SmtpSettings | None = None,
    env: Mapping[str, str] | None = None,
    smtp_journal: Path | None = None,
) -> DeliveryBackend:
    """Build the backend called ``name`` (case-insensitive).

    ``sendgrid``/``smtp`` settings come from the Airflow connections (``tend_airflow``); when
    they are not given, the environment is read (``TEND_SENDGRID_API_KEY``, ``TEND_SMTP_URL``,
    ...). ``smtp_journal``: the SMTP backend's journal directory (see tend.delivery.smtp).
    Raises ConfigError for an unknown backend or missing settings, so a typo in the
    configuration stops the run before anything is sent.
    """
    key = name.strip().lower()
    if key == "outbox":
        if outbox_dir is None:
            raise ConfigError(
                "the outbox delivery backend needs a directory to write .eml files to; "
                "set the outbox directory in Tend's configuration (e.g. var/outbox)"
            )
        return OutboxBackend(Path(outbox_dir))
    if key == "sendgrid":
        from tend.delivery.sendgrid import SendGridBackend, SendGridSettings

        return SendGridBackend(sendgrid or SendGridSettings.from_env(env))
    if key == "smtp":
        from tend.delivery.smtp import SmtpBackend, SmtpSettings

        return SmtpBackend(smtp or SmtpSettings.from_env(env), journal_dir=smtp_journal)
    raise ConfigError(
        f"unknown delivery backend {name!r}; choose one of: {', '.join(KNOWN_BACKENDS)}"
    )


def configured_backend(name: str | None = None) -> DeliveryBackend:
    """The backend named by ``name``, else ``TEND_DELIVERY``, else the outbox, built from the
    environment: what the CLI sends through (Airflow builds its own from connections)."""
    from tend import config

    return make_backend(config.delivery_backend(name), outbox_dir=config.outbox_dir(),
                        smtp_journal=config.smtp_journal_dir())
