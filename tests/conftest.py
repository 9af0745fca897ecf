"""Shared fixtures: databases for the store on both backends.

``store_url`` is parametrised over SQLite and PostgreSQL. PostgreSQL runs when
``TEST_DATABASE_URL`` is set (each test gets its own schema, dropped afterwards); without it the
PostgreSQL cases skip locally, and fail in CI (``CI=true``), where they must run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _support import private_pg_schema


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
