"""The Tend page in the Airflow UI (the app under /tend, its entry in the navigation), and
the refusal of Tend runs dated in the future at the trigger.

Wiring only: the app (and Airflow's login in front of it) is ``tend_airflow.page.app``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin

from tend_airflow.page.app import create_app
from tend_airflow.page.future import RefuseFutureRuns


class TendPlugin(AirflowPlugin):
    name = "tend"
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {"app": create_app(), "url_prefix": "/tend", "name": "Tend page"}]
    fastapi_root_middlewares: ClassVar[list[dict[str, Any]]] = [
        {"middleware": RefuseFutureRuns, "name": "Tend: refuse runs dated in the future"}]
    # ``href`` without a leading slash: relative to the UI's base URL, so it works behind a
    # proxy that serves Airflow under a path.
    external_views: ClassVar[list[dict[str, Any]]] = [
        {"name": "Tend", "href": "tend/", "destination": "nav", "url_route": "tend"}]
