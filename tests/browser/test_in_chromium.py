"""Tend in a real Airflow, driven by headless Chromium as marketing and operators use it: log in
through Airflow's login page, fill the campaign form, trigger a dry run and see its report on
the Tend page, trigger the real run with a proof address, and see the Tend page's charts drawn
from what the nights and the campaign sent. With ``TEND_DOCS_SCREENSHOTS=1`` it writes the
screenshots the guides show to docs/; a normal run leaves the checkout as it found it.

The module starts ``airflow api-server``, ``scheduler`` and ``dag-processor`` (LocalExecutor on a
SQLite metadata database in a temporary AIRFLOW_HOME, the simple auth manager with a passwords
file as ``make airflow`` sets it up) on a free port, runs one real night through tend_ingest and
tend_programs, and stops every process afterwards. Debian's Chromium, never a downloaded one.
"""

from __future__ import annotations

import email
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from _support import PROJECT, free_port

CHROMIUM = "/usr/bin/chromium"
NIGHT = "2026-11-20"
BIN = Path(sys.executable).parent
RUN_TIMEOUT = 240.0
pytestmark = [pytest.mark.slow, pytest.mark.chromium]


def docs_screenshot(shot: Path, name: str) -> None:
    """Refresh a guide's screenshot (docs/NAME) from this run when asked to: by default a
    test run must not change tracked files (CI's clone and a developer's checkout)."""
    assert shot.stat().st_size > 10_000, f"{shot} is not a real screenshot"
    if os.environ.get("TEND_DOCS_SCREENSHOTS") == "1":
        shutil.copy(shot, PROJECT / "docs" / name)


@dataclass
class Airflow:
    url: str
    password: str
    tmp: Path
    token: str = ""

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        got = httpx.request(method, f"{self.url}/api/v2{path}", timeout=30,
                            headers={"Authorization": f"Bearer {self.token}"}, **kwargs)
        assert got.status_code < 300, f"{method} {path}: {got.status_code} {got.text}"
        return got.json()

    def wait_for_run(self, dag_id: str, run_id: str | None = None) -> dict[str, Any]:
        """The run (default: the newest of ``dag_id``) once it has finished."""
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline:
            runs = self.api("GET", f"/dags/{dag_id}/dagRuns",
                            params={"order_by": "-run_after", "limit": 1})["dag_runs"]
            if run_id is not None:
                runs = [self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")]
            if runs and runs[0]["state"] in ("success", "failed"):
                return dict(runs[0])
            time.sleep(2)
        raise AssertionError(f"{dag_id} did not finish in {RUN_TIMEOUT:.0f}s; "
                             f"logs in {self.tmp / 'logs'}")


def _require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing (make install provides it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Airflow]:
    _require_chromium()
    tmp = tmp_path_factory.mktemp("airflow_ui")
    home = tmp / "airflow"
    (tmp / "logs").mkdir()
    home.mkdir()
    password = secrets.token_urlsafe(12)
    (home / "passwords.json").write_text(json.dumps({"admin": password}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "TEND_", "_AIRFLOW"))}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple."
                                       "simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(24),
        "AIRFLOW__API__BASE_URL": url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
        # Only the runs the test triggers (asset-triggered ones too).
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW_CONN_TEND_SHOP": f"sqlite:///{tmp / 'shop.db'}",
        "AIRFLOW_CONN_TEND_STORE": f"sqlite:///{tmp / 'store.db'}",
        "TEND_OUTBOX_DIR": str(tmp / "outbox"),
        "TEND_VAR_DIR": str(tmp),
    })

    def run(*args: str) -> None:
        subprocess.run(args, env=env, check=True, capture_output=True, timeout=300, cwd=tmp)

    run(str(BIN / "tend"), "demo-data", "--db", env["AIRFLOW_CONN_TEND_SHOP"], "--customers",
        "300", "--seed", "3", "--as-of", NIGHT)
    run(str(BIN / "airflow"), "db", "migrate")
    run(str(BIN / "airflow"), "pools", "set", "tend_send", "4", "Tend senders")
    procs: list[subprocess.Popen[bytes]] = []
    for name, args in (("api-server", ["api-server", "--port", str(port), "--host",
                                       "127.0.0.1"]),
                       ("scheduler", ["scheduler"]), ("dag-processor", ["dag-processor"])):
        with (tmp / "logs" / f"{name}.out").open("wb") as out:
            procs.append(subprocess.Popen([str(BIN / "airflow"), *args], env=env, cwd=tmp,
                                          stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True))
    try:
        af = Airflow(url, password, tmp)
        deadline = time.monotonic() + 180
        while True:
            try:
                got = httpx.post(f"{url}/auth/token", timeout=5,
                                 json={"username": "admin", "password": password})
                if got.status_code in (200, 201):
                    af.token = got.json()["access_token"]
                    dags = af.api("GET", "/dags")["dags"]
                    if {"tend_ingest", "tend_programs", "tend_campaign"} <= {
                            d["dag_id"] for d in dags}:
                        break
            except httpx.HTTPError:
                pass
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                pytest.fail("Airflow did not start; see " + str(tmp / "logs"))
            time.sleep(1)
        af.api("POST", "/dags/tend_ingest/dagRuns",
               json={"logical_date": None, "conf": {"as_of": NIGHT}})
        assert af.wait_for_run("tend_ingest")["state"] == "success"
        # the plain Trigger (no night given, logical date now): the ingested night
        af.api("POST", "/dags/tend_programs/dagRuns", json={"logical_date": None})
        assert af.wait_for_run("tend_programs")["state"] == "success"
        yield af
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def page(airflow: Airflow) -> Iterator[Any]:
    """A Chromium page logged in to Airflow as admin."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-background-networking",
                  "--disable-component-update", "--disable-default-apps", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            page.goto(f"{airflow.url}/")
            page.get_by_label("Username").fill("admin")
            page.get_by_label("Password").fill(airflow.password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda u: "/auth/login" not in u)
            yield page
        finally:
            browser.close()


def _trigger_campaign(page: Any, airflow: Airflow, name: str, *, real: bool = False,
                      proof_to: str | None = None, screenshot: Path | None = None,
                      words: bool = True) -> str:
    """Fill the form and trigger; the new run's id. ``words=False`` fills only the name and
    the subjects."""
    before = {r["dag_run_id"] for r in airflow.api(
        "GET", "/dags/tend_campaign/dagRuns", params={"limit": 100})["dag_runs"]}
    page.goto(f"{airflow.url}/dags/tend_campaign")
    page.get_by_role("button", name="Trigger").first.click()
    page.get_by_role("button", name="Campaign").click()
    page.locator("#element_name").fill(name)
    page.get_by_role("button", name="Message").click()
    for locale, subject in (("en", "Spring is here"), ("fr", "Le printemps est là")):
        page.locator(f"#element_subject_{locale}").fill(subject)
        if words:
            page.locator(f"#element_preheader_{locale}").fill(subject + "!")
            page.locator(f"#element_text_{locale}").fill(
                f"{subject}, {{{{ customer.first_name }}}}.")
    page.get_by_role("button", name="Rehearsal and proof").click()
    if proof_to:
        page.locator("#element_proof_to").fill(proof_to)
    if real:
        page.locator("label:has(input[name=element_dry_run])").click()  # the switch
        assert not page.locator("input[name=element_dry_run]").is_checked()
    if screenshot is not None:
        page.wait_for_timeout(1000)  # the sections' open and close animations
        page.screenshot(path=str(screenshot), full_page=True)
    button = page.get_by_role("button", name="Trigger").last
    assert button.is_enabled(), "the form refused the campaign"
    button.click()
    # The run the click created (not the previous campaign's, which may still be the newest).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = [r["dag_run_id"] for r in airflow.api(
            "GET", "/dags/tend_campaign/dagRuns", params={"limit": 100})["dag_runs"]
            if r["dag_run_id"] not in before]
        if new:
            return str(new[0])
        time.sleep(0.5)
    raise AssertionError("the form's Trigger created no run")


def test_a_dry_run_from_the_form_reports_on_the_tend_page(airflow: Airflow, page: Any) -> None:
    run_id = _trigger_campaign(page, airflow, "spring-news",
                               screenshot=airflow.tmp / "form.png")
    run = airflow.wait_for_run("tend_campaign", run_id)
    assert run["state"] == "success" and run["conf"]["name"] == "spring-news"
    assert run["conf"]["dry_run"] is True
    assert not list((airflow.tmp / "outbox").glob("*.eml")) or all(
        "spring-news" not in p.read_text(errors="replace")
        for p in (airflow.tmp / "outbox").glob("*.eml"))
    page.goto(f"{airflow.url}/tend/")
    section = page.locator("h3", has_text="spring-news (dry_run")
    section.wait_for()
    assert page.get_by_text("Dry run on").first.is_visible()
    assert page.locator("svg#campaign-spring-news rect").count() >= 1  # its fates, drawn
    docs_screenshot(airflow.tmp / "form.png", "tend-campaign-form.png")


def test_the_form_submits_with_only_the_name_and_the_subjects(airflow: Airflow,
                                                              page: Any) -> None:
    """Preheader, headline and text are optional, as for the API: the form submits without
    them and the run (a dry run) succeeds."""
    run_id = _trigger_campaign(page, airflow, "subjects-only", words=False)
    run = airflow.wait_for_run("tend_campaign", run_id)
    assert run["conf"]["name"] == "subjects-only"
    assert run["state"] == "success", run
    assert not run["conf"].get("text_en") and not run["conf"].get("preheader_fr")


def test_the_real_run_sends_a_proof_first(airflow: Airflow, page: Any) -> None:
    before = set((airflow.tmp / "outbox").glob("*.eml"))
    run_id = _trigger_campaign(page, airflow, "spring-news", real=True,
                               proof_to="staff@shop.example")
    run = airflow.wait_for_run("tend_campaign", run_id)
    assert run["state"] == "success" and run["conf"]["dry_run"] is False
    sent = [email.message_from_bytes(p.read_bytes())
            for p in set((airflow.tmp / "outbox").glob("*.eml")) - before]
    proofs = [m for m in sent if m["Subject"].startswith("[PROOF]")]
    assert proofs and all(m["To"] == "staff@shop.example" for m in proofs)
    assert len(sent) > len(proofs)  # and the audience after them


def test_the_tend_page_draws_the_nights_and_the_campaign(airflow: Airflow, page: Any) -> None:
    assert httpx.get(f"{airflow.url}/tend/").status_code == 401  # only behind the login
    page.goto(f"{airflow.url}/tend/")
    sends = page.locator("svg#sends")
    sends.wait_for()
    assert sends.locator("rect").count() > 2  # bars for the night's programs
    assert sends.locator("text", has_text="campaign:spring-news").count() == 1
    for chart in ("fates", "caps", "contacts", "rates", "ratings"):
        assert page.locator(f"svg#{chart}").count() == 1
    page.screenshot(path=str(airflow.tmp / "tend-page.png"), full_page=True)
    docs_screenshot(airflow.tmp / "tend-page.png", "tend-page.png")
    # the navigation's Tend entry shows the page inside the Airflow UI
    page.goto(f"{airflow.url}/plugin/tend")
    frame = page.frame_locator("iframe").first
    frame.locator("svg#sends").wait_for()
    page.screenshot(path=str(airflow.tmp / "tend-page-in-airflow.png"))
    docs_screenshot(airflow.tmp / "tend-page-in-airflow.png", "tend-page-in-airflow.png")
    page.goto(f"{airflow.url}/tend/gallery")
    assert page.locator("iframe").count() >= 2
