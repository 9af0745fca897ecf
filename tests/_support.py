"""Helpers shared by test modules (import as ``from _support import ...``).

Kept out of conftest.py on purpose: several conftest modules exist in this tree, so
``from conftest import ...`` would import whichever pytest loaded first.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from tend.config import ShopSettings
from tend.delivery import OutgoingMessage

#: The project checkout, and the email templates in it.
PROJECT = Path(__file__).resolve().parents[1]
TEMPLATES = PROJECT / "templates" / "email"

PG_URL = os.environ.get("TEST_DATABASE_URL")

#: The ``demo_shops`` fixture (tests/conftest.py): ``demo_shops(customers=, seed=, as_of=)`` is
#: the URL of that demo shop, built once per session and shared read-only.
DemoShops = Callable[..., str]


def require_postgres() -> str:
    """The PostgreSQL test URL; skip without it locally, fail without it in CI."""
    if PG_URL:
        return PG_URL
    message = "TEST_DATABASE_URL is not set (e.g. postgresql://postgres@127.0.0.1:5432/test)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"PostgreSQL tests must run in CI: {message}")
    pytest.skip(message)


@contextmanager
def private_pg_schema() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh, private schema, dropped on exit."""
    base = require_postgres()
    schema = f"tend_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        from tend.store.db import connect

        # Close the pooled connections the test opened before dropping their schema.
        connect(url.render_as_string(hide_password=False)).dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@contextmanager
def sqlite_session(path: str | Path) -> Iterator[sqlite3.Connection]:
    """A sqlite3 connection committed at the end of the block and closed there — not when the
    garbage collector gets to it: closed later, while the code under test reads the same
    WAL database through ADBC's own copy of SQLite, it would take itself for the last
    connection and checkpoint and truncate the files under the other copy."""
    con = sqlite3.connect(path)
    try:
        with con:
            yield con
    finally:
        con.close()


def copy_sqlite(src_url: str, dst: Path) -> str:
    """A private copy of a SQLite database (WAL included), so a test may change it freely."""
    with sqlite_session(src_url.removeprefix("sqlite:///")) as src, \
            sqlite_session(dst) as copy:
        src.backup(copy)
    return f"sqlite:///{dst}"


def free_port() -> int:
    """A local TCP port nothing listens on (for a server to start on, or to find closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mark_claimed_sent(store_url: str, day: dt.date) -> None:
    """Skip rendering and delivery: walk every claimed message of the night to 'sent'."""
    from tend.store import ledger
    from tend.store.db import connect
    from tend.store.tables import contact_ledger

    with connect(store_url).begin() as conn:
        ids = list(conn.execute(select(contact_ledger.c.message_id).where(
            contact_ledger.c.as_of == day, contact_ledger.c.status == "claimed")).scalars())
        if ids:
            ledger.mark_sending(conn, ids)
            ledger.record_results(conn, [{"message_id": i, "status": "sent"} for i in ids])


def shop_settings(**overrides: object) -> ShopSettings:
    """A Montréal shop with a public https base URL and a storefront; any field by name."""
    shop = ShopSettings(
        name="Maison Verte",
        postal_address="1234, rue Saint-Denis\nMontréal (Québec)  H2X 3K8\nCanada",
        from_email="bonjour@maisonverte.example",
        from_name="Maison Verte",
        reply_to=None,
        base_url="https://tend.maisonverte.example/tend",
        default_locale="en",
        currency="CAD",
        website_url="https://maisonverte.example",
    )
    return replace(shop, **overrides)  # type: ignore[arg-type]


#: The one-click unsubscribe link of :func:`make_message`.
UNSUBSCRIBE = "<http://localhost:8090/unsubscribe/Y3VzXzE.abc>"


def make_message(message_id: str = "msg-0001", **overrides: object) -> OutgoingMessage:
    """A rendered French win-back email, as the send engine hands it to a backend.

    Every field can be overridden by name; ``custom_args`` carries ``message_id`` unless it is
    overridden too.
    """
    message = OutgoingMessage(
        message_id=message_id,
        to_email="marie.tremblay@example.com",
        to_name="Marie Tremblay",
        from_email="bonjour@velo.example",
        from_name="Vélo & Café Lemieux",
        reply_to="service@velo.example",
        subject="Marie, un rabais de 10,00\xa0$ vous attend",
        text="Bonjour Marie,\n\nVotre code : REVIENS-7Q2F\n",
        html="<p>Bonjour Marie,</p><p>Votre code&nbsp;: <b>REVIENS-7Q2F</b></p>",
        headers={
            "List-Unsubscribe": UNSUBSCRIBE,
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
        categories=("winback", "marketing"),
        custom_args={"tend_message_id": message_id, "program": "winback", "kind": "marketing",
                     "run_id": "scheduled__2026-11-20"},
    )
    return replace(message, **overrides)  # type: ignore[arg-type]


def numbered_message(i: int, **overrides: object) -> OutgoingMessage:
    """The ``i``-th message of a batch: id ``m0000``..., to ``customer{i}@example.com``, from
    ``shop.example``; otherwise :func:`make_message`."""
    return make_message(f"m{i:04d}", **{
        "to_email": f"customer{i}@example.com", "to_name": f"Customer {i}",
        "from_email": "hello@shop.example", **overrides})


@dataclass
class RunningService:
    """A real ``tend serve`` (uvicorn over HTTP on a free port) started by a test."""

    url: str
    app: Any
    spool_dir: Path

    @property
    def service(self) -> Any:
        return self.app.state.service


@contextmanager
def running_service(store_url: str, tmp_path: Path, *, settings: Any = None,
                    secret: str = "test-secret", replay_seconds: float = 0.2,
                    **kwargs: Any) -> Iterator[RunningService]:
    """Migrate ``store_url`` and serve ``tend.listen.app.create_app`` on uvicorn in a thread
    until the block exits (``settings``: a ShopSettings, default the embedded one)."""
    import threading
    import time

    import uvicorn

    from tend.listen.app import create_app
    from tend.store import db

    db.migrate(store_url)
    spool_dir = tmp_path / "spool"
    app = create_app(store_url, settings=settings, secret=secret, spool_dir=spool_dir,
                     replay_seconds=replay_seconds, **kwargs)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on", access_log=False))
    thread = threading.Thread(target=server.run, name="tend-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("tend serve did not start")
        time.sleep(0.02)
    try:
        yield RunningService(f"http://127.0.0.1:{port}", app, spool_dir)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# -- a recording SMTP server (delivery kill tests) ---------------------------------------------

class SmtpInbox:
    """An aiosmtpd handler that accepts every message and records its ``X-Tend-Message-Id``.

    Each DATA is answered after ``latency`` seconds and recorded even if the client is gone by
    then, as a real relay queues a message before its reply reaches the sender: a sender
    killed in that window leaves a message delivered but unconfirmed.
    """

    def __init__(self, latency: float = 0.0) -> None:
        import threading

        self.latency = latency
        self._ids: list[str] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        import asyncio
        from email import message_from_bytes

        if self.latency:
            await asyncio.sleep(self.latency)
        mid = message_from_bytes(envelope.content).get("X-Tend-Message-Id", "")
        with self._lock:
            self._ids.append(str(mid))
        return f"250 2.0.0 Ok: queued as Q{mid}"

    def counts(self) -> dict[str, int]:
        """Messages accepted per Tend message id (above 1: a duplicate)."""
        from collections import Counter

        with self._lock:
            return dict(Counter(self._ids))


@contextmanager
def smtp_server(handler: Any, **options: Any) -> Iterator[int]:
    """A real SMTP server (aiosmtpd) on a free local port with this handler: its port."""
    from aiosmtpd.controller import Controller

    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), **options)
    controller.start()
    try:
        yield controller.port
    finally:
        controller.stop()


@contextmanager
def smtp_inbox(latency: float = 0.0) -> Iterator[tuple[SmtpInbox, int]]:
    """A running :class:`SmtpInbox`: (handler, port)."""
    handler = SmtpInbox(latency)
    with smtp_server(handler) as port:
        yield handler, port


def exited_pid() -> int:
    """The pid of a process of this host that has exited (a worker that is gone)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
