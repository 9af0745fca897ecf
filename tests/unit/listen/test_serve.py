"""``tend serve``'s start: the command as a container runs it, in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from _support import TcpProxy, free_port
from sqlalchemy.engine import make_url

from tend.errors import ConfigError
from tend.listen.serve import serve
from tend.messages.tokens import make_token
from tend.store import db, suppressions

SECRET = "test-secret"


@contextmanager
def tend_serve(store_url: str, spool: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``tend serve --store URL`` with two uvicorn workers, as docker-compose.yaml starts it;
    its base URL once /healthz answers."""
    port = free_port()
    env = {**os.environ, "TEND_SECRET_KEY": SECRET, "TEND_SPOOL_DIR": str(spool),
           "TEND_BASE_URL": "http://localhost:8090"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from tend.cli import main; sys.exit(main())",
         "serve", "--store", store_url, "--port", str(port), "--workers", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tend serve exited with {proc.returncode}:\n{proc.stderr.read()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "tend serve did not answer /healthz"
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_it_starts_while_the_store_is_down_and_applies_what_it_spooled_once_it_is_back(
        pg_schema_url: str, tmp_path: Path) -> None:
    """A restart during a database outage (the container's restart policy) must serve, not
    restart-loop: an unsubscribe that arrives then is answered, spooled and applied later."""
    db.migrate(pg_schema_url)
    u = make_url(pg_schema_url)
    proxy = TcpProxy(u.host or "127.0.0.1", u.port or 5432)  # not started: a closed port
    url = u.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        with tend_serve(url, tmp_path / "spool") as (base, proc):
            health = httpx.get(f"{base}/healthz").json()
            assert (health["store"], health["spooled"]) == ("unreachable", 0)
            r = httpx.post(f"{base}/unsubscribe/{make_token(SECRET, 'cus_1')}",
                           data={"List-Unsubscribe": "One-Click"})
            assert r.status_code == 200
            assert httpx.get(f"{base}/healthz").json()["spooled"] == 1

            proxy.start()  # the store is back: the replay loop applies the spooled click
            deadline = time.monotonic() + 30
            while (health := httpx.get(f"{base}/healthz").json())["spooled"]:
                assert time.monotonic() < deadline, health
                time.sleep(0.2)
            assert (health["store"], health["quarantined"]) == ("ok", 0)
        warning = proc.stderr.read() if proc.stderr else ""
        assert "starting anyway" in warning and "spool" in warning
        with db.connect(pg_schema_url).connect() as conn:
            held = suppressions.active(conn)
        assert set(held.loc[held["reason"] == "unsubscribed", "customer_id"]) == {"cus_1"}
    finally:
        db.connect(url).dispose()
        proxy.stop()


def test_a_reachable_store_behind_the_code_is_still_refused(tmp_path: Path) -> None:
    """Only an outage is waited for: a store that answers with an old schema needs
    `tend migrate`, and serving it would quarantine every click."""
    store = tmp_path / "store.db"
    with db.connect(f"sqlite:///{store}").begin():
        pass  # the file exists, without Tend's tables
    with pytest.raises(ConfigError, match="run `tend migrate`"):
        serve(store=f"sqlite:///{store}", host="127.0.0.1", port=free_port())
