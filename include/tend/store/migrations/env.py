"""Alembic environment for the contact store.

Run through ``tend.store.migrate`` (or ``tend migrate``), which passes an open connection in
``config.attributes["connection"]``; the version table is ``tend_alembic_version`` so the store
can share a PostgreSQL database with other applications (Airflow's own metadata included).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from tend.store.tables import metadata

VERSION_TABLE = "tend_alembic_version"

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        _run(conn)


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `tend migrate --store URL`")
run_migrations_online()
