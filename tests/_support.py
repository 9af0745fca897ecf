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
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
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
    s.run(str(BIN / "airflow"), "db", "migrate", label="airflow db migrate")
    return s
