"""Shared fixtures: databases for the store on both backends, and demo shops.

``store_url`` is parametrised over SQLite and PostgreSQL. PostgreSQL runs when
``TEST_DATABASE_URL`` is set (each test gets its own schema, dropped afterwards); without it the
PostgreSQL cases skip locally, and fail in CI (``CI=true``), where they must run.

``demo_shop`` is the demo shop a module asks for with
``pytestmark = pytest.mark.demo_shop(customers=..., seed=..., as_of=...)``, built once per
session for each set of arguments and shared read-only; ``shop_url`` is a private copy of it
that a test may change. ``airflow_sdk`` imports Airflow's task SDK without touching ~/airflow.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from _support import DemoShops, copy_sqlite, private_pg_schema


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "demo_shop(customers, seed, as_of): the demo shop the module's tests read")


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    """A private PostgreSQL schema for one test."""
    with private_pg_schema() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated contact store on each backend."""
    from tend.store import migrate

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("pg_schema_url")
    migrate(url)
    return url


@pytest.fixture(scope="module")
def airflow_sdk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """``airflow.sdk``, imported with AIRFLOW_HOME in a temporary folder when this process has
    not imported Airflow yet (Airflow reads AIRFLOW_HOME once, on first import)."""
    with pytest.MonkeyPatch.context() as mp:
        if "airflow" not in sys.modules:
            mp.setenv("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))
            mp.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        import airflow.sdk

        yield airflow.sdk


@pytest.fixture(scope="session")
def demo_shops(tmp_path_factory: pytest.TempPathFactory) -> DemoShops:
    """``demo_shops(customers=, seed=, as_of=)``: the URL of that demo shop (SQLite), generated
    on first use and shared by the whole session; callers must not change it."""
    from tend.dev.demo import generate_demo_shop

    built: dict[tuple[int, int, dt.date], str] = {}

    def demo_shop(*, customers: int, seed: int, as_of: dt.date) -> str:
        key = (customers, seed, as_of)
        if key not in built:
            url = f"sqlite:///{tmp_path_factory.mktemp('shop') / 'shop.db'}"
            generate_demo_shop(url, customers=customers, seed=seed, as_of=as_of)
            built[key] = url
        return built[key]

    return demo_shop


@pytest.fixture
def demo_shop(request: pytest.FixtureRequest, demo_shops: DemoShops) -> str:
    """The demo shop of the test's ``demo_shop`` mark, shared: read it, never change it."""
    mark = request.node.get_closest_marker("demo_shop")
    if mark is None:
        raise pytest.UsageError(
            f"{request.node.nodeid} uses demo_shop without a mark; add "
            "pytestmark = pytest.mark.demo_shop(customers=..., seed=..., as_of=...)")
    return demo_shops(**mark.kwargs)


@pytest.fixture
def shop_url(demo_shop: str, tmp_path: Path) -> str:
    """A private copy of the demo shop, so a test may add or change rows in it."""
    return copy_sqlite(demo_shop, tmp_path / "shop.db")
