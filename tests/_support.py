"""Helpers shared by test modules (import as ``from _support import ...``).

Kept out of conftest.py on purpose: several conftest modules exist in this tree, so
``from conftest import ...`` would import whichever pytest loaded first.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

#: The project checkout, and the email templates in it.
PROJECT = Path(__file__).resolve().parents[1]
TEMPLATES = PROJECT / "templates" / "email"

PG_URL = os.environ.get("TEST_DATABASE_URL")


def require_postgres() -> str:
    """The PostgreSQL test URL; skip without it locally, fail without it in CI."""
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


@contextmanager
def sqlite_session(path: str | Path) -> Iterator[sqlite3.Connection]:
    """A sqlite3 connection committed at the end of the block and closed there — not when the
    garbage collector gets to it: closed later, while the code under test reads the same
    WAL database through ADBC's own copy of SQLite, it would take itself for the last
    connection and checkpoint and truncate the files under the other copy."""
    con = sqlite3.connect(path)
    try:
        with con:
            yield con
    finally:
        con.close()


def copy_sqlite(src_url: str, dst: Path) -> str:
    """A private copy of a SQLite database (WAL included), so a test may change it freely."""
    with sqlite_session(src_url.removeprefix("sqlite:///")) as src, \
            sqlite_session(dst) as copy:
        src.backup(copy)
    return f"sqlite:///{dst}"
