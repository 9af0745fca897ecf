"""The Tend page (tend_airflow.page) over real HTTP on a real store, behind Airflow's own login:
the simple auth manager's JWT in the UI's cookie, as the API server checks it."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import httpx
import pytest
from _support import make_program, make_registry, plan_test_night, serving

from tend.store import complaints
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
