"""The Tend page (tend_airflow.page) over real HTTP on a real store, behind Airflow's own login:
the simple auth manager's JWT in the UI's cookie, as the API server checks it."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import httpx
import pandas as pd
import pytest
from _support import make_program, make_registry, plan_test_night, serving

from tend.store import campaigns, complaints, kpi
from tend.store.db import connect

MONDAY = dt.date(2026, 11, 16)
pytestmark = pytest.mark.demo_shop(customers=250, seed=21, as_of=MONDAY)


@pytest.fixture(scope="module")
def auth_manager(airflow_sdk: ModuleType,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Airflow's simple auth manager, as the API server initialises it (its generated
    passwords in a file of the test's own, not the checkout's var/)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE",
                  str(tmp_path_factory.mktemp("auth") / "passwords.json"))
        mp.setenv("AIRFLOW__CORE__AUTH_MANAGER", "airflow.api_fastapi.auth.managers.simple."
                  "simple_auth_manager.SimpleAuthManager")
        mp.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "test-jwt-secret-" + "x" * 64)
        from airflow import settings
        from airflow.api_fastapi.app import init_auth_manager
        from airflow.models.revoked_token import RevokedToken

        # The one metadata table the login check reads (logged-out tokens), in the temporary
        # AIRFLOW_HOME's database.
        RevokedToken.__table__.create(settings.engine, checkfirst=True)
        yield init_auth_manager()


@pytest.fixture
def page(auth_manager: Any, shop_url: str, store_url: str) -> Iterator[str]:
    from tend_airflow.page.app import create_app

    plan_test_night(shop_url, store_url, MONDAY, make_registry(make_program("winback")))
    with connect(store_url).begin() as conn:
        complaints.open_complaint(conn, customer_id="C-9", source="survey", rating=1,
                                  comment="<script>alert(1)</script>",
                                  now=dt.datetime.now(dt.UTC))
    with serving(create_app(store_url=lambda: store_url), "tend page") as url:
        yield url


def _token(auth_manager: Any, role: str = "viewer") -> str:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return str(auth_manager.generate_jwt(SimpleAuthManagerUser(username="u", role=role)))


def test_the_page_needs_an_airflow_login(page: str) -> None:
    assert httpx.get(f"{page}/").status_code == 401
    assert httpx.get(f"{page}/", cookies={"_token": "forged"}).status_code == 403
    assert httpx.get(f"{page}/gallery").status_code == 401
    assert httpx.get(f"{page}/campaigns/x/en.png").status_code == 401


def test_the_page_shows_the_night_as_charts_with_their_figures(auth_manager: Any,
                                                                page: str) -> None:
    got = httpx.get(f"{page}/", cookies={"_token": _token(auth_manager)})
    assert got.status_code == 200, got.text
    body = got.text
    charts = re.findall(r'<svg [^>]*role="img"[^>]*id="([a-z-]+)"', body)
    assert {"sends", "fates", "caps", "contacts", "rates", "results", "ratings"} <= set(charts)
    assert "<rect" in body.split('id="sends"')[1].split("</svg>")[0]  # bars, not "no data"
    assert "winback" in body and "claimed" in body
    assert "0.3 % limit" in body
    # the customer's words are text, never markup; and nothing is loaded from elsewhere
    assert "<script>alert(1)" not in body and "&lt;script&gt;" in body
    assert not re.search(r'(src|href)="(https?:)?//', body)
    bearer = httpx.get(f"{page}/", headers={"Authorization": f"Bearer {_token(auth_manager)}"})
    assert bearer.status_code == 200


def test_the_gallery_renders_every_enabled_program(auth_manager: Any, page: str) -> None:
    got = httpx.get(f"{page}/gallery", cookies={"_token": _token(auth_manager)}, timeout=60)
    assert got.status_code == 200
    assert got.text.count("<iframe sandbox") >= 2
    assert "this template fails" not in got.text


@pytest.mark.parametrize("path", ["/campaigns/x/en.png", "/campaigns/..%2F..%2Fetc/en.png",
                                  "/campaigns/x/../../passwd.png", "/?days=0", "/?days=abc"])
def test_bad_paths_and_parameters_are_plain_4xx(auth_manager: Any, page: str,
                                                path: str) -> None:
    got = httpx.get(f"{page}{path}", cookies={"_token": _token(auth_manager)})
    assert 400 <= got.status_code < 500
    assert "Traceback" not in got.text


def test_an_interval_clear_of_zero_reads_as_an_effect() -> None:
    from tend_airflow.page import svg

    drawn = svg.intervals("results", "Lift", [("2026-11 <winback>", 2.0, 0.5, 3.5),
                                               ("2026-11 survey", 0.2, -1.0, 1.4),
                                               ("2026-11 promo", -2.0, -3.0, -1.0)])
    assert drawn.count("<circle") == 3

    def colour_of(label: str) -> str:
        return drawn.split(f">{label}</text>")[1].split('stroke="')[1][:7]

    assert colour_of("2026-11 &lt;winback&gt;") == svg.PALETTE[2]  # clear of zero: works
    assert colour_of("2026-11 survey") == svg.PALETTE[0]  # across zero: no effect shown
    assert colour_of("2026-11 promo") == svg.PALETTE[5]  # below zero: costs
    assert "+2.0 pts (+0.5 to +3.5)" in drawn and "<winback>" not in drawn


def _campaign(store_url: str, name: str, *, status: str, dry_run: dict[str, Any] | None = None,
              real: dict[str, Any] | None = None) -> None:
    """A campaign row as the tend_campaign tasks store it: its dry run's report and/or its real
    run's (``save_run`` keeps the other report as it was)."""
    now = dt.datetime.now(dt.UTC)
    with connect(store_url).begin() as conn:
        for report, is_dry in ((dry_run, True), (real, False)):
            if report is not None:
                campaigns.save_run(conn, name=name, template="campaign_news", audience="all",
                                   status=status, as_of=MONDAY, run_id=f"r-{name}",
                                   params={"name": name}, report=report, dry_run=is_dry,
                                   now=now)


def _report(*, dry_run: bool, claimed: int, samples: list[dict[str, Any]] | None = None,
            ledger: dict[str, int] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "dry_run": dry_run, "as_of": MONDAY.isoformat(), "audience_size": 50,
        "fates": {"claimed": claimed, "capped": 50 - claimed}, "claimed": claimed,
        "batches": [] if dry_run else [1], "estimated_seconds": 3.0, "samples": samples or []}
    if ledger is not None:
        out["ledger"] = ledger
    return out


def test_the_campaign_reports_show_no_customer_details(auth_manager: Any, store_url: str,
                                                       page: str) -> None:
    """Every Airflow user sees the page: a sample's rendering context (the customer's name,
    address, live voucher code) stays off it, and the address shows masked."""
    context = {"email": "emily.singh.68@example.org", "first_name": "Emilyzz",
               "last_name": "Singhzz", "voucher_code": "SPRING-7QX2-LIVE"}
    sample = {"locale": "en", "customer_id": "C-42", "to": "emily.singh.68@example.org",
              "subject": "Spring news", "eml": "/x/en.eml", "html": "/x/en.html", "png": None,
              "context": json.dumps(context)}
    _campaign(store_url, "spring-news", status="sent",
              dry_run=_report(dry_run=True, claimed=40, samples=[sample]),
              real=_report(dry_run=False, claimed=40, samples=[sample], ledger={"sent": 40}))
    body = httpx.get(f"{page}/", cookies={"_token": _token(auth_manager)}).text
    assert "dry-run report" in body and "real run report" in body
    for secret in ("emily.singh", "Emilyzz", "Singhzz", "SPRING-7QX2-LIVE",
                   "&quot;context&quot;"):
        assert secret not in body, secret
    assert body.count("e***8@example.org") == 2  # both reports' sample, masked
    assert "C-42" in body


def test_a_result_without_a_lift_says_why_in_its_table(auth_manager: Any, store_url: str,
                                                        page: str) -> None:
    note = "holdout too small: 3 held out, at least 30 needed"
    row = {"month": "2026-11", "program": "winback", "contacted": 40, "held_out": 3,
           "responses": 2, "holdout_responses": 0, "response_rate": 0.05,
           "holdout_response_rate": 0.0, "direct_responses": 0, "messages": 40,
           "open_windows": 40, "note": note}
    with connect(store_url).begin() as conn:
        kpi.replace_months(conn, pd.DataFrame([row]), ["2026-11"], as_of=MONDAY,
                           computed_at=dt.datetime.now(dt.UTC))
    body = httpx.get(f"{page}/", cookies={"_token": _token(auth_manager)}).text
    section = body.split("<h2>Results against the holdout</h2>")[1].split("<h2>")[0]
    assert "see Figures for each program" in section  # the chart sends the reader to the table
    assert f"<td>{note}</td>" in section


def test_a_sample_of_a_campaign_named_with_an_underscore_is_served(auth_manager: Any,
                                                                   store_url: str,
                                                                   page: str) -> None:
    """The form takes ``_`` in a campaign's name; the page serves that campaign's samples."""
    from tend import config
    from tend.campaigns.form import NAME_PATTERN

    assert re.fullmatch(NAME_PATTERN, "spring_sale")
    png = config.var_dir() / "campaigns" / "spring_sale" / "en.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    png.write_bytes(b"\x89PNG\r\n\x1a\n-sample")
    _campaign(store_url, "spring_sale", status="dry_run", dry_run=_report(
        dry_run=True, claimed=40, samples=[{"locale": "en", "subject": "Spring", "png": str(png)}]))
    cookies = {"_token": _token(auth_manager)}
    assert 'src="campaigns/spring_sale/en.png"' in httpx.get(f"{page}/", cookies=cookies).text
    got = httpx.get(f"{page}/campaigns/spring_sale/en.png", cookies=cookies)
    assert got.status_code == 200 and got.content == png.read_bytes()
    assert got.headers["content-type"] == "image/png"


def test_a_campaign_shows_its_real_run_before_its_rehearsal(auth_manager: Any, store_url: str,
                                                           page: str) -> None:
    """What was sent (the real run's ledger counts) heads a campaign that ran for real, with or
    without a dry run before it; a dry run alone reads as one. Statuses this page does not
    know show as stored."""
    png = {"locale": "en", "subject": "Hello", "png": "/nowhere/en.png"}
    _campaign(store_url, "real-only", status="partly_failed", real=_report(
        dry_run=False, claimed=42, samples=[png], ledger={"sent": 40, "failed": 2}))
    _campaign(store_url, "rehearsed", status="sent",
              dry_run=_report(dry_run=True, claimed=47),
              real=_report(dry_run=False, claimed=45, ledger={"sent": 45}))
    _campaign(store_url, "rehearsal", status="dry_run", dry_run=_report(dry_run=True, claimed=30))
    _campaign(store_url, "claimed-only", status="sending",
              real=_report(dry_run=False, claimed=20))
    got = httpx.get(f"{page}/", cookies={"_token": _token(auth_manager)})
    assert got.status_code == 200
    section = {s.split("</h3>")[0].split(" (")[0]: s
               for s in got.text.split("<h2>Campaigns</h2>")[1].split("<h3>")[1:]}

    real_only = section["real-only"]
    assert real_only.startswith("real-only (partly_failed, ")
    assert "Real run on 2026-11-16: audience 50, claimed 42; messages by status: sent 40, " \
           "failed 2." in real_only
    assert 'id="campaign-real-only"' in real_only and "Real run of real-only" in real_only
    assert 'src="campaigns/real-only/en.png"' in real_only
    assert "Real run on 2026-11-16: audience 50, claimed 45; messages by status: sent 45." \
        in section["rehearsed"]
    assert "would send" not in section["rehearsed"] and "dry-run report" in section["rehearsed"]
    assert "Dry run on 2026-11-16: audience 50, would send 30" in section["rehearsal"]
    assert "Real run on 2026-11-16: audience 50, claimed 20, estimated send time 3 s; no count" \
        in section["claimed-only"]
