"""The ``tend serve`` application: one Starlette app, a :class:`Service` shared by its routes.

Every route writes through :meth:`Service.record`: an action name and a JSON-able payload,
applied by that action's handler in one store transaction, or, when the store cannot be
reached, appended to the durable spool and applied later (the caller still gets its 2xx).
Handlers are idempotent, so a spooled record replayed twice changes nothing the second time.

The guards here face the internet: request bodies are bounded before they are read, and an
unexpected error answers a plain 500 page, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tend import config
from tend.config import ShopSettings
from tend.listen.spool import Spool
from tend.logs import mask_email
from tend.store import db

__all__ = ["MAX_BODY_BYTES", "SECURITY_HEADERS", "Handler", "MaskEmails", "SecurityHeaders",
           "Service", "create_app", "plain_response"]

log = logging.getLogger("tend.listen")

#: Largest request body any endpoint reads. SendGrid posts at most ~1,000 events (well under
#: 1 MiB) per request; a form is a few hundred bytes. Larger bodies get 413 unread.
MAX_BODY_BYTES = 2 * 1024 * 1024
#: How often a spool left by a store outage is retried.
REPLAY_SECONDS = 5.0

#: ``handler(conn, payload, now)``: apply one recorded action in the caller's transaction.
Handler = Callable[[Connection, Mapping[str, Any], dt.datetime], None]


@dataclass
class Service:
    """What the routes share: the store, the shop's identity, the signing secret, the spool."""

    engine: Engine
    settings: ShopSettings
    secret: str
    spool: Spool
    handlers: dict[str, Handler] = field(default_factory=dict)

    def record(self, action: str, payload: Mapping[str, Any]) -> bool:
        """Apply ``action`` now (True), or spool it durably when the store cannot take it yet
        (False): the same rule (``_retry_later``) as the replay's, so what the replay would wait
        for is never a 500 that loses a customer's click."""
        now = dt.datetime.now(dt.UTC)
        handler = self.handlers[action]
        try:
            with self.engine.begin() as conn:
                handler(conn, payload, now)
            return True
        except Exception as exc:
            if not _retry_later(exc):
                raise
            self.spool.append({"action": action, "payload": dict(payload),
                               "at": now.isoformat()})
            log.warning("store cannot take it yet (%s): %s spooled, applied when it can",
                        type(getattr(exc, "orig", None) or exc).__name__, action)
            return False

    def replay(self) -> int:
        """Apply what the spool holds; 0 and no error while the store is still down. A record
        that fails for another reason is quarantined (see :mod:`tend.listen.spool`)."""
        def apply(record: dict[str, Any]) -> None:
            handler = self.handlers.get(str(record.get("action")))
            if handler is None:  # written by a newer version: quarantined, for that version
                raise LookupError(f"no handler for spooled action {record.get('action')!r}")
            at = dt.datetime.fromisoformat(str(record["at"]))
            with self.engine.begin() as conn:
                handler(conn, record.get("payload") or {}, at)

        try:
            applied = self.spool.replay(apply, outage=_retry_later)
        except Exception as exc:
            if not _retry_later(exc):
                raise
            log.debug("spool not replayed yet: %s", type(exc).__name__)
            return 0
        if applied:
            log.info("applied %d spooled record(s)", applied)
        return applied

    @staticmethod
    def can_wait(exc: Exception) -> bool:
        """Whether the store failed in a way it recovers from by itself (``_retry_later``):
        what the routes then spool or show without the store's figures, instead of a 500."""
        return _retry_later(exc)

    def store_ok(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except (OperationalError, DBAPIError):
            return False


def _store_unreachable(exc: DBAPIError) -> bool:
    """A lost or refused connection (spool it), not a bug in a statement (raise it)."""
    if exc.connection_invalidated or isinstance(exc, OperationalError):
        return True
    return "connect" in str(exc.orig).lower()


#: PostgreSQL's "undefined table" and "undefined column": a store not migrated yet, or in the
#: middle of an upgrade (SQLite says so with an OperationalError, an outage already).
_SCHEMA_NOT_READY = frozenset({"42P01", "42703"})


def _retry_later(exc: Exception) -> bool:
    """Whether a spooled record that failed with ``exc`` will apply once the store is back
    (an outage, every pooled connection busy, a store whose migration has not run yet), rather
    than fail again on every try."""
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    return _store_unreachable(exc) or getattr(exc.orig, "sqlstate", None) in _SCHEMA_NOT_READY


class BodyLimit:
    """ASGI middleware: refuse bodies over ``limit`` bytes with 413, before a route reads them
    (by ``Content-Length``) or as soon as a streamed body passes the limit."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _plain(413 if declared.isdigit() else 400)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _plain(413)(scope, receive, send)


class _TooLarge(Exception):
    pass


_REASONS = {400: "Bad request", 403: "Forbidden", 404: "Not found",
            405: "Method not allowed", 413: "Request too large", 415: "Unsupported media type",
            500: "Something went wrong on our side; please try again later"}


def _plain(status: int) -> Response:
    return PlainTextResponse(_REASONS.get(status, "Error") + "\n", status_code=status)


def plain_response(status: int) -> Response:
    """The plain page of a 4xx/5xx: the status's words only, nothing about the request."""
    return _plain(status)


#: On every response: the pages load nothing but their own stylesheet, run no script, cannot
#: be framed, leak no link (their URLs carry tokens) and are never cached (they show a
#: customer's choices).
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", b"default-src 'none'; style-src 'self'; img-src 'self'; "
                                 b"form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
)


class SecurityHeaders:
    """ASGI middleware: :data:`SECURITY_HEADERS` on every response (replacing a route's own)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.names = {name for name, _ in SECURITY_HEADERS}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower()
                        not in self.names]
                message = {**message, "headers": kept + list(SECURITY_HEADERS)}
            await send(message)

        await self.app(scope, receive, with_headers)


_EMAIL_IN_TEXT = re.compile(r"[^\s@<>\"',;:()\[\]]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


class MaskEmails(logging.Filter):
    """A log filter that masks every email address in a record (``tend.logs.mask_email``):
    what a customer typed, a URL or an error message must not put an address in the logs,
    nor may a traceback (a database error's text carries the statement's parameters)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "@" in text:
            record.msg = _mask(text)
            record.args = None
        if record.exc_info and not record.exc_text:
            # A handler's formatter formats the exception only when exc_text is unset; set
            # it here, masked, and every handler prints this text instead.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and "@" in record.exc_text:
            record.exc_text = _mask(record.exc_text)
        if record.stack_info and "@" in record.stack_info:
            record.stack_info = _mask(record.stack_info)
        return True


def _mask(text: str) -> str:
    return _EMAIL_IN_TEXT.sub(lambda m: mask_email(m.group(0)), text)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    return _plain(status)


async def _server_error(request: Request, exc: Exception) -> Response:
    """The 500 page. Starlette answers it from its outermost middleware, outside
    :class:`SecurityHeaders`, so the headers are set here. The log names the route's
    template, never the path: a path carries the customer's token."""
    route = request.scope.get("route")
    log.exception("unhandled error on %s %s", request.method,
                  getattr(route, "path", "(no route)"))
    response = _plain(500)
    response.raw_headers.extend(SECURITY_HEADERS)
    return response


def create_app(
    store_url: str | None = None,
    *,
    settings: ShopSettings | None = None,
    secret: str | None = None,
    spool_dir: Path | None = None,
    replay_seconds: float = REPLAY_SECONDS,
) -> Starlette:
    """The public application for the store at ``store_url`` (default: ``TEND_STORE_URL``)."""
    from tend.listen import events, pages

    url = config.store_url(store_url)
    service = Service(
        engine=db.connect(url),
        settings=settings or ShopSettings.from_env(),
        secret=secret or config.unsubscribe_secret(),
        spool=Spool(spool_dir or config.spool_dir()),
    )
    routes: list[BaseRoute] = [Route("/healthz", _health(service), methods=["GET", "HEAD"])]
    for module in (pages, events):
        service.handlers.update(module.HANDLERS)
        routes.extend(module.routes(service))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async def keep_replaying() -> None:
            # Never ends before shutdown: a spooled unsubscribe waits on this loop alone.
            while True:
                try:
                    await asyncio.to_thread(service.replay)
                except Exception:
                    log.exception("replaying the spool failed; retrying in %g s (records "
                                  "stay in %s)", replay_seconds, service.spool.directory)
                await asyncio.sleep(replay_seconds)

        task = asyncio.create_task(keep_replaying())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            service.engine.dispose()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: _http_error, 405: _http_error, 400: _http_error,
                            413: _http_error, Exception: _server_error},
    )
    app.state.service = service
    app.add_middleware(BodyLimit)
    app.add_middleware(SecurityHeaders)
    for name in ("tend.listen", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, MaskEmails) for f in logger.filters):
            logger.addFilter(MaskEmails())
    return app


def _health(service: Service) -> Callable[[Request], Any]:
    async def health(request: Request) -> Response:
        """For load balancers: 200 while the service can take requests (it spools when the
        store is down, so a store outage is reported, not failed). ``quarantined``: spooled
        records that could not be applied and wait for an operator (docs/listen.md)."""
        store = await asyncio.to_thread(service.store_ok)
        return JSONResponse({"status": "ok", "store": "ok" if store else "unreachable",
                             "spooled": service.spool.pending(),
                             "quarantined": service.spool.failed()},
                            headers={"Cache-Control": "no-store"})

    return health
