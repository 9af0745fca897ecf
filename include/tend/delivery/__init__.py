"""Delivery: hand rendered messages to a backend through one batch-shaped interface.

``outbox`` (the embedded default) writes ``.eml`` files to a directory, so a fresh install can
run every program end to end without any email account. ``smtp`` and ``sendgrid`` arrive later;
asking for them today fails loudly rather than pretending to send.
"""

from __future__ import annotations

from pathlib import Path

from tend.delivery.base import DeliveryBackend, DeliveryResult, DeliveryStatus, OutgoingMessage
from tend.delivery.outbox import OutboxBackend
from tend.errors import ConfigError

__all__ = [
    "KNOWN_BACKENDS",
    "DeliveryBackend",
    "DeliveryResult",
    "DeliveryStatus",
    "OutboxBackend",
    "OutgoingMessage",
    "make_backend",
]

KNOWN_BACKENDS: tuple[str, ...] = ("outbox",)
_PLANNED_BACKENDS: tuple[str, ...] = ("smtp", "sendgrid")


def make_backend(name: str, *, outbox_dir: Path | None = None) -> DeliveryBackend:
    """Build the backend called ``name`` (case-insensitive).

    Raises ConfigError for a backend that does not exist, or one that is planned but not
    available yet, so a typo in the configuration stops the run before anything is sent.
    """
    key = name.strip().lower()
    if key == "outbox":
        if outbox_dir is None:
            raise ConfigError(
                "the outbox delivery backend needs a directory to write .eml files to; "
                "set the outbox directory in Tend's configuration (e.g. var/outbox)"
            )
        return OutboxBackend(Path(outbox_dir))
    if key in _PLANNED_BACKENDS:
        raise ConfigError(
            f"delivery backend {name!r} is not available yet; use 'outbox' for now "
            f"(available: {', '.join(KNOWN_BACKENDS)})"
        )
    raise ConfigError(
        f"unknown delivery backend {name!r}; choose one of: {', '.join(KNOWN_BACKENDS)} "
        f"({', '.join(_PLANNED_BACKENDS)} are planned but not available yet)"
    )
