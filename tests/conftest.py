"""Shared fixtures: databases for the store on both backends, and demo shops.

``store_url`` is parametrised over SQLite and PostgreSQL. PostgreSQL runs when
``TEST_DATABASE_URL`` is set (each test gets its own schema, dropped afterwards); without it the
PostgreSQL cases skip locally, and fail in CI (``CI=true``), where they must run.

``demo_shop`` is the demo shop a module asks for with ``pytestmark =
pytest.mark.demo_shop(customers=..., seed=..., as_of=...)``, built once per run (by the first
xdist worker to need it) for each set of arguments and shared read-only; ``shop_url`` is a
private copy of it that a test may change. ``airflow_sdk`` imports Airflow's task SDK without
touching ~/airflow.

``make test`` runs the suite on pytest-xdist workers (``-n 2 --dist loadgroup``, see
docs/testing.md). The scheduler below keeps each module's tests on one worker (its
module-scoped fixtures are built once; SPLIT_MODULES' tests go out one by one) and the modules
of one of ONE_WORKER_GROUPS on one worker; the modules with ``slow`` tests are handed out
first, so that the longest ones do not start last. Each worker has a PostgreSQL database of its
own (``_support.require_postgres``) and ports of its own (``_support.free_port``); demo shops
and the migrated Airflow database are made once per run and shared (``_support.made_once``).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import _support
import pytest
from _support import DemoShops, copy_sqlite, made_once, private_pg_schema

# Tests replay fixed past nights, and a replay checks implied consent against the day it runs
# (tend.config.today). A day before every test's night pins that to each night's next day, as
# when it ran on time, so what the suite decides does not change as the calendar moves on;
# the tests of the replay rule set their own day. Set here, Airflow's and Celery's processes
# that the tests start inherit it.
os.environ["TEND_TODAY"] = "2000-01-01"

#: Modules whose tests run on one xdist worker, one module after the other. "airflow-services":
#: the modules that start Airflow's long-running services (api-server, scheduler, workers):
#: two Airflow installations at once on a 2-core machine starve each other's heartbeats. A new
#: module that imports airflow_cluster must be listed here (collection fails otherwise). Not
#: the ``xdist_group`` mark: with pytest 9.2, xdist 3.8 cannot rewrite the node ids that carry
#: it, and the mark is silently ignored.
ONE_WORKER_GROUPS = {
    "airflow-services": (
        "tests/browser/test_in_chromium.py",
        "tests/integration/test_celery_cluster.py",
        "tests/integration/test_order_events.py",
    ),
}
_GROUP_OF = {module: group for group, modules in ONE_WORKER_GROUPS.items() for module in modules}

#: Long modules without module-scoped fixtures, whose tests are handed out one by one: both
#: workers share them instead of one worker finishing them alone at the end.
SPLIT_MODULES = frozenset({"tests/integration/test_delivery_kill.py"})


def _work_unit(nodeid: str) -> str:
    """What the scheduler hands a worker whole: the test's module, that module's group, or
    (SPLIT_MODULES) the test alone."""
    module = nodeid.split("::", 1)[0]
    return nodeid if module in SPLIT_MODULES else _GROUP_OF.get(module, module)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "demo_shop(customers, seed, as_of): the demo shop the module's tests read")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup`` (make test): each work unit of :func:`_work_unit` to one worker."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid)

    # The units go out in collection order (see below), not sorted by their test count.
    config.option.loadscopereorder = False
    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On xdist workers: the work units holding ``slow`` tests first, the others in their usual
    order (every worker sorts the same collection the same way, as xdist requires); a plain
    run keeps pytest's order. Everywhere: a module that starts an Airflow cluster must be in
    ONE_WORKER_GROUPS."""
    # Module paths as the scheduler sees them (_work_unit: the node id's prefix).
    clusters = {item.nodeid.split("::", 1)[0] for item in items
                if isinstance(item, pytest.Function) and hasattr(item.module, "airflow_cluster")}
    for path in sorted(clusters):
        if path not in _GROUP_OF:
            raise pytest.UsageError(
                f"{path} starts an Airflow cluster: add it to ONE_WORKER_GROUPS"
                "['airflow-services'] in tests/conftest.py, so that it never runs beside "
                "another one")
    if _support.XDIST_WORKER is None:
        return
    slow = {_work_unit(item.nodeid) for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: _work_unit(item.nodeid) not in slow)  # stable sort


@pytest.fixture(scope="session", autouse=True)
def _run_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Where the workers of this run share what is made once (``_support.made_once``): the
    run's base temporary directory, whose subdirectories are the workers' own."""
    base = tmp_path_factory.getbasetemp()
    _support.RUN_DIR[:] = [base.parent if _support.XDIST_WORKER else base]


@pytest.fixture(scope="session", autouse=True)
def _private_var_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """TEND_VAR_DIR in a folder of this process's own (its subprocesses inherit it): what a test
    leaves under the default state folder (an SMTP journal, a spool) must neither land in the
    checkout's var/, which ``make run`` uses, nor be read by a test on another worker."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEND_VAR_DIR", str(tmp_path_factory.mktemp("var")))
        yield


def pytest_sessionfinish(session: pytest.Session) -> None:
    _support.drop_worker_pg_database()


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
def demo_shops() -> DemoShops:
    """``demo_shops(customers=, seed=, as_of=)``: the URL of that demo shop (SQLite), generated
    on first use and shared by the whole run (every xdist worker); callers must not change it."""
    from tend.dev.demo import generate_demo_shop

    def demo_shop(*, customers: int, seed: int, as_of: dt.date) -> str:
        def make(folder: Path) -> None:
            generate_demo_shop(f"sqlite:///{folder / 'shop.db'}", customers=customers,
                               seed=seed, as_of=as_of)

        path = made_once(f"shop-{customers}-{seed}-{as_of.isoformat()}", make) / "shop.db"
        return f"sqlite:///{path}"

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
