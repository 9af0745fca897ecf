"""Where Tend finds its databases, outbox and settings when it runs outside Airflow.

Resolution order (the README's configuration contract):

1. an explicit argument (the CLI's ``--db`` / ``--store`` flags),
2. the environment: ``TEND_SHOP_URL``, ``TEND_STORE_URL``, ``TEND_DELIVERY``, ``TEND_OUTBOX_DIR``,
3. embedded defaults under ``var/`` (SQLite files and a file outbox), so a fresh clone works.

Inside Airflow the adapter layer (``tend_airflow``) resolves the Airflow connections
``tend_shop``/``tend_store`` and the Variable ``tend_delivery`` first and hands plain values to
the functions here; this module never imports airflow.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.engine import URL, make_url

from tend.errors import ConfigError

#: The project root when running from a checkout (include/tend/config.py -> ../../).
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def var_dir() -> Path:
    """The writable state folder: ``TEND_VAR_DIR`` or ``<project>/var``."""
    return Path(os.environ.get("TEND_VAR_DIR", PROJECT_ROOT / "var")).resolve()


def default_shop_url() -> str:
    return f"sqlite:///{var_dir() / 'shop.db'}"


def default_store_url() -> str:
    return f"sqlite:///{var_dir() / 'store.db'}"


def shop_url(explicit: str | None = None) -> str:
    return _validated(explicit or os.environ.get("TEND_SHOP_URL") or default_shop_url(), "shop")


def store_url(explicit: str | None = None) -> str:
    return _validated(
        explicit or os.environ.get("TEND_STORE_URL") or default_store_url(), "store"
    )


DELIVERY_BACKENDS = ("outbox", "smtp", "sendgrid")


def delivery_backend(explicit: str | None = None) -> str:
    name = (explicit or os.environ.get("TEND_DELIVERY") or "outbox").strip().lower()
    if name not in DELIVERY_BACKENDS:
        raise ConfigError(
            f"unknown delivery backend {name!r}; set TEND_DELIVERY (or the Airflow Variable "
            f"tend_delivery) to one of: {', '.join(DELIVERY_BACKENDS)}"
        )
    return name


def outbox_dir(explicit: str | Path | None = None) -> Path:
    return Path(explicit or os.environ.get("TEND_OUTBOX_DIR") or var_dir() / "outbox").resolve()


def templates_dir() -> Path:
    return Path(os.environ.get("TEND_TEMPLATES_DIR", PROJECT_ROOT / "templates" / "email"))


def unsubscribe_secret() -> str:
    """The HMAC key for unsubscribe links and voucher codes.

    Production sets ``TEND_SECRET_KEY``; the embedded default is derived from the project path
    so that a demo works out of the box, and is announced as unsuitable in the README.
    """
    return os.environ.get("TEND_SECRET_KEY") or f"tend-demo-secret:{PROJECT_ROOT}"


@dataclass(frozen=True)
class ShopSettings:
    """Who the mail is from; CAN-SPAM and CASL require the sender's identity and address."""

    name: str
    postal_address: str
    from_email: str
    from_name: str
    reply_to: str | None
    base_url: str
    default_locale: str
    currency: str
    #: The shop's storefront (``TEND_WEBSITE_URL``); when set, emails show a button to it.
    website_url: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ShopSettings:
        env = os.environ if env is None else env

        def get(key: str, default: str) -> str:
            # An empty value counts as unset: docker compose passes `${VAR:-}` through as "".
            return (env.get(key) or "").strip() or default

        name = get("TEND_SHOP_NAME", "Maison Verte")
        return cls(
            name=name,
            postal_address=get(
                "TEND_SHOP_ADDRESS", "1234 rue Saint-Denis, Montréal QC H2X 3K8, Canada"
            ),
            from_email=get("TEND_FROM_EMAIL", "hello@maisonverte.example"),
            from_name=get("TEND_FROM_NAME", name),
            reply_to=get("TEND_REPLY_TO", "") or None,
            base_url=get("TEND_BASE_URL", "http://localhost:8080/tend").rstrip("/"),
            default_locale=get("TEND_DEFAULT_LOCALE", "en"),
            currency=get("TEND_CURRENCY", "CAD"),
            website_url=get("TEND_WEBSITE_URL", "") or None,
        )


class ConnectionLike(Protocol):
    """The fields of an Airflow Connection that describe a database (duck-typed on purpose)."""

    conn_type: str | None
    host: str | None
    schema: str | None
    login: str | None
    password: str | None
    port: int | None

    @property
    def extra_dejson(self) -> dict[str, Any]: ...


# Airflow normalises URI schemes into conn_types ("postgresql" -> "postgres"); map them back.
_DRIVERS = {"postgres": "postgresql", "postgresql": "postgresql", "sqlite": "sqlite",
            "mysql": "mysql", "mssql": "mssql", "oracle": "oracle"}


# Connection extras that are libpq/driver parameters; other extras (Airflow's own flags such as
# "iam" or "cursor") must not leak into the URL, where the driver would reject them.
_DRIVER_PARAMS = frozenset({
    "sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout", "application_name",
    "options", "target_session_attrs", "charset",
})


def sqlalchemy_url_from_connection(conn: ConnectionLike) -> str:
    """Turn an Airflow connection back into the SQLAlchemy URL the user meant.

    ``AIRFLOW_CONN_TEND_SHOP=sqlite:////abs/shop.db`` arrives as conn_type "sqlite" with the
    path in ``schema``; ``postgresql://u@h:5432/db`` arrives as conn_type "postgres". An extra
    ``{"sqlalchemy_url": "..."}`` wins over the fields for anything unusual.
    """
    extra = dict(conn.extra_dejson or {})
    if extra.get("sqlalchemy_url"):
        return str(extra["sqlalchemy_url"])
    conn_type = (conn.conn_type or "").strip()
    if not conn_type:
        raise ConfigError("the connection has no type; give it a URI like sqlite:////abs/shop.db")
    driver = _DRIVERS.get(conn_type, conn_type.replace("_", "+"))
    if driver == "sqlite":
        path = conn.schema or conn.host or ""
        return "sqlite://" if not path else f"sqlite:///{path}"
    query = {k: str(v) for k, v in extra.items()
             if k in _DRIVER_PARAMS and isinstance(v, str | int) and not isinstance(v, bool)}
    url = URL.create(
        driver,
        username=conn.login or None,
        password=conn.password or None,
        host=conn.host or None,
        port=conn.port or None,
        database=conn.schema or None,
        query=query,
    )
    return url.render_as_string(hide_password=False)


def _validated(url: str, what: str) -> str:
    try:
        make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError, ValueError...
        raise ConfigError(
            f"the {what} database URL {mask_url(url)!r} is not a SQLAlchemy URL ({exc}); "
            f"use e.g. sqlite:////abs/path/{what}.db or postgresql://user@host:5432/db"
        ) from exc
    return url


def mask_url(url: str) -> str:
    """A URL safe for logs: the password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable url>"
