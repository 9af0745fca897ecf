"""Airflow connections as Tend's database URLs.

``tend_shop`` and ``tend_store`` name the shop and the store; without them Tend falls back to
its environment settings (``tend.config``), so the same code runs inside and outside Airflow.
"""

from __future__ import annotations

from typing import Any

from tend import config

SHOP_CONN_ID = "tend_shop"
STORE_CONN_ID = "tend_store"


def connection(conn_id: str) -> Any | None:
    """The Airflow connection ``conn_id``, or None when it is not defined."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return Connection.get(conn_id)
    except AirflowNotFoundException:
        return None


def _conn_url(conn_id: str) -> str | None:
    """The connection's SQLAlchemy URL, by ``tend.config.sqlalchemy_url_from_connection``.

    Not common-sql's ``DbApiHook``: its ``sqlalchemy_url`` is abstract (only the postgres and
    sqlite providers' hooks implement it, and Tend installs neither), and its fallback
    ``get_uri`` renders Airflow's conn_type ``postgres`` as the scheme, which SQLAlchemy 2
    cannot load, and copies every extra, the ``sqlalchemy_url`` override included, into the
    query string. The domain function handles both and needs no provider.
    """
    conn = connection(conn_id)
    return None if conn is None else config.sqlalchemy_url_from_connection(conn)


def shop_url() -> str:
    """The ``tend_shop`` connection, else TEND_SHOP_URL, else the embedded demo shop."""
    return config.shop_url(_conn_url(SHOP_CONN_ID))


def store_url() -> str:
    """The ``tend_store`` connection, else TEND_STORE_URL, else the embedded SQLite store."""
    return config.store_url(_conn_url(STORE_CONN_ID))
