"""The one interface every delivery backend implements (outbox now; SMTP and SendGrid later).

Why batches
-----------
:meth:`DeliveryBackend.send` takes a *sequence* of messages rather than one, because the real
backends are cheaper in bulk: SendGrid's v3 API accepts up to 1,000 personalizations per call
and SMTP can pipeline many messages over one authenticated connection. Designing the interface
around a chunk now means the pipeline's shape does not change when those backends arrive.

It also matches how the contact ledger protects against double sends: the ledger marks a whole
chunk ``sending`` *before* calling ``send()`` and records each :class:`DeliveryResult` after.
If the process dies in between, the chunk stays ``sending`` and a human (or a reconciliation
step) decides, instead of a retry silently emailing customers twice.

Contract
--------
* ``send()`` returns exactly one result per message, in the same order, so callers can ``zip``.
* Per-message problems (a malformed address, a refused header) are ``FAILED`` results with an
  ``error`` that says what to fix; they never raise, so one bad row cannot sink a chunk.
* A backend raises :class:`~tend.errors.DeliveryAuthError` only when credentials are rejected:
  no later message can succeed, so the run should stop at once.
* ``UNKNOWN`` means the backend may or may not have accepted the message (e.g. a timeout after
  the request was sent). The ledger must not resend those blindly.
* Backends must be idempotent on ``message_id`` where the provider allows it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol, runtime_checkable

__all__ = ["DeliveryBackend", "DeliveryResult", "DeliveryStatus", "OutgoingMessage"]


@dataclass(frozen=True)
class OutgoingMessage:
    """A fully rendered email, ready for any backend; nothing here is templated any more."""

    message_id: str
    """Tend's own id (the ledger key); also sent as the ``tend_message_id`` custom arg so
    provider events (bounces, opens) can be matched back to the ledger."""
    to_email: str
    to_name: str | None
    from_email: str
    from_name: str
    reply_to: str | None
    subject: str
    text: str
    html: str
    headers: Mapping[str, str]
    """Extra headers, e.g. ``List-Unsubscribe`` and ``List-Unsubscribe-Post``."""
    categories: tuple[str, ...] = ()
    custom_args: Mapping[str, str] = field(default_factory=dict)
    """Provider metadata echoed back on events: tend_message_id, program, kind, run_id."""
    send_at: datetime | None = None
    """Deliver no earlier than this (timezone-aware); used for quiet hours."""


class DeliveryStatus(StrEnum):
    """Outcome of handing one message to a backend."""

    SENT = "sent"
    """The backend accepted the message (not: the customer received it)."""
    FAILED = "failed"
    """The backend refused it; ``error`` says why. Safe to fix and retry."""
    UNKNOWN = "unknown"
    """We cannot tell whether it was accepted; do not resend without reconciling."""


@dataclass(frozen=True)
class DeliveryResult:
    """What happened to one :class:`OutgoingMessage`."""

    message_id: str
    status: DeliveryStatus
    provider_id: str | None = None
    """The backend's own id for the message (SendGrid X-Message-Id, outbox file name)."""
    error: str | None = None


@runtime_checkable
class DeliveryBackend(Protocol):
    """A place messages go. See the module docstring for the full contract."""

    name: str

    def send(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        """Deliver ``messages``; return one result per message, in the same order."""
        ...

    def close(self) -> None:
        """Release connections; the backend is not used after this."""
        ...
