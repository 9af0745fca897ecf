"""Helpers shared by test modules (import as ``from _support import ...``).

Kept out of conftest.py on purpose: several conftest modules exist in this tree, so
``from conftest import ...`` would import whichever pytest loaded first.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from tend.config import ShopSettings
from tend.delivery import OutgoingMessage
from tend.delivery.sendgrid import SendGridSettings

#: The project checkout, and the email templates in it.
PROJECT = Path(__file__).resolve().parents[1]
TEMPLATES = PROJECT / "templates" / "email"

#: The PostgreSQL server and database the tests may use (each test works in a schema or a
#: database of its own there; under pytest-xdist, inside a database of its worker's own: see
#: :func:`require_postgres`).
PG_URL = os.environ.get("TEST_DATABASE_URL")

#: Under pytest-xdist, this process's worker id ("gw0", "gw1", ...); None in a plain run.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")

#: The ``demo_shops`` fixture (tests/conftest.py): ``demo_shops(customers=, seed=, as_of=)`` is
#: the URL of that demo shop, built once per run (all xdist workers) and shared read-only.
DemoShops = Callable[..., str]


def require_postgres() -> str:
    """The PostgreSQL test URL; skip without it locally, fail without it in CI.

    Under pytest-xdist each worker gets a database of its own on that server (created on
    first use, dropped when the worker ends), so the workers' schemas, locks and leftovers
    never meet; a plain run uses TEST_DATABASE_URL's database itself."""
    if PG_URL:
        return _worker_pg_database(PG_URL) if XDIST_WORKER else PG_URL
    message = "TEST_DATABASE_URL is not set (e.g. postgresql://postgres@127.0.0.1:5432/test)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"PostgreSQL tests must run in CI: {message}")
    pytest.skip(message)


#: The database :func:`require_postgres` made for this worker (at most one).
_WORKER_PG: list[str] = []


def _worker_pg_database(base_url: str) -> str:
    if _WORKER_PG:
        return _WORKER_PG[0]
    base = make_url(base_url)
    # The run's id too: two runs of the suite (two checkouts) may share the server.
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", uuid.uuid4().hex)[:8]
    name = f"{base.database or 'postgres'}_{XDIST_WORKER}_{run}"
    pg_admin(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
             f'CREATE DATABASE "{name}"')
    _WORKER_PG.append(base.set(database=name).render_as_string(hide_password=False))
    return _WORKER_PG[0]


def drop_worker_pg_database() -> None:
    """Drop this worker's database, if it made one (tests/conftest.py, at the session's end)."""
    if not (_WORKER_PG and PG_URL):
        return
    name = make_url(_WORKER_PG.pop()).database
    pg_admin(PG_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_admin(url: str, *statements: str) -> None:
    """Run statements that cannot run in a transaction (CREATE/DROP DATABASE) on ``url``'s
    server, one after the other."""
    admin = create_engine(make_url(url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        admin.dispose()


#: A directory every worker of this test run shares (the run's base temporary directory; set by
#: tests/conftest.py before the first test). See :func:`made_once`.
RUN_DIR: list[Path] = []


def made_once(name: str, make: Callable[[Path], None]) -> Path:
    """``<run dir>/name``, filled by ``make(folder)`` once per test run and then shared by its
    workers: the first to ask makes it while the others wait on a lock, then all reuse it.

    A worker that died while making it leaves no ``.complete`` marker, so the next one to ask
    clears the folder and makes it again rather than reuse half of it."""
    import fcntl
    import shutil

    if not RUN_DIR:
        raise RuntimeError("made_once needs the run directory tests/conftest.py sets; "
                           "call it from a test or a fixture")
    folder = RUN_DIR[0] / "shared" / name
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if not (folder / ".complete").exists():
            for leftover in folder.iterdir():
                if leftover.name != ".lock":
                    shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
            make(folder)
            (folder / ".complete").touch()
    return folder


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


def shop_with_second_address(shop_url: str, path: Path, customer_id: str, email: str) -> str:
    """A copy of SQLite shop ``shop_url`` at ``path`` whose customers view repeats
    ``customer_id`` with another address (as a view joining an address table does)."""
    url = copy_sqlite(shop_url, path)
    with sqlite_session(path) as con:
        con.executescript(f"""
            ALTER TABLE customers RENAME TO customer_rows;
            CREATE VIEW customers AS SELECT * FROM customer_rows
              UNION ALL SELECT customer_id, '{email}', first_name, last_name, locale,
                               timezone, marketing_consent, consent_at, created_at,
                               unsubscribed_at
                        FROM customer_rows WHERE customer_id = '{customer_id}';""")
    return url


def copy_sqlite(src_url: str, dst: Path) -> str:
    """A private copy of a SQLite database (WAL included), so a test may change it freely."""
    with sqlite_session(src_url.removeprefix("sqlite:///")) as src, \
            sqlite_session(dst) as copy:
        src.backup(copy)
    return f"sqlite:///{dst}"


def free_port() -> int:
    """A local TCP port nothing listens on (for a server to start on, or to find closed).

    A plain run lets the kernel pick one. Under pytest-xdist each worker takes its ports in
    turn from a range of its own below the kernel's ephemeral range: a port handed to one
    worker's server and not yet bound cannot be handed to another worker, nor be taken as
    the local end of an outgoing connection, meanwhile."""
    if XDIST_WORKER is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    for _ in range(200):
        port = next(_WORKER_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in worker {XDIST_WORKER}'s range")


def _worker_ports() -> Iterator[int]:
    """This worker's ports, from a random start so that two runs' workers seldom meet."""
    import itertools
    import random

    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int((XDIST_WORKER or "gw0").removeprefix("gw") or 0)
    span = max((low - 10_000) // max(workers, 1), 100)
    first = 10_000 + index * span
    start = random.randrange(span)
    return (first + (start + i) % span for i in itertools.count())


_WORKER_PORTS = _worker_ports()


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
def serving(app: Any, name: str = "app") -> Iterator[str]:
    """Serve the ASGI ``app`` on uvicorn over HTTP on a free port, in a thread, until the block
    exits; its base URL."""
    import threading
    import time

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on", access_log=False))
    thread = threading.Thread(target=server.run, name=f"serve-{name}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def running_service(store_url: str, tmp_path: Path, *, settings: Any = None,
                    secret: str = "test-secret", replay_seconds: float = 0.2,
                    **kwargs: Any) -> Iterator[RunningService]:
    """Migrate ``store_url`` and serve ``tend.listen.app.create_app`` on uvicorn in a thread
    until the block exits (``settings``: a ShopSettings, default the embedded one)."""
    from tend.listen.app import create_app
    from tend.store import db

    db.migrate(store_url)
    spool_dir = tmp_path / "spool"
    app = create_app(store_url, settings=settings, secret=secret, spool_dir=spool_dir,
                     replay_seconds=replay_seconds, **kwargs)
    with serving(app, "tend serve") as url:
        yield RunningService(url, app, spool_dir)


# -- one planned night of the programs stage (tests/unit/programs, tests/unit/listen) ---------


def make_program(name: str, **over: Any) -> dict[str, Any]:
    """A programs.yaml entry: a win-back on ``lapsed`` unless overridden."""
    base = {"name": name, "signal": "lapsed", "template": "winback", "kind": "marketing",
            "priority": 50, "cooldown_days": 0, "validity_days": 14}
    return base | over


def make_registry(*programs: dict[str, Any], caps: list[dict[str, int]] | None = None) -> Any:
    """A registry of ``programs`` (default cap: one marketing message in 3 days)."""
    import copy

    from tend.programs.registry import parse_registry

    return parse_registry({"caps": caps if caps is not None else [{"messages": 1, "days": 3}],
                           "programs": [copy.deepcopy(p) for p in programs]})


def plan_test_night(shop_url: str, store_url: str, day: dt.date, reg: Any,
                    secret: str = "s") -> Any:
    """Ingest and plan the night of ``day``, then mark its claims sent (no rendering)."""
    from tend import messages
    from tend.features import ingest
    from tend.programs import plan

    settings = ShopSettings.from_env({})
    ingest.run_ingest(shop_url, store_url, day, f"i-{day}")
    planned = plan.plan_night(shop_url, store_url, day, f"p-{day}", settings=settings,
                              renderer=messages.default_renderer(settings), secret=secret,
                              registry=reg)
    mark_claimed_sent(store_url, day)
    return planned


def night_decisions(store_url: str, day: dt.date | None = None) -> Any:
    """The decision log (of one night, or all), as a DataFrame."""
    import pandas as pd

    from tend.store.db import connect
    from tend.store.tables import decision_log

    q = select(decision_log)
    if day:
        q = q.where(decision_log.c.as_of == day)
    with connect(store_url).connect() as conn:
        return pd.DataFrame(conn.execute(q).mappings().all())


def sent_survey(store_url: str, customer_id: str, message_id: str, *,
                sku: str | None = "SKL-26", as_of: dt.date | None = None) -> None:
    """A survey message in the ledger, sent, with its render context (about product ``sku``),
    as a night leaves it: what the survey's rating links answer."""
    import json

    import numpy as np

    from tend.store import db, ledger
    from tend.store.tables import contact_ledger

    db.migrate(store_url)
    now = dt.datetime.now(dt.UTC)
    night = as_of or now.date()
    context = {"template": "survey", "signal": {"name": "survey"},
               "products": [{"sku": sku, "name": "Cast-iron skillet"}] if sku else []}
    with db.connect(store_url).begin() as conn:
        conn.execute(contact_ledger.insert().values(
            message_id=message_id, customer_id=customer_id, program="survey",
            occurrence=f"survey::{night}", kind="service", status="sent", as_of=night,
            run_id="r", batch_id=0, claimed_at=now))
        ledger.write_contexts(conn, night, np.zeros(1, dtype=np.int64), [message_id],
                              [json.dumps(context)])


@dataclass
class WebhookSigner:
    """An ECDSA key pair made for a test, signing bodies as SendGrid's Signed Event Webhook
    does (over the timestamp header followed by the raw body)."""

    private_key: Any
    public_key: str
    """As SendGrid shows it: the base64 of the DER public key, no PEM armour."""

    @classmethod
    def new(cls) -> WebhookSigner:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        return cls(key, "".join(pem.strip().splitlines()[1:-1]))

    def signature(self, body: bytes, stamp: str) -> str:
        import base64

        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        return base64.b64encode(
            self.private_key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()

    def headers(self, body: bytes, at: float | None = None) -> dict[str, str]:
        import time

        stamp = str(int(time.time() if at is None else at))
        return {"Content-Type": "application/json",
                "X-Twilio-Email-Event-Webhook-Signature": self.signature(body, stamp),
                "X-Twilio-Email-Event-Webhook-Timestamp": stamp}


def add_ledger_messages(store_url: str, rows: list[dict[str, Any]],
                        as_of: dt.date = dt.date(2026, 11, 20)) -> None:
    """Ledger rows for tests that need messages to exist (no render contexts): each row gives
    at least message_id and customer_id; status defaults to sent, kind to marketing."""
    from tend.store.db import connect
    from tend.store.tables import contact_ledger

    stamp = dt.datetime.now(dt.UTC)
    with connect(store_url).begin() as conn:
        conn.execute(contact_ledger.insert(), [{
            "program": "winback", "occurrence": "o1", "kind": "marketing", "status": "sent",
            "as_of": as_of, "run_id": "test", "batch_id": 0, "claimed_at": stamp, **r}
            for r in rows])


class TcpProxy:
    """A TCP forwarder on a local port that a test stops (every connection cut, new ones
    refused) and starts again on the same port: a database server going away, for real."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        if self._listener is not None:
            with suppress(OSError):  # wakes the thread blocked in accept(); close() won't
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


@dataclass
class InterruptibleStore:
    """A migrated store that a test takes down and brings back; ``url`` is what the code under
    test connects to. PostgreSQL: through a :class:`TcpProxy` that is stopped. SQLite: the file
    moved away and a directory put in its place, so nothing can open it."""

    url: str
    proxy: TcpProxy | None = None
    path: Path | None = None

    def down(self) -> None:
        from tend.store.db import connect

        if self.proxy is not None:
            self.proxy.stop()
            return
        assert self.path is not None
        connect(self.url).dispose()  # close the pool's handles on the file
        for suffix in ("", "-wal", "-shm"):
            f = Path(f"{self.path}{suffix}")
            if f.exists():
                f.rename(f"{f}.away")
        self.path.mkdir()

    def up(self) -> None:
        if self.proxy is not None:
            self.proxy.start()
            return
        assert self.path is not None
        self.path.rmdir()
        for suffix in ("", "-wal", "-shm"):
            f = Path(f"{self.path}{suffix}.away")
            if f.exists():
                f.rename(f"{self.path}{suffix}")


@contextmanager
def interruptible_store(store_url: str) -> Iterator[InterruptibleStore]:
    """``store_url`` (migrated) made interruptible; see :class:`InterruptibleStore`."""
    from tend.config import sqlite_file
    from tend.store.db import connect

    file = sqlite_file(store_url)
    if file is not None:
        yield InterruptibleStore(store_url, path=Path(file))
        return
    u = make_url(store_url)
    proxy = TcpProxy(u.host or "127.0.0.1", u.port or 5432)
    proxy.start()
    url = u.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        yield InterruptibleStore(url, proxy=proxy)
    finally:
        connect(url).dispose()
        proxy.stop()


# -- The settings the code reads (docs/configuration.md and docker-compose.yaml are checked
# -- against them) -------------------------------------------------------------------------

#: A setting's name as the code spells it: a string literal "TEND_..." (a literal ending in "_"
#: is a prefix, whose names are derived below).
_LITERAL = re.compile(r"""["'](TEND_[A-Z0-9_]+)["']""")


class _RecordingEnv(dict[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.asked.add(key)
        return super().__contains__(key)


def _sendgrid_env_names() -> set[str]:
    """The TEND_SENDGRID_* names SendGridSettings.from_env builds from its option names."""
    env = _RecordingEnv({"TEND_SENDGRID_API_KEY": "SG.docs-test"})
    SendGridSettings.from_env(env)
    return {name for name in env.asked if name.startswith("TEND_")}


def settings_in_code() -> set[str]:
    """Every TEND_* variable the code (include/, dags/, plugins/) reads."""
    names: set[str] = set()
    for folder in ("include", "dags", "plugins"):
        for path in sorted((PROJECT / folder).rglob("*.py")):
            names.update(n for n in _LITERAL.findall(path.read_text(encoding="utf-8"))
                         if not n.endswith("_"))
    return names | _sendgrid_env_names()


# --- the worst shop rows (reliability-input) -------------------------------------------------
#: Customers whose rows hold what a hostile or broken export can: names crafted to add a
#: recipient, NUL bytes, absurd quantities and intervals, dates outside any calendar. Their ids
#: start with EVIL so a test can tell their messages from everyone else's.
WORST_CUSTOMERS = [  # customer_id, email, first_name, last_name, locale, timezone, consent_at,
    # created_at
    ("EVIL-1", "evil1@example.com", "=?utf-8?q?a@evil.example=2C?=", "x\r\nBcc: all@evil.example",
     "en", "UTC", "2024-01-01 00:00:00", "2024-01-01 00:00:00"),
    ("EVIL-2", "evil2@example.com", "Nul\x00Name", "\x00", "xx-NOPE", "Mars/Base",
     "9999-12-31 23:59:59", "0001-01-01 00:00:00"),
    ("EVIL\x003", "evil3@example.com", "Three", "Nul", "en", "UTC", None, "2024-01-01 00:00:00"),
    ("EVIL-4", "evil4@example.com", '"A" <b@evil.example>, ' * 40, "é" * 300, "fr", "UTC",
     "2024-01-01 00:00:00", "2024-01-01 00:00:00"),
]
WORST_PRODUCTS = [  # sku, name, category, price, service_interval_days, replenish_days
    ("EVIL-SKU", "Evil\x00product", "x", 1e308, 10**9, 10**12),
    ("EVIL\x00SKU", "Nul sku", "x", "1.00", None, 30),
]
WORST_ORDERS = [  # order_id, customer_id, ordered_at, total (the night's day is filled in)
    ("EVIL-O1", "EVIL-1", "{night} 09:00:00", "24.00"),
    ("EVIL-O2", "EVIL-2", "9999-12-31 23:59:59", "10.00"),
    ("EVIL-O3", "EVIL-2", "0001-01-01 00:00:00", "10.00"),
    ("EVIL\x00O4", "EVIL-1", "{night} 09:00:00", "10.00"),
    ("E" * 300, "EVIL-1", "{night} 09:00:00", "10.00"),
    ("EVIL-O5", "EVIL\x003", "{night} 09:00:00", "10.00"),
    ("EVIL-O6", "EVIL-4", "{night} 09:00:00", "1e308"),
    ("EVIL-O7", "EVIL-2", "{night} 10:00:00", "12.00"),
    ("EVIL-O8", "EVIL-4", "{night} 10:00:00", "12.00"),
]
WORST_LINES = [  # order_id, sku, quantity
    ("EVIL-O1", "COF-BEANS-HOUSE", 10**12),
    ("EVIL-O1", "COF-FILTER-PAPER", 2**62),
    ("EVIL-O1", "COF-DESCALER", 1),
    ("EVIL-O7", "EVIL-SKU", 1),
    ("EVIL-O7", "EVIL\x00SKU", 1),
    ("EVIL-O7", "COF-BEANS-HOUSE", 3),
    ("EVIL-O8", "COF-BEANS-HOUSE", 1e300),
    ("EVIL-O8", "COF-DESCALER", 1),
]


def add_worst_rows(shop_url: str, night: dt.date) -> None:
    """Add the worst rows above to a (demo) SQLite shop, whose columns take any value."""
    with sqlite_session(shop_url.removeprefix("sqlite:///")) as con:
        con.executemany(
            "INSERT INTO customers (customer_id, email, first_name, last_name, locale, timezone, "
            "marketing_consent, consent_at, created_at) VALUES (?, ?, ?, ?, ?, ?, 'express', ?, ?)",
            WORST_CUSTOMERS)
        con.executemany(
            "INSERT INTO products (sku, name, category, price, service_interval_days, "
            "replenish_days) VALUES (?, ?, ?, ?, ?, ?)", WORST_PRODUCTS)
        con.executemany(
            "INSERT INTO orders (order_id, customer_id, ordered_at, total, currency) "
            "VALUES (?, ?, ?, ?, 'CAD')",
            [(o, c, at.format(night=night), t) for o, c, at, t in WORST_ORDERS])
        con.executemany(
            "INSERT INTO order_lines (order_id, sku, quantity, unit_price) VALUES (?, ?, ?, 1)",
            WORST_LINES)


def one_mailbox(header: str) -> str:
    """The one address an address header (as written, encoded words and all) names, read the
    way a relay that decodes RFC 2047 then splits on commas would, and as written; fails when
    either reading finds another number of addresses or two different ones."""
    from email.header import decode_header, make_header
    from email.utils import getaddresses

    [(_, raw)] = getaddresses([header])
    [(_, decoded)] = getaddresses([str(make_header(decode_header(header)))])
    assert raw.lower() == decoded.lower(), (raw, decoded)
    return raw.lower()


# -- whole runs through real Airflow (`airflow dags test`), as `make run` does ----------------

AIRFLOW_TIMEOUT = 240  # a task stuck in up_for_retry would otherwise wait out its retry_delay


@dataclass
class Snapshot:
    ledger: dict[str, dict[str, Any]]  # message_id -> row
    outbox: dict[str, int]  # file name -> mtime_ns
    decisions: list[dict[str, Any]]


@dataclass
class AirflowScenario:
    """A temporary Airflow home, shop and store (see :func:`airflow_scenario`); each run's
    output is kept in ``logs`` and a file under ``tmp/logs``."""

    tmp: Path
    env: dict[str, str]
    logs: dict[str, str] = field(default_factory=dict)  # "dag_id date #n" -> output
    snaps: dict[str, Snapshot] = field(default_factory=dict)

    def run(self, *args: str, label: str, check: bool = True) -> str:
        proc = subprocess.run(
            [*args], env=self.env, cwd=self.tmp, capture_output=True, text=True,
            timeout=AIRFLOW_TIMEOUT,
        )
        out = proc.stdout + proc.stderr
        (self.tmp / "logs").mkdir(exist_ok=True)
        (self.tmp / "logs" / f"{label.replace(' ', '_')}.log").write_text(out)
        if check:
            assert proc.returncode == 0, f"{label} failed (rc={proc.returncode}):\n{out[-6000:]}"
        return out

    def dags_test(self, dag_id: str, date: str, conf: dict[str, Any] | None = None, *,
                  succeed: bool = True) -> str:
        """``airflow dags test DAG DATE [-c CONF]``; the run must end in success (or, with
        ``succeed=False``, in failure)."""
        n = sum(1 for k in self.logs if k.startswith(f"{dag_id} {date}")) + 1
        label = f"{dag_id} {date} #{n}"
        extra = ["-c", json.dumps(conf)] if conf is not None else []
        out = self.run(str(BIN / "airflow"), "dags", "test", dag_id, date, *extra, label=label,
                       check=succeed)
        state = "success" if succeed else "failed"
        assert re.search(rf"DagRun Finished: dag_id={dag_id},.*state={state}", out), (
            f"{label}: the DAG run did not finish in {state}\n{out[-6000:]}")
        self.logs[label] = out
        return out

    def night(self, date: str) -> None:
        self.dags_test("tend_ingest", date)
        self.dags_test("tend_programs", date)

    def snapshot(self) -> Snapshot:
        with sqlite3.connect(self.tmp / "store.db") as db:
            db.row_factory = sqlite3.Row
            ledger = {r["message_id"]: dict(r) for r in db.execute(
                "SELECT message_id, customer_id, program, kind, status, as_of, batch_id, "
                "provider_id, finished_at, error FROM contact_ledger")}
            decisions = [dict(r) for r in db.execute(
                "SELECT as_of, customer_id, program, fate, message_id FROM decision_log")]
        outbox = {p.name: p.stat().st_mtime_ns for p in (self.tmp / "outbox").glob("*.eml")}
        return Snapshot(ledger, outbox, decisions)


BIN = Path(sys.executable).parent


def airflow_scenario(tmp: Path, *, as_of: str, customers: int = 300) -> AirflowScenario:
    """A 300-customer demo shop as of ``as_of`` and a migrated Airflow in ``tmp``.

    The databases are found only through the Airflow connections ``tend_shop``/``tend_store``:
    TEND_SHOP_URL/TEND_STORE_URL point into a directory that does not exist, so a task that
    fell back to them would fail the run.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "TEND_", "_AIRFLOW"))}
    env["TEND_TODAY"] = os.environ.get("TEND_TODAY", "")  # the suite's pinned day (conftest)
    decoy = tmp / "no-such-dir"
    env.update({
        "AIRFLOW_HOME": str(tmp / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # sqlite:/// + an absolute path = four slashes.
        "AIRFLOW_CONN_TEND_SHOP": f"sqlite:///{tmp / 'shop.db'}",
        "AIRFLOW_CONN_TEND_STORE": f"sqlite:///{tmp / 'store.db'}",
        "TEND_SHOP_URL": f"sqlite:///{decoy / 'shop.db'}",
        "TEND_STORE_URL": f"sqlite:///{decoy / 'store.db'}",
        "TEND_OUTBOX_DIR": str(tmp / "outbox"),
        "TEND_VAR_DIR": str(tmp),
    })
    assert env["AIRFLOW_CONN_TEND_SHOP"].startswith("sqlite:////")
    s = AirflowScenario(tmp, env)
    s.run(str(BIN / "tend"), "demo-data", "--db", env["AIRFLOW_CONN_TEND_SHOP"],
          "--customers", str(customers), "--seed", "3", "--as-of", as_of, label="demo-data")
    migrated_airflow_db(s)
    return s


def migrated_airflow_db(s: AirflowScenario) -> None:
    """A migrated SQLite Airflow metadata database at the scenario's ``airflow/airflow.db``.

    Every test starts from the same one, so it is migrated once per test run (by whichever
    xdist worker needs it first) and copied."""
    import shutil

    target = Path(s.env["AIRFLOW_HOME"]) / "airflow.db"
    target.parent.mkdir(parents=True, exist_ok=True)

    def migrate(folder: Path) -> None:
        s.run(str(BIN / "airflow"), "db", "migrate", label="airflow db migrate")
        shutil.copyfile(target, folder / "airflow.db")

    template = made_once("airflow-db", migrate) / "airflow.db"
    if not target.exists():  # this scenario did not migrate it itself
        shutil.copyfile(template, target)


#: The ``random_days_shop`` fixture (tests/unit/signals/conftest.py): ``random_days_shop(extra)``
#: is (features, catalogue) of a shop whose background customers order at random days, plus the
#: customers of ``extra`` (id -> order days).
RandomDaysShop = Callable[[dict[str, list[str]]], tuple[object, Any]]


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


# -- Redis and order events ---------------------------------------------------------------

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")


def require_redis() -> str:
    """The Redis base URL (no db number); skip without Redis locally, fail without it in CI."""
    url = make_url(REDIS_URL.replace("redis://", "redis+plain://", 1))
    try:
        with socket.create_connection((url.host or "127.0.0.1", url.port or 6379), timeout=2) as s:
            s.sendall(b"PING\r\n")
            if not s.recv(16).startswith(b"+PONG"):
                raise OSError("no PONG")
    except OSError as exc:
        message = f"Redis is not reachable at {REDIS_URL} ({exc}); set TEST_REDIS_URL"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"Redis tests must run in CI: {message}")
        pytest.skip(message)
    return REDIS_URL.rstrip("/")


def add_first_order(shop_url: str, customer_id: str, order_id: str, ordered_at: dt.datetime,
                    *, consent: str = "express", total: str = "42.00") -> None:
    """A new customer and their first order (one line of the catalogue's first product) in a
    shop: what an "order placed" event announces."""
    from tend.shop import schema as shop_schema

    engine = create_engine(shop_url)
    try:
        with engine.begin() as conn:
            sku = conn.execute(select(shop_schema.products.c.sku).order_by(
                shop_schema.products.c.sku).limit(1)).scalar_one()
            conn.execute(shop_schema.customers.insert().values(
                customer_id=customer_id, email=f"{customer_id.lower()}@example.com",
                first_name="Ada", locale="en", timezone="UTC", marketing_consent=consent,
                consent_at=ordered_at, created_at=ordered_at))
            conn.execute(shop_schema.orders.insert().values(
                order_id=order_id, customer_id=customer_id, ordered_at=ordered_at,
                total=total, currency="CAD"))
            conn.execute(shop_schema.order_lines.insert().values(
                order_id=order_id, sku=sku, quantity=1, unit_price=total))
    finally:
        engine.dispose()
