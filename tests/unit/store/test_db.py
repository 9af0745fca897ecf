"""The store's schema comes from Alembic, on both backends, and is checked before use."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect

from tend.errors import ConfigError
from tend.store import migrate
from tend.store.db import connect, current_revision, head_revision, require_current
from tend.store.tables import metadata


def test_migrations_create_exactly_the_described_tables(store_url: str) -> None:
    tables = set(inspect(connect(store_url)).get_table_names())
    assert set(metadata.tables) <= tables
    assert "tend_alembic_version" in tables
    assert current_revision(store_url) == head_revision()


def test_migrate_is_idempotent(store_url: str) -> None:
    assert migrate(store_url) == head_revision()
    assert migrate(store_url) == head_revision()


def test_columns_match_the_core_description(store_url: str) -> None:
    insp = inspect(connect(store_url))
    for name, table in metadata.tables.items():
        assert {c["name"] for c in insp.get_columns(name)} == set(table.columns.keys()), name


def test_an_unmigrated_store_is_refused_with_the_fix(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    with pytest.raises(ConfigError, match="run `tend migrate`"):
        require_current(url)
