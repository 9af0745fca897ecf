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
    db.require_current(url)
    os.environ["TEND_STORE_URL"] = url  # the workers read the same store
    print(f"tend serve: listening on http://{host}:{port} for {settings.base_url} "
          f"(store {config.mask_url(url)})", file=sys.stderr, flush=True)
    uvicorn.run(
        "tend.listen.serve:factory", factory=True, host=host, port=port, workers=workers,
        proxy_headers=True, server_header=False, date_header=True, access_log=False,
        log_level="info", timeout_graceful_shutdown=5, limit_concurrency=2000,
    )
