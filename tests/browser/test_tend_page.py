"""The Tend page in a real Airflow, driven by headless Chromium: log in through Airflow's own
login page, follow the Tend entry to the page, see its charts drawn from a store a real night
filled; a screenshot goes to docs/ for the operations guide.

The test starts ``airflow api-server`` on a free port over a SQLite metadata database in a
temporary AIRFLOW_HOME, with the simple auth manager and a passwords file (as ``make airflow``
does), and stops it afterwards. Debian's Chromium, never a downloaded browser.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _support import PROJECT, free_port, make_program, make_registry, plan_test_night

CHROMIUM = "/usr/bin/chromium"
MONDAY = dt.date(2026, 11, 16)
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.slow, pytest.mark.chromium,
              pytest.mark.demo_shop(customers=250, seed=21, as_of=MONDAY)]


@pytest.fixture
def chromium_path() -> str:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{CHROMIUM} is missing (make install provides it)")
        pytest.skip(f"{CHROMIUM} is missing (make install provides it)")
    return CHROMIUM


@pytest.fixture
def airflow(tmp_path: Path, shop_url: str) -> Iterator[tuple[str, str]]:
    """A real API server with the Tend plugin, over a store one planned night filled; its
    URL and the admin's password."""
    from tend.store import migrate

    store = f"sqlite:///{tmp_path / 'store.db'}"
    migrate(store)
    plan_test_night(shop_url, store, MONDAY, make_registry(make_program("winback")))
    home = tmp_path / "airflow"
    home.mkdir()
    password = secrets.token_urlsafe(12)
    (home / "passwords.json").write_text(json.dumps({"admin": password}))
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "TEND_", "_AIRFLOW"))}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple."
                                       "simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(24),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW_CONN_TEND_STORE": f"sqlite:///{tmp_path / 'store.db'}",
        "TEND_SHOP_URL": shop_url,
    })
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True,
                   capture_output=True, timeout=300)
    log = (tmp_path / "api-server.log").open("w")
    proc = subprocess.Popen([str(BIN / "airflow"), "api-server", "--port", str(port),
                             "--host", "127.0.0.1"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the API server did not start:\n"
                            + (tmp_path / "api-server.log").read_text()[-4000:])
            time.sleep(0.5)
        yield url, password
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()


def test_log_in_and_see_the_tend_page(airflow: tuple[str, str], chromium_path: str,
                                      tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    url, password = airflow
    assert httpx.get(f"{url}/tend/").status_code == 401  # behind Airflow's login
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium_path, headless=True,
            args=["--no-sandbox", "--disable-background-networking",
                  "--disable-component-update", "--disable-default-apps", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{url}/")
            page.get_by_label("Username").fill("admin")
            page.get_by_label("Password").fill(password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda u: "/auth/login" not in u, timeout=30_000)
            page.goto(f"{url}/tend/")
            sends = page.locator("svg#sends")
            sends.wait_for(timeout=30_000)
            assert sends.locator("rect").count() > 1  # bars drawn from the night's sends
            for chart in ("fates", "caps", "contacts", "rates", "ratings"):
                assert page.locator(f"svg#{chart}").count() == 1
            assert sends.locator("text", has_text="winback").count() == 1  # the legend
            page.screenshot(path=str(tmp_path / "tend-page.png"), full_page=True)
            page.goto(f"{url}/tend/gallery")
            assert page.locator("iframe").count() >= 2
        finally:
            browser.close()
    shutil.copy(tmp_path / "tend-page.png", PROJECT / "docs" / "tend-page.png")
