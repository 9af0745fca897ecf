"""The embedded default backend: every message becomes an ``.eml`` file in a directory.

Why a file outbox: a new install (and every test, and every demo) can run the whole pipeline
with no email account and no risk of mailing real customers, and the result is a real RFC 5322
message that any mail client opens, so what you review is exactly what SMTP would carry.

Guarantees:

* **Atomic.** Each file is written to a hidden temporary file in the same directory, fsynced,
  then ``os.replace``-d into place, so a crash leaves either a whole message or none.
* **Idempotent.** The file is named after Tend's ``message_id``; if it already exists the
  message was already delivered, so it is reported ``SENT`` again and not rewritten. Retrying a
  chunk after a crash therefore never duplicates a message. (One writer per message id is the
  ledger's job: it marks a chunk ``sending`` before delivery.)
* **Self-reconciling.** Because a file appears only whole, its existence is the truth about a
  message whose fate a crash left ``unknown``: :meth:`OutboxBackend.resolve` says which went
  out (the file exists) and which never did (no file; a leftover temporary file is removed), so
  the engine sends the latter and a killed outbox run ends with every message delivered once.
* **No header injection.** The renderer already strips line breaks from subjects, but this is
  the last line of defence: any CR/LF in a header value refuses that one message with a
  ``FAILED`` result naming the header, instead of writing a message with a smuggled header.
"""

from __future__ import annotations

import contextlib
import email.errors
import json
import os
import re
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

from tend.delivery.base import (
    DeliveryResult,
    DeliveryStatus,
    OutgoingMessage,
    Resolution,
    safe_display_name,
)

__all__ = ["MessageRefused", "OutboxBackend", "build_email"]

# A message id becomes a file name and the local part of the Message-ID header: keep it to a
# conservative alphabet so neither can be abused (no "/", "..", spaces or angle brackets).
_SAFE_MESSAGE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
# RFC 5322 field names: printable ASCII except the colon.
_FIELD_NAME = re.compile(r"[!-9;-~]+")
# Headers the outbox sets itself; a caller-supplied copy would duplicate or contradict them.
_RESERVED_HEADERS = frozenset(
    name.lower()
    for name in (
        "From", "To", "Cc", "Bcc", "Reply-To", "Subject", "Date", "Message-ID", "MIME-Version",
        "Content-Type", "Content-Transfer-Encoding", "X-Tend-Message-Id", "X-Tend-Categories",
        "X-Tend-Send-At", "X-Tend-Custom-Args",
    )
)  # fmt: skip


class MessageRefused(ValueError):
    """A message this backend will not write; the text becomes the FAILED result's error."""


_Refused = MessageRefused


def _no_line_break(header: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise _Refused(
            f"header {header} contains a line break (CR/LF), which could inject extra headers; "
            "refusing this message. Subjects and names must be single-line (the renderer "
            "strips line breaks, so this points to a message built outside it)"
        )


class OutboxBackend:
    """Write each message to ``{directory}/{message_id}.eml``; see the module docstring."""

    name = "outbox"

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def send(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        """Write every message; one result per message, in order. Never raises per message."""
        return [self._send_one(message) for message in messages]

    def close(self) -> None:
        """Nothing to release: files are closed as soon as they are written."""

    def resolve(self, message_ids: Sequence[str]) -> Resolution:
        """Which of these messages went out: exactly those whose file exists (see above)."""
        out = Resolution()
        for mid in message_ids:
            if not _SAFE_MESSAGE_ID.fullmatch(mid) or ".." in mid:
                continue  # never written under this name: leave it to the operator
            path = self.path_for(mid)
            if path.exists():
                out.sent[mid] = f"outbox:{path.name}"
            else:
                for stale in self.directory.glob(f".{path.stem}.*.tmp"):
                    with contextlib.suppress(OSError):
                        stale.unlink()
                out.not_sent.append(mid)
        return out

    def path_for(self, message_id: str) -> Path:
        """Where the message with this id is (or would be) written."""
        return self.directory / f"{message_id}.eml"

    def _send_one(self, message: OutgoingMessage) -> DeliveryResult:
        if not _SAFE_MESSAGE_ID.fullmatch(message.message_id) or ".." in message.message_id:
            return DeliveryResult(
                message.message_id,
                DeliveryStatus.FAILED,
                error=(
                    f"message_id {message.message_id!r} cannot be used as a file name; use only "
                    "letters, digits, '.', '_' and '-' (at most 200; no leading '.', no '..')"
                ),
            )
        path = self.path_for(message.message_id)
        provider_id = f"outbox:{path.name}"
        if path.exists():
            return DeliveryResult(message.message_id, DeliveryStatus.SENT, provider_id=provider_id)
        try:
            data = _build(message).as_bytes(policy=policy.SMTP)
            self._write_atomically(path, data)
        except _Refused as exc:
            return DeliveryResult(message.message_id, DeliveryStatus.FAILED, error=str(exc))
        except (ValueError, TypeError, email.errors.MessageError) as exc:
            return DeliveryResult(
                message.message_id,
                DeliveryStatus.FAILED,
                error=f"could not build the message: {exc}; check the addresses and headers",
            )
        except OSError as exc:
            return DeliveryResult(
                message.message_id,
                DeliveryStatus.FAILED,
                error=f"could not write {path}: {exc}; check the outbox directory's space and "
                "permissions",
            )
        return DeliveryResult(message.message_id, DeliveryStatus.SENT, provider_id=provider_id)

    def _write_atomically(self, path: Path, data: bytes) -> None:
        fd, tmp_name = tempfile.mkstemp(dir=self.directory, prefix=f".{path.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise


def build_email(message: OutgoingMessage, *, id_domain: str = "tend.local") -> EmailMessage:
    """Turn an OutgoingMessage into a multipart/alternative EmailMessage (text first).

    Shared by the outbox and the SMTP backend, so a reviewed ``.eml`` is exactly what SMTP
    carries. Raises MessageRefused (header injection, reserved headers, naive send_at).
    """
    return _build(message, id_domain=id_domain)


def _build(message: OutgoingMessage, *, id_domain: str = "tend.local") -> EmailMessage:
    # names are cleaned, not refused: a customer's odd name must not cost them the message
    from_name = safe_display_name(message.from_name) or ""
    to_name = safe_display_name(message.to_name) or ""
    single_line = {
        "Subject": message.subject,
        "From (name)": from_name,
        "From (address)": message.from_email,
        "To (name)": to_name,
        "To (address)": message.to_email,
        "Reply-To": message.reply_to or "",
        "X-Tend-Message-Id": message.message_id,
    }
    for header, value in single_line.items():
        _no_line_break(header, value)
    for category in message.categories:
        _no_line_break("X-Tend-Categories", category)
    for name, value in message.headers.items():
        if not _FIELD_NAME.fullmatch(name):
            raise _Refused(f"header name {name!r} is not a valid RFC 5322 field name")
        if name.lower() in _RESERVED_HEADERS:
            raise _Refused(
                f"header {name} is set by the outbox itself; remove it from the message's "
                "extra headers (use the message's own fields instead)"
            )
        _no_line_break(name, value)
    if message.send_at is not None and message.send_at.utcoffset() is None:
        raise _Refused(
            f"send_at {message.send_at.isoformat()} has no timezone; pass an aware datetime "
            "(quiet hours are computed in the customer's timezone)"
        )

    msg = EmailMessage(policy=policy.default)
    msg["From"] = Address(display_name=from_name, addr_spec=message.from_email)
    msg["To"] = Address(display_name=to_name, addr_spec=message.to_email)
    if message.reply_to:
        msg["Reply-To"] = message.reply_to  # parsed, so "Name <addr>" works too
    msg["Subject"] = message.subject
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = f"<{message.message_id}@{id_domain}>"
    for name, value in message.headers.items():
        msg[name] = value
    msg["X-Tend-Message-Id"] = message.message_id
    if message.categories:
        msg["X-Tend-Categories"] = ", ".join(message.categories)
    if message.send_at is not None:
        msg["X-Tend-Send-At"] = message.send_at.isoformat()
    if message.custom_args:
        # json.dumps escapes control characters, so this value is always a single line.
        msg["X-Tend-Custom-Args"] = json.dumps(
            dict(message.custom_args), ensure_ascii=True, sort_keys=True, separators=(",", ":")
        )
    # Quoted-printable keeps the file 7-bit clean and still readable in a text editor.
    msg.set_content(message.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(message.html, subtype="html", charset="utf-8", cte="quoted-printable")
    return msg
