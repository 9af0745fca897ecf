"""The tend serve application's guards, over HTTP against a real uvicorn."""

from __future__ import annotations

from pathlib import Path

import httpx
from _support import running_service


def test_health_answers_and_bodies_are_bounded(store_url: str, tmp_path: Path) -> None:
    with running_service(store_url, tmp_path) as svc, httpx.Client(base_url=svc.url) as c:
        r = c.get("/healthz")
        assert r.status_code == 200 and r.json() == {"status": "ok", "store": "ok", "spooled": 0}
        assert c.post("/healthz").status_code == 405
        big = c.post("/healthz", content=b"x" * (3 * 1024 * 1024))
        assert big.status_code == 413 and "Traceback" not in big.text
        missing = c.get("/nothing/here")
        assert missing.status_code == 404 and missing.headers["content-type"].startswith(
            "text/plain")
