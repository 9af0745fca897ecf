"""Where Tend finds its databases, outbox and settings when it runs outside Airflow.

Resolution order (docs/configuration.md):

1. an explicit argument (the CLI's ``--db`` / ``--store`` flags),
2. the environment: ``TEND_SHOP_URL``, ``TEND_STORE_URL``, ``TEND_DELIVERY``, ``TEND_OUTBOX_DIR``,
3. embedded defaults under ``var/`` (SQLite files and a file outbox), so a fresh clone works.

Inside Airflow the adapter layer (``tend_airflow``) resolves the Airflow connections
``tend_shop``/``tend_store`` and the Variable ``tend_delivery`` first and hands plain values to
the functions here; this module never imports airflow.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import urllib.parse
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


def spool_dir(explicit: str | Path | None = None) -> Path:
    """``TEND_SPOOL_DIR``: where ``tend serve`` keeps what arrives while the store is down
    (default ``var/spool``; on a persistent volume in production)."""
    return Path(explicit or os.environ.get("TEND_SPOOL_DIR") or var_dir() / "spool").resolve()


def templates_dir() -> Path:
    return Path(os.environ.get("TEND_TEMPLATES_DIR", PROJECT_ROOT / "templates" / "email"))


def pages_templates_dir() -> Path:
    """The customer pages' templates (``tend serve``), shipped with Tend: a shop restyles its
    emails (``TEND_TEMPLATES_DIR``) without having to copy these."""
    return PROJECT_ROOT / "templates" / "pages"


def unsubscribe_secret() -> str:
    """The HMAC key for unsubscribe links and voucher codes.

    Production sets ``TEND_SECRET_KEY``; the embedded default is derived from the project path
    so that a demo works out of the box, and is announced as unsuitable in docs/configuration.md.
    """
    return os.environ.get("TEND_SECRET_KEY") or f"tend-demo-secret:{PROJECT_ROOT}"


def environment() -> Mapping[str, str]:
    """The process environment, for the settings classes that parse a family of variables
    (``TEND_SENDGRID_*``, ``TEND_SMTP_URL``); they take any mapping so tests can pass their own."""
    return os.environ


def delivery_pinned() -> bool:
    """Whether ``TEND_DELIVERY`` is set: a deployment that pins it wins over the Variable."""
    return bool((os.environ.get("TEND_DELIVERY") or "").strip())


DEFAULT_TIMEZONE = "America/Toronto"


def today() -> dt.date:
    """``TEND_TODAY`` (an ISO date), else today's date in UTC: the day a message planned now
    leaves, which a replay of a past night checks consent against (implied consent counts
    back from the day a message is sent). Set it only to rehearse as if on another day."""
    value = (os.environ.get("TEND_TODAY") or "").strip()
    if not value:
        return dt.datetime.now(dt.UTC).date()
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"TEND_TODAY={value!r} is not a date; use YYYY-MM-DD, or unset it "
                          "for today's date") from None


def business_timezone() -> str:
    """``TEND_TIMEZONE``: the shop's timezone, for the nightly schedule and for the quiet hours
    of customers whose own timezone is unknown."""
    name = (os.environ.get("TEND_TIMEZONE") or "").strip() or DEFAULT_TIMEZONE
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # unknown, malformed
        raise ConfigError(
            f"TEND_TIMEZONE={name!r} is not an IANA timezone ({exc}); use e.g. America/Toronto"
        ) from exc
    return name


def programs_file() -> Path | None:
    """``TEND_PROGRAMS_FILE``: a programs.yaml to use instead of the bundled one (None: bundled)."""
    value = (os.environ.get("TEND_PROGRAMS_FILE") or "").strip()
    return Path(value) if value else None


def claim_work_mem() -> str:
    """``TEND_CLAIM_WORK_MEM``: PostgreSQL ``work_mem`` for the ledger claim's transaction.

    The server default (4MB) makes a million-candidate join spill to disk in many batches.
    """
    value = (os.environ.get("TEND_CLAIM_WORK_MEM") or "").strip() or "256MB"
    if not re.fullmatch(r"\d+\s*(kB|MB|GB|TB)?", value):
        raise ConfigError(
            f"TEND_CLAIM_WORK_MEM={value!r} is not a PostgreSQL memory size; use e.g. 256MB or 1GB"
        )
    return value


def product_url_pattern() -> str | None:
    """``TEND_PRODUCT_URL``: the storefront's product page, with ``{sku}`` where the sku goes."""
    value = (os.environ.get("TEND_PRODUCT_URL") or "").strip()
    if value and "{sku}" not in value:
        raise ConfigError(
            f"TEND_PRODUCT_URL={value!r} has no {{sku}}; use e.g. https://shop.example/p/{{sku}}"
        )
    return value or None


def product_url(pattern: str, sku: str) -> str:
    """The product page of ``sku`` in ``pattern`` (``TEND_PRODUCT_URL``): the sku is
    percent-encoded, so one holding ``/``, ``?``, ``&``, ``#`` or a space still names its own
    page, and any other brace in the pattern is kept as written."""
    return pattern.replace("{sku}", urllib.parse.quote(str(sku), safe=""))


def chromium_path() -> str | None:
    """``TEND_CHROMIUM``: the browser the previews and browser tests use (None: search PATH)."""
    return (os.environ.get("TEND_CHROMIUM") or "").strip() or None


def sendgrid_uvloop() -> bool:
    """``TEND_SENDGRID_UVLOOP=0`` runs the SendGrid sender on asyncio's loop, not uvloop."""
    return (os.environ.get("TEND_SENDGRID_UVLOOP") or "1").strip() != "0"


#: Where ``tend serve`` listens by default (``make serve``); the emails' links point at it.
DEFAULT_SERVE_PORT = 8090
DEFAULT_BASE_URL = f"http://localhost:{DEFAULT_SERVE_PORT}"
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def public_base_url(value: str) -> str:
    """``TEND_BASE_URL`` checked: the public address of ``tend serve``, https unless it is this
    machine (a customer's unsubscribe click must not travel in clear text, and Gmail and Yahoo
    ignore plain-http one-click links)."""
    url = value.strip().rstrip("/")
    try:
        parts = _scheme_and_host(url)
    except ValueError as exc:
        raise ConfigError(f"TEND_BASE_URL={value!r} is not a URL ({exc}); use e.g. "
                          "https://tend.shop.example") from exc
    scheme, host = parts
    if scheme == "https" or (scheme == "http" and host in _LOCAL_HOSTS):
        return url
    raise ConfigError(
        f"TEND_BASE_URL={value!r} must be an https:// URL (plain http only for localhost): it "
        "is where customers' unsubscribe, preferences and survey links go; put tend serve "
        "behind a TLS reverse proxy (docs/listen.md) and give its public https address"
    )


def _scheme_and_host(url: str) -> tuple[str, str]:
    """The scheme and host of an http(s) URL, lower-cased; ValueError for anything else."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("expected http(s)://host[:port][/path]")
    return parts.scheme.lower(), parts.hostname.lower()


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
            base_url=public_base_url(get("TEND_BASE_URL", DEFAULT_BASE_URL)),
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


def sqlite_file(url: str) -> str | None:
    """The file of a SQLite database URL (None for other databases and in-memory SQLite): the
    shop reader and the store's bulk paths take their fast ways only for a file."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return u.database


def mask_url(url: str) -> str:
    """A URL safe for logs: the password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable url>"


def staff_email() -> str:
    """``TEND_STAFF_EMAIL``: the shop's staff address, where the daily complaints digest goes."""
    from tend.programs.consent import is_valid_email

    value = (os.environ.get("TEND_STAFF_EMAIL") or "").strip()
    if not value:
        raise ConfigError("TEND_STAFF_EMAIL is not set: the complaints digest needs the staff "
                          "address to write to; set it, e.g. TEND_STAFF_EMAIL=service@shop.example")
    if not is_valid_email(value):
        raise ConfigError(f"TEND_STAFF_EMAIL={value!r} is not an email address; "
                          "use e.g. service@shop.example")
    return value


# -- SendGrid's Event Webhook and suppression lists (tend serve, tend suppressions) -----------

#: Seconds a signed webhook's timestamp may differ from this machine's clock: wider than a
#: few retries' delay, narrower than what would let a captured request be replayed for long.
WEBHOOK_TOLERANCE_SECONDS = 600


@dataclass(frozen=True)
class EnvConnection:
    """An Airflow connection read from its ``AIRFLOW_CONN_<ID>`` variable, without Airflow
    (``tend serve`` runs apart from it); the fields :class:`ConnectionLike` names."""

    conn_type: str | None = None
    host: str | None = None
    schema: str | None = None
    login: str | None = None
    password: str | None = None
    port: int | None = None
    extra: Mapping[str, Any] | None = None

    @property
    def extra_dejson(self) -> dict[str, Any]:
        return dict(self.extra or {})


def env_connection(conn_id: str, env: Mapping[str, str] | None = None) -> EnvConnection | None:
    """The connection ``conn_id`` from ``AIRFLOW_CONN_<ID>`` in either form Airflow accepts:
    JSON (``{"conn_type": ..., "password": ..., "extra": {...}}``) or a URI whose query holds
    the extras (or one ``__extra__`` JSON parameter). None when the variable is unset."""
    import json
    from urllib.parse import parse_qsl, unquote, urlsplit

    env = os.environ if env is None else env
    name = f"AIRFLOW_CONN_{conn_id.upper()}"
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    bad = ConfigError(f"{name} is neither a connection URI nor JSON; use e.g. "
                      f"{name}='{{\"conn_type\": \"sendgrid\", \"password\": \"SG.xxx\", "
                      "\"extra\": {\"webhook_public_key\": \"MFkw...\"}}'")
    if raw.startswith("{"):
        try:
            doc = json.loads(raw)
        except ValueError:
            raise bad from None
        extra = doc.get("extra") or {}
        if isinstance(extra, str):
            try:
                extra = json.loads(extra) if extra.strip() else {}
            except ValueError:
                raise bad from None
        if not isinstance(extra, dict):
            raise bad
        port = doc.get("port")
        return EnvConnection(conn_type=doc.get("conn_type"), host=doc.get("host"),
                             schema=doc.get("schema"), login=doc.get("login"),
                             password=doc.get("password"),
                             port=int(port) if port not in (None, "") else None, extra=extra)
    parts = urlsplit(raw)
    if not parts.scheme:
        raise bad
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    extra_doc: dict[str, Any] = dict(query)
    if "__extra__" in query:
        try:
            loaded = json.loads(query["__extra__"])
        except ValueError:
            raise bad from None
        extra_doc = loaded if isinstance(loaded, dict) else {}
    try:
        port_number = parts.port
    except ValueError:
        raise bad from None
    return EnvConnection(
        conn_type=parts.scheme.replace("-", "_"), host=unquote(parts.hostname or "") or None,
        schema=unquote(parts.path.lstrip("/")) or None,
        login=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        port=port_number, extra=extra_doc)


def sendgrid_webhook_key(env: Mapping[str, str] | None = None) -> str | None:
    """``TEND_SENDGRID_WEBHOOK_KEY``, else the ``sendgrid_default`` connection's extra
    ``webhook_public_key`` (from ``AIRFLOW_CONN_SENDGRID_DEFAULT``): the Signed Event Webhook's
    verification key, the base64 text SendGrid shows (PEM armour accepted). None: unset."""
    env = os.environ if env is None else env
    value = (env.get("TEND_SENDGRID_WEBHOOK_KEY") or "").strip()
    if not value:
        conn = env_connection("sendgrid_default", env)
        value = str((conn.extra_dejson.get("webhook_public_key") if conn else None) or "")
    value = re.sub(r"-----(BEGIN|END) PUBLIC KEY-----|\s+", "", value)
    return value or None


# -- Scale-out settings (the claim's batch size, the send task's retry delay) ----------------

DEFAULT_CLAIM_BATCH_SIZE = 5000
DEFAULT_SEND_RETRY_DELAY = 120
DEFAULT_SEND_TASKS_PER_RUN = 4


def _positive_int(name: str, default: int, example: str) -> int:
    value = (os.environ.get(name) or "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{name}={value!r} is not a positive whole number; use e.g. {example}")
    return int(value)


def claim_batch_size() -> int:
    """``TEND_CLAIM_BATCH_SIZE``: messages per claimed batch, the unit ``send`` is mapped over
    (one Airflow task each): smaller batches spread a night over more workers."""
    return _positive_int("TEND_CLAIM_BATCH_SIZE", DEFAULT_CLAIM_BATCH_SIZE, "1000")


def send_retry_delay() -> int:
    """``TEND_SEND_RETRY_DELAY``: seconds Airflow waits before retrying a failed ``send`` task
    (read when the DAG file is parsed). A retry of a batch whose worker died sends only what is
    still claimed, so a short delay only gets the night done sooner."""
    return _positive_int("TEND_SEND_RETRY_DELAY", DEFAULT_SEND_RETRY_DELAY, "30")


def send_tasks_per_run() -> int:
    """``TEND_SEND_TASKS_PER_RUN``: how many send batches of one ``tend_programs`` run go at
    once (the task's ``max_active_tis_per_dagrun``, read when the DAG file is parsed). The
    ``tend_send`` pool bounds every run together; this bounds one night, so a night never takes
    every slot from a campaign. Raise both when workers are added (docs/capacity.md)."""
    return _positive_int("TEND_SEND_TASKS_PER_RUN", DEFAULT_SEND_TASKS_PER_RUN, "8")


# -- send leases and recovery (tend.delivery.engine) -------------------------------------------

DEFAULT_SEND_LEASE_SECONDS = 120.0


def send_lease_seconds() -> float:
    """``TEND_SEND_LEASE_SECONDS``: how long a send worker's lease on its batch lasts without a
    heartbeat (it renews it every quarter of that). A retry takes the batch over only once the
    lease has expired, or at once when the holder ran on the same host and is gone."""
    raw = (os.environ.get("TEND_SEND_LEASE_SECONDS") or "").strip()
    if not raw:
        return DEFAULT_SEND_LEASE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.5 <= value <= 86_400:
        raise ConfigError(f"TEND_SEND_LEASE_SECONDS={raw!r} must be a number of seconds between "
                          "0.5 and 86400 (default 120)")
    return value


def smtp_journal_dir(explicit: str | Path | None = None) -> Path:
    """``TEND_SMTP_JOURNAL_DIR``: where the SMTP backend journals which messages entered DATA,
    so the next attempt after a crash can send again what never started (default
    ``var/smtp-journal``; local to the worker's host)."""
    return Path(explicit or os.environ.get("TEND_SMTP_JOURNAL_DIR")
                or var_dir() / "smtp-journal").resolve()


# -- Order events (tend publish-order, the tend_events DAG's watcher) ------------------------

#: The Airflow connection the tend_events watcher subscribes with (a Redis connection:
#: ``redis://host:6379?db=0``); ``tend publish-order`` falls back to it.
ORDER_EVENTS_CONN_ID = "tend_order_events"
DEFAULT_ORDER_EVENTS_CHANNEL = "tend:orders"


def order_events_channel() -> str:
    """``TEND_ORDER_EVENTS_CHANNEL``: the Redis pub/sub channel of "order placed" events (read
    when the tend_events DAG file is parsed, and by ``tend publish-order``)."""
    value = (os.environ.get("TEND_ORDER_EVENTS_CHANNEL") or "").strip()
    if not value:
        return DEFAULT_ORDER_EVENTS_CHANNEL
    if any(ch.isspace() for ch in value) or any(ch in value for ch in "*?["):
        raise ConfigError(f"TEND_ORDER_EVENTS_CHANNEL={value!r} must be one channel name "
                          "without spaces or glob characters; use e.g. shop1:orders")
    return value


def order_events_url() -> str:
    """``TEND_ORDER_EVENTS_URL`` (``redis://host:6379/0``), else the Airflow connection
    ``tend_order_events`` the watcher uses, so a deployment names its Redis once."""
    value = (os.environ.get("TEND_ORDER_EVENTS_URL") or "").strip()
    if value:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"TEND_ORDER_EVENTS_URL={mask_url(value)} is not a Redis URL; "
                              "use e.g. redis://127.0.0.1:6379/0")
        return value
    conn = env_connection(ORDER_EVENTS_CONN_ID)
    if conn is None:
        raise ConfigError("no Redis for order events: set TEND_ORDER_EVENTS_URL (e.g. "
                          "redis://127.0.0.1:6379/0) or the Airflow connection "
                          f"AIRFLOW_CONN_{ORDER_EVENTS_CONN_ID.upper()}")
    from urllib.parse import quote

    auth = ""
    if conn.login or conn.password:
        auth = f"{quote(conn.login or '', safe='')}:{quote(conn.password or '', safe='')}@"
    db = conn.extra_dejson.get("db") or conn.schema or 0
    scheme = "rediss" if conn.extra_dejson.get("ssl") in (True, "true", "True") else "redis"
    return f"{scheme}://{auth}{conn.host or '127.0.0.1'}:{conn.port or 6379}/{db}"
