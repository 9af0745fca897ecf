"""SendGrid v3 Mail Send: fast (one keep-alive session, bounded concurrency) and careful.

SendGrid's Mail Send API has no idempotency key: a request that may have reached SendGrid must
never be sent again, or the customer gets the mail twice. So every failure is sorted by one
question, *could SendGrid have accepted this request?*

==========================================  ==========  ====================================
what happened                               could it?   what the backend does
==========================================  ==========  ====================================
202 Accepted (X-Message-Id)                 yes         ``sent``, provider id = X-Message-Id
200 OK (sandbox mode)                       no (test)   ``sent``, provider id ``sandbox``
400 / 413 / other 4xx                       no          ``failed`` with SendGrid's error text
429 Too Many Requests                       no          this request waits for Retry-After /
                                                        X-RateLimit-Reset, then retries; the
                                                        others go on. When the account is
                                                        limited (most recent answers are 429),
                                                        every request pauses until the reset
503 Service Unavailable                     no          retry with backoff and jitter
connection refused / connect timeout / DNS  no          retry with backoff and jitter
401 / 403                                   no          stop the run now (AuthRejected)
404 / 405                                   no          stop the run now (wrong API URL)
500, 502, 504, other 5xx                    maybe       ``unknown``: never resent
read timeout, connection dropped            maybe       ``unknown``: never resent
==========================================  ==========  ====================================

When retries run out (SendGrid unreachable, or still 503 or 429 after the budget), the backend
raises :class:`~tend.delivery.base.DeliveryStopped` carrying what completed; the messages that
never left go back to ``claimed`` and the task's retry sends them.

Speed. The official client opens a new HTTPS connection per request and has no timeout. Here one
:class:`aiohttp.ClientSession` lives as long as the backend, on a private event loop in a
background thread (uvloop when available), with at most ``max_in_flight`` requests (default 64)
over keep-alive connections. The send engine feeds it through ``submit()``: every message is its
own request, reported as soon as it finishes, so a new one leaves whenever any slot frees (a
sliding window, not a chunk waiting for its slowest request). A request unanswered after
``slow_after`` gives its slot back while it waits for its answer; a 503 or a refused connection
backs off without a slot, and so does a 429: the request that got it waits its own
``Retry-After`` (else ``X-RateLimit-Reset``) while the others keep flowing, because a sporadic
429 says nothing about the next request. Only when the account itself is limited does the whole
backend pause: when, among the answers of the last ``_LIMIT_WINDOW`` seconds (0.2 s), at least
``_LIMIT_MIN_429`` (5) are 429 and they are at least half of them, the backend sets one "not
before" time (the latest reset) that every request waits for, so a real account limit is not
hammered with a window's worth of doomed requests. JSON bodies are
built as plain dicts (the ``sendgrid`` package's ``Mail`` helper produces the same document but
costs far more CPU per message; the tests compare both). CPU per request is what limits a
2-core machine, so the hot path does as little as possible.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
import unicodedata
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from email.utils import parseaddr
from typing import Any
from urllib.parse import urlsplit

import aiohttp

try:  # msgspec (an Airflow dependency) encodes a body in half the CPU of json.dumps
    from msgspec.json import Encoder as _Encoder

    _encode = _Encoder().encode
except ImportError:  # pragma: no cover
    def _encode(doc: Any) -> bytes:
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()

from tend import config
from tend.delivery.base import (
    AuthRejected,
    DeliveryResult,
    DeliveryStatus,
    DeliveryStopped,
    NotSent,
    Outcome,
    OutgoingMessage,
    safe_display_name,
)
from tend.errors import ConfigError

__all__ = [
    "DEFAULT_BASE_URL",
    "SendGridBackend",
    "SendGridSettings",
    "error_text",
    "mail_send_payload",
    "verify_event_webhook",
]

log = logging.getLogger("tend.delivery.sendgrid")

DEFAULT_BASE_URL = "https://api.sendgrid.com"
MAIL_SEND_PATH = "/v3/mail/send"
CONNECTION_ID = "sendgrid_default"
_RESERVED_HEADERS = frozenset(
    h.lower() for h in ("x-sg-id", "x-sg-eid", "received", "dkim-signature", "Content-Type",
                        "Content-Transfer-Encoding", "To", "From", "Subject", "Reply-To", "CC",
                        "BCC")
)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _flag(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{what} must be true or false, not {value!r}")


def _number(value: Any, what: str, kind: type = int) -> Any:
    try:
        n = kind(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} must be a number, not {value!r}") from exc
    if n <= 0:
        raise ConfigError(f"{what} must be positive, not {value!r}")
    return n


@dataclass(frozen=True)
class SendGridSettings:
    """Everything the SendGrid backend needs. ``api_key`` never appears in a repr or a log."""

    api_key: str = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    sandbox: bool = False
    """SendGrid validates every message and delivers none (answers 200, no X-Message-Id)."""
    asm_group_id: int | None = None
    """Optional SendGrid unsubscribe group, attached to marketing messages only."""
    max_in_flight: int = 64
    """Requests on the wire at once, over as many keep-alive connections (plus the slow ones
    past ``slow_after``, which give their slot back)."""
    chunk_size: int = 128
    """Messages the engine marks 'sending' and hands over at once (a slice of the window)."""
    chunks_in_flight: int = 4
    """Slices held at once: the window is chunk_size x chunks_in_flight (512) messages handed
    over and not yet recorded, which is also the most a crash can leave ambiguous. It is wider
    than max_in_flight so requests always wait for a slot, and slow replies do not empty it."""
    slow_after: float = 1.0
    """Seconds after which an unanswered request gives its slot to the next one."""
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_attempts: int = 5
    """Tries per message for failures that certainly did not reach SendGrid (refused, 503)."""
    backoff_base: float = 0.5
    backoff_max: float = 20.0
    max_rate_limit_wait: float = 900.0
    """Seconds one message may spend waiting on 429s before the run stops (left claimed)."""

    def __post_init__(self) -> None:
        if not self.api_key or not self.api_key.strip():
            raise ConfigError(
                "the SendGrid API key is empty: put it in the password field of the Airflow "
                f"connection {CONNECTION_ID} (or TEND_SENDGRID_API_KEY outside Airflow)")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"the SendGrid API URL {self.base_url!r} is not an http(s) URL; leave the host "
                f"of the {CONNECTION_ID} connection empty for {DEFAULT_BASE_URL}, or give a "
                "full URL such as http://127.0.0.1:8089 for a local stand-in")
        for name in ("max_in_flight", "chunk_size", "chunks_in_flight", "max_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"SendGrid setting {name} must be at least 1")
        if self.slow_after <= 0:
            raise ConfigError("SendGrid setting slow_after must be a positive number of seconds")

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + MAIL_SEND_PATH

    def with_(self, **changes: Any) -> SendGridSettings:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SendGridSettings:
        """Outside Airflow: ``TEND_SENDGRID_API_KEY`` (or ``SENDGRID_API_KEY``), and optional
        ``TEND_SENDGRID_URL``, ``TEND_SENDGRID_SANDBOX``, ``TEND_SENDGRID_ASM_GROUP_ID``,
        ``TEND_SENDGRID_MAX_IN_FLIGHT``, ``TEND_SENDGRID_CHUNK_SIZE``,
        ``TEND_SENDGRID_CHUNKS_IN_FLIGHT``,
        ``TEND_SENDGRID_CONNECT_TIMEOUT``, ``TEND_SENDGRID_READ_TIMEOUT``,
        ``TEND_SENDGRID_SLOW_AFTER``."""
        env = config.environment() if env is None else env
        key = env.get("TEND_SENDGRID_API_KEY") or env.get("SENDGRID_API_KEY") or ""
        if not key.strip():
            raise ConfigError(
                "the sendgrid delivery backend needs an API key: set the password of the "
                f"Airflow connection {CONNECTION_ID}, or TEND_SENDGRID_API_KEY for the CLI "
                "(for a rehearsal without an account: tend fake-sendgrid --port 8089 and "
                "TEND_SENDGRID_URL=http://127.0.0.1:8089 with any key)")
        return cls(api_key=key.strip(), **_options(env, prefix="TEND_SENDGRID_", url_key="URL"))

    @classmethod
    def from_connection(cls, conn: Any, env: Mapping[str, str] | None = None
                        ) -> SendGridSettings:
        """From an Airflow connection: password = API key; host overrides the API URL.

        The host may be a full URL (``http://127.0.0.1:8089``) or a bare host name with the
        port in the port field; the scheme is then the connection type when it is http/https,
        else extra ``scheme``, else http for localhost and https otherwise. Extras:
        ``sandbox_mode``, ``asm_group_id``, ``max_in_flight``, ``chunk_size``, ``chunks_in_flight``,
        ``connect_timeout``, ``read_timeout``, ``slow_after``. ``TEND_SENDGRID_SANDBOX`` in
        ``env`` wins over the connection's ``sandbox_mode``.
        """
        key = (getattr(conn, "password", None) or "").strip()
        if not key:
            raise ConfigError(
                f"the Airflow connection {CONNECTION_ID} has no password: put the SendGrid API "
                "key (SG....) in its password field")
        extra = dict(getattr(conn, "extra_dejson", None) or {})
        opts = _options(extra, prefix="", url_key="base_url")
        if "sandbox_mode" in extra:
            opts["sandbox"] = _flag(extra["sandbox_mode"], f"{CONNECTION_ID} extra sandbox_mode")
        host = (getattr(conn, "host", None) or "").strip()
        if host:
            if "://" in host:
                opts["base_url"] = host
            else:
                conn_type = (getattr(conn, "conn_type", None) or "").lower()
                scheme = str(extra.get("scheme") or (
                    conn_type if conn_type in ("http", "https") else
                    "http" if host in ("localhost", "127.0.0.1", "::1") else "https"))
                port = getattr(conn, "port", None)
                opts["base_url"] = f"{scheme}://{host}" + (f":{port}" if port else "")
        env = config.environment() if env is None else env
        if env.get("TEND_SENDGRID_SANDBOX"):
            opts["sandbox"] = _flag(env["TEND_SENDGRID_SANDBOX"], "TEND_SENDGRID_SANDBOX")
        return cls(api_key=key, **opts)


def _options(src: Mapping[str, Any], *, prefix: str, url_key: str) -> dict[str, Any]:
    def get(name: str) -> Any:
        key = prefix + (name.upper() if prefix else name)
        return src.get(key) if src.get(key) not in (None, "") else None

    out: dict[str, Any] = {}
    if get(url_key) is not None:
        out["base_url"] = str(get(url_key))
    if get("sandbox") is not None:
        out["sandbox"] = _flag(get("sandbox"), prefix + "SANDBOX" if prefix else "sandbox")
    if get("asm_group_id") is not None:
        out["asm_group_id"] = _number(get("asm_group_id"), "the ASM group id")
    for name, kind in (("max_in_flight", int), ("chunk_size", int), ("chunks_in_flight", int),
                       ("connect_timeout", float), ("read_timeout", float),
                       ("slow_after", float)):
        if get(name) is not None:
            out[name] = _number(get(name), f"SendGrid {name}", kind)
    return out


# -- the document SendGrid expects ------------------------------------------------------------

class _Refused(ValueError):
    """A message SendGrid would refuse; caught before any request, reported as FAILED."""


def _ascii_category(value: str) -> str:
    folded = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode()
    return folded.strip()[:255]


def mail_send_payload(message: OutgoingMessage, *, sandbox: bool = False,
                      asm_group_id: int | None = None) -> dict[str, Any]:
    """The v3 Mail Send body for one message, as SendGrid documents it.

    One personalization per message (every message is rendered for one customer); text/plain
    before text/html; at most 10 unique ASCII categories of at most 255 characters (accents are
    folded: "Noël" -> "Noel"); ``custom_args`` with string values (tend_message_id, program or
    campaign, kind, run_id); the RFC 8058 one-click unsubscribe headers; ``send_at`` as a unix
    timestamp (quiet hours); the ASM group for marketing mail; sandbox mode when asked.
    Raises _Refused for what SendGrid would refuse, so no request is wasted on it.
    """
    to: dict[str, str] = {"email": message.to_email}
    to_name = safe_display_name(message.to_name)  # SendGrid writes it into the To: header
    if to_name:
        to["name"] = to_name
    sender: dict[str, str] = {"email": message.from_email}
    from_name = safe_display_name(message.from_name)
    if from_name:
        sender["name"] = from_name
    doc: dict[str, Any] = {
        "personalizations": [{"to": [to]}],
        "from": sender,
        "subject": message.subject,
        "content": [],
    }
    if message.text:
        doc["content"].append({"type": "text/plain", "value": message.text})
    if message.html:
        doc["content"].append({"type": "text/html", "value": message.html})
    if not doc["content"]:
        raise _Refused("the message has neither a text nor an HTML part")
    if not message.subject or "\r" in message.subject or "\n" in message.subject:
        raise _Refused("the subject is empty or contains a line break")
    if message.reply_to:
        name, addr = parseaddr(message.reply_to)
        if not addr or "@" not in addr:
            raise _Refused(f"reply-to {message.reply_to!r} is not an email address")
        doc["reply_to"] = {"email": addr, **({"name": name} if name else {})}
    if message.headers:
        headers: dict[str, str] = {}
        for name, value in message.headers.items():
            if name.lower() in _RESERVED_HEADERS:
                raise _Refused(f"header {name} is reserved by SendGrid; set it through the "
                               "message's own fields")
            if not name.isascii() or " " in name or "\r" in value or "\n" in value:
                raise _Refused(f"header {name!r} has a non-ASCII name or a line break in its "
                               "value (header injection)")
            headers[name] = str(value)
        doc["headers"] = headers
    if message.categories:
        cats: list[str] = []
        for c in message.categories:
            folded = _ascii_category(str(c))
            if folded and folded not in cats:
                cats.append(folded)
        if cats:
            doc["categories"] = cats[:10]
    if message.custom_args:
        args = {str(k): str(v) for k, v in message.custom_args.items()}
        # JSON never takes more than 6 bytes per UTF-8 byte (\uXXXX): measure only if close.
        rough = sum(len(k) + len(v) + 6 for k, v in args.items())
        if rough > 1_600 and len(json.dumps(args).encode()) > 10_000:
            raise _Refused("custom_args exceed SendGrid's 10,000-byte limit")
        doc["custom_args"] = args
    if message.send_at is not None:
        if message.send_at.utcoffset() is None:
            raise _Refused("send_at has no timezone; quiet hours need an aware datetime")
        doc["send_at"] = int(message.send_at.timestamp())
    if asm_group_id is not None and message.custom_args.get("kind", "marketing") == "marketing":
        doc["asm"] = {"group_id": int(asm_group_id)}
    if sandbox:
        doc["mail_settings"] = {"sandbox_mode": {"enable": True}}
    return doc


def error_text(status: int, body: str) -> str:
    """SendGrid's ``{"errors": [{"field", "message"}]}`` as one readable line."""
    try:
        errors = json.loads(body).get("errors") or []
        parts = [f"{e['field']}: {e['message']}" if e.get("field") else str(e.get("message"))
                 for e in errors if isinstance(e, dict)]
    except (ValueError, AttributeError, TypeError):
        parts = []
    detail = "; ".join(parts) or (body.strip()[:300] or "no error text")
    return f"SendGrid {status}: {detail}"[:1000]


def verify_event_webhook(public_key: str, payload: bytes | str, signature: str,
                         timestamp: str) -> bool:
    """Is this Event Webhook POST really from SendGrid? (one-off; the endpoint keeps a
    :func:`event_webhook_verifier`)

    ``public_key`` is the verification key shown under Mail Settings > Signed Event Webhook;
    ``signature`` and ``timestamp`` are the ``X-Twilio-Email-Event-Webhook-Signature`` and
    ``-Timestamp`` headers; ``payload`` is the raw body, exactly as received. The ``sendgrid``
    package does the ECDSA check; a malformed key or signature is simply not valid.
    """
    try:
        verify = event_webhook_verifier(public_key)
    except ConfigError:
        return False
    return verify(payload, signature, timestamp)


def event_webhook_verifier(public_key: str) -> Callable[[bytes | str, str, str], bool]:
    """``verify(payload, signature, timestamp)`` for one verification key, parsed once (the
    webhook checks every request with it); ConfigError when the key is not an EC public key."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from sendgrid.helpers.eventwebhook import EventWebhook

    try:
        checker = EventWebhook(public_key)
        if not isinstance(checker.public_key, ec.EllipticCurvePublicKey):
            raise TypeError("not an elliptic-curve key")
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            "the SendGrid webhook verification key is not an EC public key: copy it from "
            "SendGrid's Mail Settings > Signed Event Webhook into TEND_SENDGRID_WEBHOOK_KEY (or "
            f"the {CONNECTION_ID} connection's extra webhook_public_key)") from exc

    def verify(payload: bytes | str, signature: str, timestamp: str) -> bool:
        try:
            body = payload.decode("utf-8") if isinstance(payload, bytes) else payload
            return bool(checker.verify_signature(body, signature, timestamp))
        except (ValueError, TypeError):  # not UTF-8, not base64, not a DER signature
            return False

    return verify


# -- the backend ------------------------------------------------------------------------------

_NOT_SENT = None  # a message that never left because the backend stopped
_REPORT_EVERY = 0.005  # seconds: outcomes reported to the engine together (see _report)
# The account-limit breaker (module docstring): among the answers of the last _LIMIT_WINDOW
# seconds, at least _LIMIT_MIN_429 429s making at least half of them mean the account, not one
# request, is limited. Short enough to react within a few round trips at 64 in flight; the
# minimum keeps a lone 429 on a quiet backend (one answer in the window) from pausing it all.
_LIMIT_WINDOW = 0.2
_LIMIT_MIN_429 = 5


def _new_loop() -> asyncio.AbstractEventLoop:
    if config.sendgrid_uvloop():
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop ships with Airflow's requirements
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class SendGridBackend:
    """Deliver chunks through SendGrid's v3 Mail Send API; see the module docstring."""

    name = "sendgrid"

    def __init__(self, settings: SendGridSettings, *, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.chunk_size = settings.chunk_size
        self.chunks_in_flight = settings.chunks_in_flight
        self.stats: Counter[str] = Counter()
        """requests, retries and waits so far (for progress lines and the benchmark)."""
        self._rng = rng or random.Random()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._session: aiohttp.ClientSession | None = None
        self._resume_at = 0.0  # loop time before which no request may leave (account limit)
        self._recent: deque[tuple[float, bool]] = deque()  # (loop time, was 429) of answers
        self._recent_429 = 0
        self._gate: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self._outbox: dict[Callable[[Sequence[Outcome]], None], list[Outcome]] = {}
        self._halt: AuthRejected | DeliveryStopped | None = None
        self._url = settings.url
        self._headers = {
            "Authorization": f"Bearer {settings.api_key}",
            "Content-Type": "application/json",
            "User-Agent": "tend-sendgrid/1 (aiohttp)",
        }
        if settings.sandbox:
            log.warning("SendGrid sandbox mode: SendGrid validates every message and delivers "
                        "none; the send engine puts every message back to 'claimed' (none is "
                        "recorded as sent)")

    def __repr__(self) -> str:
        s = self.settings
        return (f"SendGridBackend(url={s.url!r}, max_in_flight={s.max_in_flight}, "
                f"chunk_size={s.chunk_size}, chunks_in_flight={s.chunks_in_flight}, "
                f"sandbox={s.sandbox})")

    # -- the sync face -------------------------------------------------------------------

    def send(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        """Send one chunk concurrently; one result per message, in order.

        Thread-safe: chunks may be sent at once from different threads; they share the
        connections, the slots, the account-limit pause and the stop. The send engine uses
        :meth:`submit` instead, which reports each message as it finishes.

        Raises AuthRejected / DeliveryStopped (with the results that completed) when the run
        must stop; messages without a result there never reached SendGrid.
        """
        if not messages:
            return []
        if self._halt is not None:  # stopped earlier: nothing more leaves
            raise type(self._halt)(str(self._halt), [])
        loop = self._ensure_loop()
        future = asyncio.run_coroutine_threadsafe(self._send_chunk(list(messages)), loop)
        return future.result()

    def close(self) -> None:
        """Close the keep-alive connections and stop the loop thread (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        if loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._aclose(), loop).result(timeout=10)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(timeout=10)
        if not loop.is_running():
            loop.close()

    def __enter__(self) -> SendGridBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._loop_lock:  # two chunks may arrive at once from two threads
            return self._start_loop()

    def _start_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is not None:
            return self._loop
        loop = _new_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        thread = threading.Thread(target=run, name="tend-sendgrid", daemon=True)
        thread.start()
        ready.wait()
        self._loop, self._thread = loop, thread
        return loop

    async def _aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            s = self.settings
            # No connection limit of its own: the slots bound the requests on the wire, and the
            # engine's window bounds the slow ones that gave their slot back.
            connector = aiohttp.TCPConnector(
                limit=0, limit_per_host=0, keepalive_timeout=15,
                ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, connect=None,
                                              sock_connect=s.connect_timeout,
                                              sock_read=s.read_timeout),
                headers=self._headers,
                skip_auto_headers=("Accept-Encoding",),
                cookie_jar=aiohttp.DummyCookieJar(),  # an API: no cookies to keep per request
                auto_decompress=False,
            )
        return self._session

    # -- the async core ------------------------------------------------------------------

    def submit(self, messages: Sequence[OutgoingMessage],
               done: Callable[[Sequence[Outcome]], None]) -> None:
        """The engine's sliding window (see :mod:`tend.delivery.base`): every message becomes
        its own request at once; ``done([outcome])`` is called, on the backend's loop thread,
        as each one finishes. A message that never left because the backend stopped is
        reported :class:`~tend.delivery.base.NotSent`."""
        if not messages:
            return
        loop = self._ensure_loop()
        loop.call_soon_threadsafe(self._start, list(messages), done)

    def _start(self, messages: list[OutgoingMessage],
               done: Callable[[Sequence[Outcome]], None]) -> None:
        session = self._get_session()
        for m in messages:
            task = asyncio.ensure_future(self._report(session, m, done))
            self._tasks.add(task)  # a task nobody references may be collected mid-flight
            task.add_done_callback(self._tasks.discard)

    async def _report(self, session: aiohttp.ClientSession, m: OutgoingMessage,
                      done: Callable[[Sequence[Outcome]], None]) -> None:
        try:
            r = await self._send_one(session, m)
        except Exception as exc:  # a bug must not leave the engine waiting for this message
            log.exception("SendGrid request for message %s failed unexpectedly", m.message_id)
            r = DeliveryResult(m.message_id, DeliveryStatus.UNKNOWN,
                               error=f"{type(exc).__name__} in the SendGrid backend ({exc}); "
                                     "not resent (at-most-once)")
        if r is _NOT_SENT:
            halt = self._halt
            assert halt is not None
            r = NotSent(m.message_id, halt)
        # Outcomes finishing close together go to the engine in one call: one wake-up of its
        # thread per few milliseconds rather than per request (they share one interpreter).
        batch = self._outbox.get(done)
        if batch is None:
            batch = self._outbox[done] = []
            asyncio.get_running_loop().call_later(_REPORT_EVERY, self._report_batch, done)
        batch.append(r)

    def _report_batch(self, done: Callable[[Sequence[Outcome]], None]) -> None:
        done(self._outbox.pop(done))

    async def _send_chunk(self, messages: list[OutgoingMessage]) -> list[DeliveryResult]:
        session = self._get_session()
        results = await asyncio.gather(*(self._send_one(session, m) for m in messages))
        if any(r is _NOT_SENT for r in results):  # only ever after the backend halted
            halt = self._halt
            assert halt is not None
            raise type(halt)(str(halt), [r for r in results if r is not _NOT_SENT])
        return results  # type: ignore[return-value]

    def _stop(self, exc: AuthRejected | DeliveryStopped) -> None:
        """Halt the backend: no request of any chunk leaves after this (a 401 wins)."""
        if self._halt is None or (isinstance(exc, AuthRejected)
                                  and not isinstance(self._halt, AuthRejected)):
            self._halt = exc

    def _backoff(self, attempt: int) -> float:
        cap = min(self.settings.backoff_max, self.settings.backoff_base * 2 ** (attempt - 1))
        return max(0.01, self._rng.uniform(cap / 2, cap))  # "equal jitter"

    def _account_limited(self, now: float, was_429: bool) -> bool:
        """Record one answer; true when the recent answers say the account is limited (at
        least ``_LIMIT_MIN_429`` 429s, half or more of the last ``_LIMIT_WINDOW`` seconds')."""
        recent = self._recent
        recent.append((now, was_429))
        self._recent_429 += was_429
        horizon = now - _LIMIT_WINDOW
        while recent[0][0] < horizon:
            self._recent_429 -= recent.popleft()[1]
        return self._recent_429 >= _LIMIT_MIN_429 and 2 * self._recent_429 >= len(recent)

    async def _not_before(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait out an account limit: the one "not before" time every request of the backend
        respects once most recent answers are 429 (see :meth:`_account_limited`)."""
        while (pause := self._resume_at - loop.time()) > 0:
            await asyncio.sleep(pause)

    async def _slot(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """One of ``max_in_flight`` slots, free of any account-limit pause; returns its
        release (safe to call twice). A request still unanswered after ``slow_after`` seconds
        gives its slot back, so a slow reply never holds up the others; it still waits for its
        answer (up to the read timeout) and still counts in the engine's window."""
        if self._gate is None:
            self._gate = asyncio.Semaphore(self.settings.max_in_flight)
        gate = self._gate
        while True:
            await self._not_before(loop)
            await gate.acquire()
            if self._resume_at <= loop.time():
                break
            gate.release()  # the account got limited while this request queued for a slot
        held = [True]

        def release() -> None:
            if held[0]:
                held[0] = False
                gate.release()

        timer = loop.call_later(self.settings.slow_after, release)

        def done() -> None:
            timer.cancel()
            release()

        return done

    async def _send_one(self, session: aiohttp.ClientSession,
                        m: OutgoingMessage) -> DeliveryResult | None:
        s = self.settings
        try:
            body = _encode(mail_send_payload(m, sandbox=s.sandbox,
                                             asm_group_id=s.asm_group_id))
        except _Refused as exc:
            return DeliveryResult(m.message_id, DeliveryStatus.FAILED,
                                  error=f"not sent to SendGrid: {exc}")
        loop = asyncio.get_running_loop()
        attempts = 0
        waited = 0.0
        while True:
            if self._halt is not None:
                return _NOT_SENT
            release = await self._slot(loop)
            if self._halt is not None:
                release()
                return _NOT_SENT
            attempts += 1
            self.stats["requests"] += 1
            try:
                async with session.post(self._url, data=body) as resp:
                    status = resp.status
                    headers = resp.headers
                    try:
                        text = (await resp.read()).decode("utf-8", "replace")
                    except (TimeoutError, aiohttp.ClientError):
                        text = ""
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                release()  # the backoff below waits without a slot
                # Never connected: the request cannot have reached SendGrid.
                why = f"could not connect to {s.base_url} ({type(exc).__name__}: {exc})"
                if await self._retry_later(attempts, why):
                    continue
                return _NOT_SENT
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                release()
                self.stats["unknown"] += 1
                detail = str(exc) or "no answer"
                return DeliveryResult(
                    m.message_id, DeliveryStatus.UNKNOWN,
                    error=f"{type(exc).__name__} after the request was sent ({detail}); "
                          "SendGrid may have accepted it: not resent (at-most-once)")
            release()
            limited = self._account_limited(loop.time(), status == 429)

            if status in (200, 202):
                provider_id = headers.get("X-Message-Id") or ("sandbox" if status == 200
                                                             else None)
                return DeliveryResult(m.message_id, DeliveryStatus.SENT,
                                      provider_id=provider_id)
            if status == 429:
                self.stats["rate_limited"] += 1
                wait = self._rate_limit_wait(headers, attempts)
                waited += wait
                if waited > s.max_rate_limit_wait:
                    self._stop(DeliveryStopped(
                        f"SendGrid kept answering 429 Too Many Requests for {waited:.0f}s; "
                        "stopping: unsent messages stay claimed for the next attempt (check "
                        "the account's rate limits)"))
                    return _NOT_SENT
                attempts -= 1  # a 429 is not a failed attempt: it says when to come back
                if limited:  # the account, not this request: everyone waits for the reset
                    resume = loop.time() + wait
                    if resume > self._resume_at + 0.05:
                        self.stats["account_limited"] += 1
                        log.warning("SendGrid account rate limit (most recent answers are "
                                    "429): pausing all requests for %.1fs", wait)
                    self._resume_at = max(self._resume_at, resume)
                else:  # only this request waits, without a slot; the others go on
                    await asyncio.sleep(wait)
                continue
            if status == 503:
                if await self._retry_later(attempts, error_text(status, text)):
                    continue
                return _NOT_SENT
            if status in (401, 403):
                self._stop(AuthRejected(
                        f"SendGrid refused the API key ({error_text(status, text)}); check "
                        f"the {CONNECTION_ID} connection (password = an API key with the "
                        "Mail Send permission). Unsent messages stay claimed for the next "
                        "run"))
                return _NOT_SENT
            if status in (404, 405):
                self._stop(DeliveryStopped(
                        f"SendGrid answered {status} for POST {s.url}: the API URL is wrong; "
                        f"check the host of the {CONNECTION_ID} connection (empty for "
                        f"{DEFAULT_BASE_URL}). Unsent messages stay claimed"))
                return _NOT_SENT
            if 400 <= status < 500:
                return DeliveryResult(m.message_id, DeliveryStatus.FAILED,
                                      error=error_text(status, text))
            self.stats["unknown"] += 1
            return DeliveryResult(
                m.message_id, DeliveryStatus.UNKNOWN,
                error=f"{error_text(status, text)}; the request reached SendGrid, which "
                      "may have queued it: not resent (at-most-once)")

    async def _retry_later(self, attempts: int, why: str) -> bool:
        """Back off before another try of a request that certainly did not reach SendGrid."""
        if attempts >= self.settings.max_attempts:
            self._stop(DeliveryStopped(
                f"SendGrid is unavailable after {attempts} attempts ({why}); unsent messages "
                "stay claimed and the task's retry will send them"))
            return False
        self.stats["retries"] += 1
        delay = self._backoff(attempts)
        log.info("SendGrid not reached (%s); retrying in %.2fs", why, delay)
        await asyncio.sleep(delay)
        return self._halt is None

    def _rate_limit_wait(self, headers: Mapping[str, str], attempt: int) -> float:
        """Seconds until SendGrid takes requests again: Retry-After, else X-RateLimit-Reset."""
        wait: float | None = None
        retry_after = headers.get("Retry-After")
        if retry_after:
            try:
                wait = float(retry_after)
            except ValueError:
                wait = None
        if wait is None and headers.get("X-RateLimit-Reset"):
            try:
                wait = float(headers["X-RateLimit-Reset"]) - time.time()
            except ValueError:
                wait = None
        if wait is None or wait <= 0:  # no usable header, or our clock is ahead of SendGrid's
            wait = self._backoff(max(attempt, 1))
        return min(wait, 120.0) * self._rng.uniform(1.0, 1.1)
