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
  no later message can succeed, so the run should stop at once. Other requests of the same
  chunk may already have been accepted by then, so a backend that sends concurrently raises
  :class:`AuthRejected`, which carries the results that *did* complete; the caller records
  those and puts only the rest back to ``claimed``. A bare ``DeliveryAuthError`` (no results)
  promises that nothing of the chunk was accepted.
* :class:`DeliveryStopped` is the same shape for "the provider cannot take anything right now"
  (still unreachable or rate-limited after every retry, or a wrong API URL): completed results
  are recorded, the messages that never left go back to ``claimed`` for the next attempt.
* ``UNKNOWN`` means the backend may or may not have accepted the message (e.g. a timeout after
  the request was sent). The ledger must not resend those blindly.
* Backends must be idempotent on ``message_id`` where the provider allows it.
* A backend that can tell afterwards whether a message went out implements ``resolve(ids) ->
  Resolution`` (the outbox: the file exists). The send engine asks it about every ``unknown``
  message of a batch before sending: what went out becomes ``sent``, what certainly did not is
  sent now, the rest stays ``unknown`` and is reported (``tend reconcile``). A backend that
  keeps its own record for this may implement ``expect(ids)``: the engine calls it with each
  chunk's message ids just before it marks the chunk ``sending`` (SMTP's journal).
* A backend whose sends are rehearsals (SendGrid's sandbox mode: validated, never delivered)
  says so with a true ``rehearsal`` attribute; the engine then puts every message back to
  ``claimed`` after the call: a rehearsal records no message as sent, and the night's claims
  stay for its real run (counting in caps and cooldowns as any claim does).
* A backend may declare ``chunk_size``: how many messages it takes at once (the outbox and
  SMTP 50 per ``send()`` call; SendGrid 128 per slice of its window), and ``chunks_in_flight``:
  how many of those it holds at once (default 1; SendGrid 4). Their product is the backend's
  *window*: the engine hands a chunk over (and marks it ``sending`` just before) only while the
  messages handed over and not yet recorded stay within it, so it bounds how many messages a
  crash can leave ambiguous.
* A backend that sends concurrently may implement ``submit(messages, done)`` instead of being
  driven through ``send()``: it returns at once and calls ``done(outcomes)`` (from any thread)
  as messages finish, one :class:`DeliveryResult` or :class:`NotSent` per message, each exactly
  once. The engine then keeps the window full: a message leaves as soon as another finishes,
  and a slow answer holds up nobody else (SendGrid). Backends without it are called through
  ``send()`` on ``chunks_in_flight`` threads.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol, runtime_checkable

from tend.errors import DeliveryAuthError, DeliveryError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "AuthRejected",
    "DeliveryBackend",
    "DeliveryResult",
    "DeliveryStatus",
    "DeliveryStopped",
    "NotSent",
    "OutgoingMessage",
    "Resolution",
    "chunk_size_of",
    "chunks_in_flight_of",
    "delivers_at_once",
    "is_rehearsal",
    "resolver_of",
    "safe_display_name",
    "submitter_of",
]

DEFAULT_CHUNK_SIZE = 50
"""Messages per ``send()`` call for a backend that states no preference."""

DISPLAY_NAME_MAX = 64
"""The longest display name Tend writes (longer is cut): no real name needs more, and the
header stays far below the line lengths SMTP servers refuse, whatever its encoding."""
_NAME_PUNCTUATION = frozenset(".-'\u2019&")


def safe_display_name(value: str | None) -> str | None:
    """A display name (a customer's, the shop's From name) reduced to text that every header
    parser reads as one phrase of one mailbox; None when nothing is left.

    Kept: letters, marks, digits, spaces and ``. - ' ’ &`` (after NFKC, so a full-width ``＠``
    is an ``@``); everything else becomes a space: the ``=?`` and ``?=`` of RFC 2047 encoded
    words (a relay that decodes them must not find an address inside), the separators parsers
    split on (``, ; : < > " @ ( ) [ ]`` and the backslash), CR, LF, NUL and every other
    control or format character. Spaces are collapsed, the result is cut at
    ``DISPLAY_NAME_MAX`` characters. Every backend calls this where a name enters a header
    (``build_email`` for the outbox and SMTP, the SendGrid payload), and the engine when it
    builds the message.
    """
    if not value:
        return None
    text = unicodedata.normalize("NFKC", str(value))
    kept = "".join(ch if unicodedata.category(ch)[0] in "LMN" or ch in _NAME_PUNCTUATION
                   else " " for ch in text)
    name = " ".join(kept.split())[:DISPLAY_NAME_MAX].strip()
    return name or None


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


def chunk_size_of(backend: object) -> int:
    """The backend's preferred chunk size (see the module docstring), else 50."""
    size = getattr(backend, "chunk_size", None)
    return int(size) if isinstance(size, int) and size >= 1 else DEFAULT_CHUNK_SIZE


def chunks_in_flight_of(backend: object) -> int:
    """How many chunks the backend takes at once (see the module docstring), else 1."""
    n = getattr(backend, "chunks_in_flight", None)
    return int(n) if isinstance(n, int) and n >= 1 else 1


@dataclass(frozen=True)
class NotSent:
    """A message a ``submit`` backend never let leave because it stopped (``reason``): the
    engine puts it back to ``claimed``, so the next attempt sends it."""

    message_id: str
    reason: DeliveryError


Outcome = DeliveryResult | NotSent
"""What a ``submit`` backend reports for one message."""


def submitter_of(backend: object
                 ) -> Callable[[Sequence[OutgoingMessage], Callable[[Sequence[Outcome]], None]],
                               None] | None:
    """The backend's ``submit`` (see the module docstring), or None: driven through send()."""
    submit = getattr(backend, "submit", None)
    return submit if callable(submit) else None


@dataclass(frozen=True)
class Resolution:
    """A backend's word on messages whose fate was ``unknown``."""

    sent: dict[str, str | None] = field(default_factory=dict)
    """message_id -> provider id: these went out."""
    not_sent: list[str] = field(default_factory=list)
    """These certainly never went out: safe to send again."""


def resolver_of(backend: object) -> Callable[[Sequence[str]], Resolution] | None:
    """The backend's ``resolve`` (see the module docstring), or None when it cannot tell."""
    resolve = getattr(backend, "resolve", None)
    return resolve if callable(resolve) else None


def delivers_at_once(backend: object) -> bool:
    """Whether what the backend is handed reaches the customer at once, with no way to hold a
    message until its ``send_at`` (SMTP): the engine then keeps a message outside quiet hours
    claimed in the ledger until its opening. SendGrid holds it itself (``send_at``); the
    outbox writes files that nobody reads in the night."""
    return getattr(backend, "delivers_at_once", False) is True


def is_rehearsal(backend: object) -> bool:
    """Whether the backend's sends are rehearsals that must not count (see the module
    docstring): its ``rehearsal`` attribute, else a SendGrid-style ``settings.sandbox``."""
    flag = getattr(backend, "rehearsal", None)
    if flag is None:
        flag = getattr(getattr(backend, "settings", None), "sandbox", False)
    return flag is True


class AuthRejected(DeliveryAuthError):
    """Credentials were refused mid-chunk; ``results`` holds what completed before the stop.

    Every message of the chunk without a result here never reached the provider (or was
    refused with the same 401/403), so the caller may safely put it back to ``claimed``.
    """

    def __init__(self, message: str, results: Sequence[DeliveryResult] = ()) -> None:
        super().__init__(message)
        self.results: list[DeliveryResult] = list(results)


class DeliveryStopped(DeliveryError):
    """The provider cannot take messages now; ``results`` holds what completed before the stop.

    Raised after the retries are spent (connection refused, 503, 429 for too long) or when the
    configuration is wrong (404 on the API URL). Messages without a result were not accepted.
    """

    def __init__(self, message: str, results: Sequence[DeliveryResult] = ()) -> None:
        super().__init__(message)
        self.results: list[DeliveryResult] = list(results)
