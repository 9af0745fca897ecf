"""SMTP delivery through any relay (Postfix, Amazon SES, Mailgun, ...) or Mailpit locally.

One authenticated connection is opened lazily and reused for every message until the backend is
closed (or the server drops it, then a new one is opened). Messages are the same RFC 5322
documents the file outbox writes (:func:`tend.delivery.outbox.build_email`), so what you review
in ``var/outbox`` is exactly what SMTP carries.

SMTP says precisely where a transaction failed, so the at-most-once rule is easy to honour:

* before ``DATA`` (connect, EHLO, STARTTLS, ``MAIL FROM``, ``RCPT TO``) nothing was accepted:
  connection problems are retried on a fresh connection with backoff; a recipient refused with
  5xx is ``failed`` with the server's reply; a sender refused with 5xx stops the run (every
  message would fail the same way);
* a reply to ``DATA`` or to the message's final dot is authoritative: 250 is ``sent`` (the
  provider id is the server's reply, usually "queued as ..."), 5xx is ``failed``, 4xx is
  retried a few times then ``failed``;
* a connection lost *during* ``DATA`` is ``unknown``: the server may have queued it;
* a refused login raises :class:`~tend.delivery.base.AuthRejected` ("check the smtp_default
  connection"), carrying the results of the chunk so far.

A killed worker leaves its whole chunk ``sending``, though it was inside ``DATA`` for at most
one message. With a journal directory (``TEND_SMTP_JOURNAL_DIR``, on by default in the CLI and
Airflow), the backend writes, per process, each chunk's message ids (``expect``, before the
engine marks the chunk ``sending``) and, fsynced before ``DATA``, each message it starts, then
each the server confirmed. :meth:`SmtpBackend.resolve` reads the
journals of processes of this host that are gone: confirmed is ``sent``, in a chunk but never
started is safe to send again, started but unconfirmed stays ``unknown``. So a kill leaves at
most one message ambiguous instead of a chunk. A journal of a process still alive (a frozen
worker whose lease was taken over) is never trusted: it could still send.

Settings come from the Airflow connection ``smtp_default`` (host, port, login, password; extras
``starttls``, ``ssl``, ``timeout``) or, outside Airflow, ``TEND_SMTP_URL`` such as
``smtp://user:pass@smtp.example.com:587?starttls=true``, ``smtps://user:pass@host:465`` or
``smtp://localhost:1025`` (Mailpit). Without an explicit choice, port 465 means implicit TLS
and port 587 means STARTTLS.
"""

from __future__ import annotations

import logging
import os
import random
import smtplib
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email import policy
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tend import config
from tend.delivery.base import (
    AuthRejected,
    DeliveryResult,
    DeliveryStatus,
    DeliveryStopped,
    OutgoingMessage,
    Resolution,
)
from tend.delivery.outbox import MessageRefused, build_email
from tend.errors import ConfigError
from tend.processes import gone, this_host

__all__ = ["SmtpBackend", "SmtpSettings"]

log = logging.getLogger("tend.delivery.smtp")

CONNECTION_ID = "smtp_default"
_TRUE = frozenset({"1", "true", "yes", "on"})


def _flag(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in _TRUE


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to connect. The password never appears in a repr or a log."""

    host: str = "localhost"
    port: int = 25
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    starttls: bool = False
    ssl: bool = False
    """Implicit TLS from the first byte (port 465), as opposed to STARTTLS."""
    timeout: float = 30.0
    chunk_size: int = 50
    max_attempts: int = 3
    backoff_base: float = 0.5
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    """Trust settings for TLS (default: the system's CAs, verified)."""

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError(f"the SMTP host is empty; set the host of the {CONNECTION_ID} "
                              "connection or TEND_SMTP_URL (e.g. smtp://localhost:1025)")
        if self.starttls and self.ssl:
            raise ConfigError("choose STARTTLS or implicit TLS (ssl), not both")
        if self.username and self.password is None:
            raise ConfigError(f"SMTP user {self.username!r} has no password")

    @classmethod
    def _defaults(cls, port: int | None, starttls: Any, use_ssl: Any, scheme: str = "smtp"
                  ) -> tuple[int, bool, bool]:
        use_ssl = _flag(use_ssl) if use_ssl is not None else (scheme == "smtps" or port == 465)
        port = port or (465 if use_ssl else 25)
        starttls = _flag(starttls) if starttls is not None else (port == 587 and not use_ssl)
        return port, starttls, use_ssl

    @classmethod
    def from_url(cls, url: str) -> SmtpSettings:
        """``smtp://[user:pass@]host[:port][?starttls=true&timeout=30]`` or ``smtps://...``."""
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ConfigError(
                "TEND_SMTP_URL must look like smtp://user:pass@host:587?starttls=true, "
                "smtps://user:pass@host:465 or smtp://localhost:1025 (Mailpit)")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        try:
            port_value = parts.port
        except ValueError as exc:
            raise ConfigError(f"TEND_SMTP_URL has an invalid port: {exc}") from exc
        port, starttls, use_ssl = cls._defaults(port_value, query.get("starttls"),
                                                query.get("ssl"), parts.scheme)
        return cls(
            host=parts.hostname, port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            starttls=starttls, ssl=use_ssl,
            timeout=float(query.get("timeout", 30)),
            chunk_size=int(query.get("chunk_size", 50)),
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SmtpSettings:
        env = config.environment() if env is None else env
        url = env.get("TEND_SMTP_URL")
        if not url:
            raise ConfigError(
                "the smtp delivery backend needs a server: set the Airflow connection "
                f"{CONNECTION_ID}, or TEND_SMTP_URL for the CLI (e.g. smtp://localhost:1025 for "
                "Mailpit, smtp://user:pass@smtp.example.com:587?starttls=true for a relay)")
        return cls.from_url(url)

    @classmethod
    def from_connection(cls, conn: Any) -> SmtpSettings:
        """Host, port, login, password; extras ``starttls``/``ssl`` (or the Airflow SMTP
        provider's ``disable_tls``/``disable_ssl``), ``timeout``, ``chunk_size``."""
        extra = dict(getattr(conn, "extra_dejson", None) or {})
        starttls = extra.get("starttls")
        use_ssl = extra.get("ssl")
        if starttls is None and "disable_tls" in extra:
            starttls = not _flag(extra["disable_tls"])
        if use_ssl is None and "disable_ssl" in extra:
            use_ssl = not _flag(extra["disable_ssl"])
        port, starttls, use_ssl = cls._defaults(getattr(conn, "port", None), starttls, use_ssl)
        return cls(
            host=(getattr(conn, "host", None) or "").strip(), port=port,
            username=getattr(conn, "login", None) or None,
            password=getattr(conn, "password", None) or None,
            starttls=starttls, ssl=use_ssl,
            timeout=float(extra.get("timeout", 30)),
            chunk_size=int(extra.get("chunk_size", 50)),
        )


class _Retry(Exception):
    """Not accepted, safe to try again (on a fresh connection when ``reconnect``)."""

    def __init__(self, why: str, *, reconnect: bool) -> None:
        super().__init__(why)
        self.reconnect = reconnect


class SmtpJournal:
    """Which messages of a chunk entered ``DATA`` and which the server confirmed; see the
    module docstring. One append-only file per process: ``{host}-{pid}.journal``."""

    KEEP_DAYS = 7

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"{this_host()}-{os.getpid()}.journal"
        self._fd: int | None = None
        cutoff = time.time() - self.KEEP_DAYS * 86_400
        for old in self.directory.glob("*.journal"):
            try:
                if old.stat().st_mtime < cutoff:
                    old.unlink()
            except OSError:
                continue

    def _write(self, line: str, *, sync: bool) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.write(self._fd, line.encode())
        if sync:
            os.fsync(self._fd)

    def chunk(self, message_ids: Sequence[str]) -> None:
        self._write("C " + " ".join(message_ids) + "\n", sync=True)

    def started(self, message_id: str) -> None:
        """Fsynced before DATA: a message without this line certainly never reached DATA."""
        self._write(f"S {message_id}\n", sync=True)

    def done(self, message_id: str, provider_id: str | None) -> None:
        # Not fsynced: a lost line only leaves the message unknown, never sends it twice.
        self._write(f"D {message_id} {provider_id or ''}".rstrip() + "\n", sync=False)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def resolve(self, message_ids: Sequence[str]) -> Resolution:
        wanted = set(message_ids)
        chunked: set[str] = set()
        started: set[str] = set()
        done: dict[str, str | None] = {}
        for path in self.directory.glob("*.journal"):
            if not _gone(path.stem):
                continue  # its process may still send: trust nothing it wrote
            for line in path.read_text("utf-8", "replace").splitlines():
                kind, _, rest = line.partition(" ")
                if kind == "C":
                    chunked.update(set(rest.split()) & wanted)
                elif kind == "S" and rest in wanted:
                    started.add(rest)
                elif kind == "D":
                    mid, _, provider = rest.partition(" ")
                    if mid in wanted:
                        done[mid] = provider or None
        out = Resolution(sent=done)
        out.not_sent.extend(sorted(chunked - started - done.keys()))
        return out


def _gone(stem: str) -> bool:
    """Whether the journal's process (``host-pid``) ran on this host and no longer exists."""
    host, _, pid = stem.rpartition("-")
    return gone(host, pid)


class SmtpBackend:
    """Deliver over one reused SMTP connection; see the module docstring."""

    name = "smtp"
    #: A relay delivers what it takes: quiet hours are kept by not handing a message over
    #: before its opening (``tend.delivery.base.delivers_at_once``).
    delivers_at_once = True

    def __init__(self, settings: SmtpSettings, *,
                 sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None,
                 journal_dir: Path | None = None) -> None:
        self.settings = settings
        self.journal = SmtpJournal(journal_dir) if journal_dir is not None else None
        self.chunk_size = settings.chunk_size
        self.connections_opened = 0
        self._conn: smtplib.SMTP | None = None
        self._sleep = sleep
        self._rng = rng or random.Random()

    def __repr__(self) -> str:
        s = self.settings
        return (f"SmtpBackend(host={s.host!r}, port={s.port}, starttls={s.starttls}, "
                f"ssl={s.ssl}, user={s.username!r})")

    def send(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        results: list[DeliveryResult] = []
        for message in messages:
            try:
                results.append(self._send_one(message))
            except (AuthRejected, DeliveryStopped) as stop:
                stop.results = list(results)
                raise
        return results

    def expect(self, message_ids: Sequence[str]) -> None:
        """Journal a chunk before the engine marks it 'sending' (see tend.delivery.base)."""
        if self.journal is not None and message_ids:
            self.journal.chunk(message_ids)

    def resolve(self, message_ids: Sequence[str]) -> Resolution:
        """What the journals of gone workers say about these 'unknown' messages (without a
        journal: nothing, they stay unknown)."""
        if self.journal is None:
            return Resolution()
        return self.journal.resolve(message_ids)

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                conn.close()

    # -- one message ---------------------------------------------------------------------

    def _send_one(self, m: OutgoingMessage) -> DeliveryResult:
        try:
            domain = m.from_email.rpartition("@")[2] or "tend.local"
            data = build_email(m, id_domain=domain).as_bytes(policy=policy.SMTP)
        except (MessageRefused, ValueError, TypeError) as exc:
            return DeliveryResult(m.message_id, DeliveryStatus.FAILED,
                                  error=f"could not build the message: {exc}")
        why = ""
        for attempt in range(1, self.settings.max_attempts + 1):
            try:
                return self._transaction(m, data)
            except _Retry as retry:
                why = str(retry)
                if retry.reconnect:
                    self._drop()
                if attempt < self.settings.max_attempts:
                    delay = self.settings.backoff_base * 2 ** (attempt - 1)
                    delay = self._rng.uniform(delay / 2, delay)
                    log.info("SMTP: %s; retrying in %.2fs", why, delay)
                    self._sleep(delay)
        if why.startswith("temporary"):
            return DeliveryResult(m.message_id, DeliveryStatus.FAILED,
                                  error=f"{why} (after {self.settings.max_attempts} attempts)")
        raise DeliveryStopped(
            f"the SMTP server {self.settings.host}:{self.settings.port} cannot be used ({why}) "
            f"after {self.settings.max_attempts} attempts; unsent messages stay claimed for the "
            "next attempt")

    def _transaction(self, m: OutgoingMessage, data: bytes) -> DeliveryResult:
        conn = self._connection()
        options: list[str] = []
        if not (m.from_email.isascii() and m.to_email.isascii()):
            if not conn.has_extn("smtputf8"):
                return DeliveryResult(m.message_id, DeliveryStatus.FAILED,
                                      error="the address is not ASCII and the SMTP server does "
                                            "not offer SMTPUTF8")
            options.append("SMTPUTF8")
        # Envelope: nothing is accepted before DATA, so any failure here is safe to retry.
        try:
            code, reply = conn.mail(m.from_email, options)
            if code != 250:
                self._rset(conn)
                if code >= 500:
                    raise DeliveryStopped(
                        f"the SMTP server refused the sender {m.from_email} ({code} "
                        f"{_text(reply)}); check TEND_FROM_EMAIL and the relay's allowed "
                        "senders")
                raise _Retry(f"temporary refusal of MAIL FROM ({code} {_text(reply)})",
                             reconnect=False)
            code, reply = conn.rcpt(m.to_email)
            if code not in (250, 251):
                self._rset(conn)
                if code >= 500:
                    return DeliveryResult(m.message_id, DeliveryStatus.FAILED,
                                          error=f"SMTP {code}: {_text(reply)} (recipient "
                                                "refused)")
                raise _Retry(f"temporary refusal of the recipient ({code} {_text(reply)})",
                             reconnect=False)
        except (smtplib.SMTPServerDisconnected, smtplib.SMTPResponseException, OSError) as exc:
            raise _Retry(f"connection lost before DATA ({type(exc).__name__}: {exc})",
                         reconnect=True) from exc
        # DATA: from here the server may queue the message; only its reply is authoritative.
        if self.journal is not None:
            self.journal.started(m.message_id)
        try:
            code, reply = conn.data(data)
        except smtplib.SMTPDataError as exc:
            self._rset(conn)
            if exc.smtp_code >= 500:
                return DeliveryResult(m.message_id, DeliveryStatus.FAILED,
                                      error=f"SMTP {exc.smtp_code}: {_text(exc.smtp_error)}")
            raise _Retry(f"temporary refusal of the message ({exc.smtp_code} "
                         f"{_text(exc.smtp_error)})", reconnect=False) from exc
        except (smtplib.SMTPException, OSError) as exc:
            self._drop()
            return DeliveryResult(
                m.message_id, DeliveryStatus.UNKNOWN,
                error=f"connection lost during DATA ({type(exc).__name__}: {exc}); the server "
                      "may have queued it: not resent (at-most-once)")
        if code >= 400:  # smtplib returns the reply to the final dot instead of raising
            self._rset(conn)
            if code >= 500:
                return DeliveryResult(m.message_id, DeliveryStatus.FAILED,
                                      error=f"SMTP {code}: {_text(reply)}")
            raise _Retry(f"temporary refusal of the message ({code} {_text(reply)})",
                         reconnect=False)
        provider_id = f"smtp:{_text(reply)}"[:200]
        if self.journal is not None:
            self.journal.done(m.message_id, provider_id.replace(" ", "_"))
        return DeliveryResult(m.message_id, DeliveryStatus.SENT, provider_id=provider_id)

    # -- the connection ------------------------------------------------------------------

    def _connection(self) -> smtplib.SMTP:
        if self._conn is not None:
            return self._conn
        s = self.settings
        context = s.ssl_context or ssl.create_default_context()
        try:
            if s.ssl:
                conn: smtplib.SMTP = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout,
                                                      context=context)
            else:
                conn = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
            conn.ehlo()
            if s.starttls:
                if not conn.has_extn("starttls"):
                    conn.close()
                    raise DeliveryStopped(
                        f"the SMTP server {s.host}:{s.port} does not offer STARTTLS; turn "
                        f"starttls off in the {CONNECTION_ID} connection (or TEND_SMTP_URL) "
                        "only if the network is trusted")
                conn.starttls(context=context)
                conn.ehlo()
        except DeliveryStopped:
            raise
        except ssl.SSLError as exc:
            raise DeliveryStopped(f"TLS with {s.host}:{s.port} failed ({exc}); check the "
                                  "server certificate and the ssl/starttls settings") from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise _Retry(f"cannot connect to {s.host}:{s.port} ({type(exc).__name__}: {exc})",
                         reconnect=True) from exc
        if s.username:
            try:
                conn.login(s.username, s.password or "")
            except smtplib.SMTPAuthenticationError as exc:
                conn.close()
                raise AuthRejected(
                    f"the SMTP server refused the login for {s.username!r} ({exc.smtp_code} "
                    f"{_text(exc.smtp_error)}); check the {CONNECTION_ID} connection (or "
                    "TEND_SMTP_URL). Unsent messages stay claimed for the next run") from exc
            except smtplib.SMTPNotSupportedError as exc:
                conn.close()
                raise DeliveryStopped(
                    f"the SMTP server {s.host}:{s.port} offers no AUTH (many servers only offer "
                    "it after STARTTLS); check the starttls setting") from exc
            except (smtplib.SMTPException, OSError) as exc:
                conn.close()
                raise _Retry(f"login interrupted ({type(exc).__name__}: {exc})",
                             reconnect=True) from exc
        self._conn = conn
        self.connections_opened += 1
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _rset(self, conn: smtplib.SMTP) -> None:
        try:
            conn.rset()
        except (smtplib.SMTPException, OSError):
            self._drop()


def _text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return " ".join(text.split())
