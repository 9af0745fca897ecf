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


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def blank_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'blank.db'}"
    return str(request.getfixturevalue("pg_schema_url"))


def test_contexts_move_out_of_the_ledger_and_back(blank_url: str) -> None:
    """0006 moves each claimed message's context into context_batches (and back on downgrade)."""
    import datetime as dt

    from alembic import command
    from sqlalchemy import text

    from tend.store import ledger
    from tend.store.db import _alembic_config

    def to(revision: str, down: bool = False) -> None:
        cfg = _alembic_config()
        with connect(blank_url).begin() as conn:
            cfg.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(cfg, revision)

    to("0004")
    mid = ledger.message_id_for("C1", "winback", "e")
    with connect(blank_url).begin() as conn:
        conn.execute(text(
            "INSERT INTO contact_ledger (message_id, customer_id, program, occurrence, kind, "
            "status, as_of, run_id, batch_id, context, claimed_at) VALUES (:m, 'C1', 'winback', "
            "'e', 'marketing', 'claimed', :d, 'r', 3, :c, :t)"),
            {"m": mid, "d": dt.date(2026, 11, 20), "c": '{"template": "winback"}',
             "t": dt.datetime(2026, 11, 20, tzinfo=dt.UTC)})
    to("head")
    with connect(blank_url).connect() as conn:
        assert ledger.contexts_of(conn, [mid]) == {mid: '{"template": "winback"}'}
        assert [r.context for r in ledger.next_claimed(conn, dt.date(2026, 11, 20), 3, 10)] \
            == ['{"template": "winback"}']
    to("0004", down=True)
    with connect(blank_url).connect() as conn:
        assert conn.execute(text("SELECT context FROM contact_ledger")).scalar_one() \
            == '{"template": "winback"}'
