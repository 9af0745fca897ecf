"""The Tend page: a FastAPI app the Airflow API server mounts (``plugins/tend_plugin.py``).

Airflow does not authenticate a plugin's app for it (a mounted app inherits none of the core
API's dependencies), so every route here depends on Airflow's own check: the JWT of the
logged-in user (the UI's ``_token`` cookie, or an ``Authorization: Bearer`` header), validated
by the configured auth manager, which must let the user see the website. No other scheme.

The figures come from ``tend.dashboard``; this module only draws them.
"""

from __future__ import annotations

import datetime as dt
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse

from tend.campaigns.form import NAME_PATTERN
from tend_airflow.page import render

#: A campaign name as the form accepts it (its own pattern, so every name it takes has its
#: samples served), and a locale as the templates folder names them.
_NAME = re.compile(NAME_PATTERN)
_LOCALE = re.compile(r"[a-z]{2}(?:[-_][A-Za-z]{2})?")


def airflow_login() -> Callable[..., None]:
    """Airflow's own dependency: an authenticated user allowed to see the website."""
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import requires_access_view

    return requires_access_view(AccessView.WEBSITE)


def page_store_url() -> str:
    """The store the DAGs use: the ``tend_store`` connection (read through the API server's
    secrets backends and metadata database), else TEND_STORE_URL."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection

    from tend import config
    from tend_airflow.connections import STORE_CONN_ID

    try:
        conn = Connection.get_connection_from_secrets(STORE_CONN_ID)
    except AirflowNotFoundException:
        return config.store_url()
    return config.store_url(config.sqlalchemy_url_from_connection(conn))


def create_app(store_url: Callable[[], str] = page_store_url,
               login: Callable[..., Any] | None = None) -> FastAPI:
    """The page's app. ``store_url`` is called on each request (a changed connection needs no
    restart); ``login``: the authentication dependency (default Airflow's, ``airflow_login``)."""
    app = FastAPI(title="Tend", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(login or airflow_login())])

    @app.get("/", response_class=HTMLResponse)
    def page(days: int = Query(30, ge=1, le=366)) -> HTMLResponse:
        from tend.dashboard import read_dashboard
        from tend.programs.registry import load_registry

        caps = load_registry().caps
        board = read_dashboard(store_url(), days=days, caps=caps)
        return HTMLResponse(render.page(board))

    @app.get("/gallery", response_class=HTMLResponse)
    def gallery() -> HTMLResponse:
        return HTMLResponse(render.gallery(_previews()))

    @app.get("/campaigns/{name}/{locale}.png")
    def sample_png(name: str, locale: str) -> FileResponse:
        return FileResponse(_sample(store_url(), name, locale), media_type="image/png")

    return app


def _sample(store_url: str, name: str, locale: str) -> Path:
    """The PNG sample of campaign ``name`` in ``locale``, as its reports name it (the real
    run's first, as the page shows it, then the dry run's); only files under the campaigns'
    samples folder are served."""
    from tend import config
    from tend.store import campaigns
    from tend.store.db import connect

    if not _NAME.fullmatch(name) or not _LOCALE.fullmatch(locale):
        raise HTTPException(404)
    with connect(store_url).connect() as conn:
        row = campaigns.read(conn, name)
    reports = [(row or {}).get(key) or {} for key in ("report", "dry_run_report")]
    root = (config.var_dir() / "campaigns").resolve()
    for sample in (s for report in reports for s in report.get("samples") or []):
        if sample.get("locale") == locale and sample.get("png"):
            path = Path(sample["png"]).resolve()
            if path.is_relative_to(root) and path.is_file():
                return path
    raise HTTPException(404)


def _previews() -> list[dict[str, Any]]:
    """Every enabled program's email in every language, for the sample customer."""
    from tend import messages
    from tend.config import ShopSettings
    from tend.dev.preview import make_preview
    from tend.programs.registry import load_registry

    settings = ShopSettings.from_env()
    renderer = messages.default_renderer(settings)
    out = []
    with tempfile.TemporaryDirectory(prefix="tend-gallery-") as tmp:
        for program in load_registry().enabled():
            for locale in renderer.locales(regional=False):
                try:
                    p = make_preview(program.name, renderer=renderer, settings=settings,
                                     out_dir=Path(tmp), locale=locale, as_of=dt.date.today())
                except Exception as exc:
                    out.append({"program": program.name, "locale": locale,
                                "error": f"{type(exc).__name__}: {exc}"})
                    continue
                out.append({"program": program.name, "template": p.template, "locale": locale,
                            "subject": p.email.subject, "html": p.email.html})
    return out

