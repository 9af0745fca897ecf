"""Shared fixtures: databases for the store on both backends.

``store_url`` is parametrised over SQLite and PostgreSQL. PostgreSQL runs when
``TEST_DATABASE_URL`` is set (each test gets its own schema, dropped afterwards); without it the
PostgreSQL cases skip locally, and fail in CI (``CI=true``), where they must run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_URL = os.environ.get("TEST_DATABASE_URL")


def require_postgres() -> str:
    if PG_URL:
        return PG_URL
    message = "TEST_DATABASE_URL is not set (e.g. postgresql://postgres@127.0.0.1:5432/test)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"PostgreSQL tests must run in CI: {message}")
    pytest.skip(message)


@contextmanager
def private_pg_schema() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh, private schema, dropped on exit."""
    base = require_postgres()
    schema = f"tend_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        from tend.store.db import connect

        # Close the pooled connections the test opened before dropping their schema.
        connect(url.render_as_string(hide_password=False)).dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    """A private PostgreSQL schema for one test."""
    with private_pg_schema() as url:
        yield url


def copy_sqlite(src_url: str, dst: Path) -> str:
    """A private copy of a SQLite database (WAL included), so a test may change it freely."""
    import sqlite3

    with sqlite3.connect(src_url.removeprefix("sqlite:///")) as src, \
            sqlite3.connect(dst) as copy:
        src.backup(copy)
    return f"sqlite:///{dst}"


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
