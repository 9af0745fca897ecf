"""Engines and migrations for the contact store.

``connect`` is the single place engines are made, so SQLite gets the pragmas it needs to behave
like a server database under Tend's access pattern (foreign keys, WAL so the Airflow UI can
read while a night writes, a busy timeout instead of "database is locked" errors).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
)

from tend.config import mask_url, sqlite_file, var_dir
from tend.errors import ConfigError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
VERSION_TABLE = "tend_alembic_version"


def decode_lenient(value: bytes) -> str:
    """SQLite text as str, bytes that are not UTF-8 as U+FFFD (SQLite stores whatever it is
    given; a shop's odd row must not fail a read)."""
    return value.decode("utf-8", "replace")


@functools.cache
def connect(url: str, *, lenient_text: bool = False) -> Engine:
    """One pooled engine per URL per process (cached: engines are meant to be shared).

    ``lenient_text``: on SQLite, text that is not valid UTF-8 reads with U+FFFD (a separate
    engine; the shop's readers use it)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"{mask_url(url)!r} is not a database URL ({exc}); use e.g. "
                          "sqlite:////abs/path/store.db or postgresql://user@host:5432/db") from exc
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_file(url)
        if path:
            _require_folder(Path(path))
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
            dbapi_conn.isolation_level = None
            if lenient_text:
                dbapi_conn.text_factory = decode_lenient
            cur = dbapi_conn.cursor()
            # A new store gets 16 KiB pages (SQLite's default is 4 KiB; an existing file keeps
            # its own, the pragma is a no-op there): a customer's feature row is a few hundred
            # bytes, and a night writes a million of them: larger pages, fewer page writes.
            cur.execute("PRAGMA page_size=16384")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn):  # type: ignore[no-untyped-def]
            # Take the write lock when the transaction starts: a WAL reader that later tries to
            # write fails with SQLITE_BUSY instead of waiting, and the cap check in a claim must
            # see every row a concurrent claim committed before it.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    try:
        return create_engine(url, pool_pre_ping=True)
    except NoSuchModuleError as exc:
        raise ConfigError(
            f"the database URL {mask_url(url)} names a kind of database Tend cannot use "
            f"({parsed.drivername}); use sqlite:///path/to/file.db or "
            "postgresql://user@host:5432/db") from exc
    except ImportError as exc:
        raise ConfigError(
            f"the database driver for {mask_url(url)} is not installed ({exc.name or exc}); "
            "Tend installs psycopg for postgresql:// and uses Python's sqlite3 for sqlite:///: "
            "use one of those URLs (postgresql+psycopg://... works too), or install the "
            "driver in Tend's environment") from exc


def _require_folder(path: Path) -> None:
    """A SQLite file's folder must exist: a typo in a path must not create a new, empty
    database somewhere. Only Tend's own state folder (``var/``) is created on demand, so a
    fresh checkout works."""
    folder = path.parent
    if folder.is_dir():
        return
    if folder.resolve() == var_dir():
        folder.mkdir(parents=True, exist_ok=True)
        return
    raise ConfigError(f"the folder {folder} of the SQLite database {path.name} does not exist: "
                      f"create it (mkdir -p {folder}) or fix the path in the URL")


def explain(exc: BaseException) -> str | None:
    """One line that says how to fix a database that cannot be used (unreachable, refusing
    the login, missing, without Tend's tables), or None when ``exc`` is not such a problem
    (a bug, which should show its traceback)."""
    if not isinstance(exc, OperationalError | InterfaceError | ProgrammingError):
        return None
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    first = lines[0].strip() if lines else exc.__class__.__name__
    low = str(orig).lower()
    if "no such table" in low or ("relation" in low and "does not exist" in low):
        return (f"the database lacks one of Tend's tables ({first}): run `tend migrate` for "
                "the contact store; a shop database needs the four tables or views of "
                "docs/shop-data.md (or `tend load-csv`)")
    if isinstance(exc, ProgrammingError):
        return None
    if "database" in low and "does not exist" in low:
        return (f"{first}: create that database (e.g. createdb) or fix the database name in "
                "the URL (--db/--store, TEND_SHOP_URL/TEND_STORE_URL)")
    if "password authentication failed" in low or ("role" in low and "does not exist" in low):
        return (f"the database refused the login ({first}): fix the user and password in the "
                "URL (--db/--store, TEND_SHOP_URL/TEND_STORE_URL)")
    return (f"cannot use the database ({first}): check that it is running and reachable from "
            "here, and that the URL (--db/--store, TEND_SHOP_URL/TEND_STORE_URL) is right")


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def migrate(url: str) -> str:
    """Bring the store to the newest schema; safe to run every night (a no-op when current)."""
    engine = connect(url)
    cfg = _alembic_config()
    # Alembic announces every revision at INFO; operators only need to hear about failures.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return head_revision()


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(url: str) -> str | None:
    with connect(url).connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return ctx.get_current_revision()


def require_current(url: str) -> None:
    """Fail early and clearly when the store was never migrated or is behind the code."""
    current = current_revision(url)
    if current != head_revision():
        raise ConfigError(
            f"the contact store at {mask_url(url)} is at schema revision {current or 'none'}, "
            f"the code needs {head_revision()}; run `tend migrate` (or the tend_ingest DAG, "
            "which migrates first)"
        )
