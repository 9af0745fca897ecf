"""``tend serve``: run the public application on uvicorn."""

from __future__ import annotations

import logging
import os
import sys

from tend import config
from tend.config import ShopSettings
from tend.store import db

log = logging.getLogger("tend.listen")


def factory() -> object:
    """uvicorn's ``--factory`` entry point (each worker process builds its own app from the
    environment, which :func:`serve` has filled in)."""
    from tend.listen.app import create_app

    return create_app()


def serve(*, store: str | None, host: str, port: int, workers: int = 1) -> None:
    """Check the configuration, then serve until interrupted."""
    import uvicorn

    url = config.store_url(store)
    settings = ShopSettings.from_env()  # refuses a public http TEND_BASE_URL
    _require_current_unless_unreachable(url)
    os.environ["TEND_STORE_URL"] = url  # the workers read the same store
    print(f"tend serve: listening on http://{host}:{port} for {settings.base_url} "
          f"(store {config.mask_url(url)})", file=sys.stderr, flush=True)
    uvicorn.run(
        "tend.listen.serve:factory", factory=True, host=host, port=port, workers=workers,
        proxy_headers=True, server_header=False, date_header=True, access_log=False,
        log_level="info", timeout_graceful_shutdown=5, limit_concurrency=2000,
    )


def _require_current_unless_unreachable(url: str) -> None:
    """Refuse a store whose schema is behind the code, but start while the store cannot be
    reached: the routes spool what arrives and the replay applies it once the store is back,
    so a restart during a database outage must not turn into a restart loop that answers
    nothing. The outage is told apart by the rule the routes and the replay use
    (``Service.can_wait``)."""
    from tend.listen.app import Service

    try:
        db.require_current(url)
    except Exception as exc:
        if not Service.can_wait(exc):
            raise
        log.warning(
            "tend serve: %s; starting anyway: what arrives is kept in the spool (%s) and "
            "applied when the store is back (its schema is not checked until then; "
            "/healthz says store: unreachable meanwhile)",
            db.explain(exc) or f"the contact store at {config.mask_url(url)} cannot be reached",
            config.spool_dir())
