"""The daily backstop: SendGrid's own suppression lists into Tend's suppressions.

A webhook delivery SendGrid gave up on (``tend serve`` down for more than a day, a key being
rotated) would leave a bounce or a spam report unknown to Tend. Once a day this reads the lists
SendGrid keeps itself — bounces, blocks, spam reports, invalid emails and global unsubscribes
(``GET /v3/suppression/<list>``, pages of 500 by ``limit``/``offset``) — and suppresses the
shop's customers with those addresses. Called by ``tend suppressions pull`` and the
``tend_feedback`` DAG; pointed at ``tend fake-sendgrid`` by URL in tests.

Blocks are read and counted but suppress nobody: a block is a receiving server refusing the
sender (a listed IP, content), which says nothing against the address, and SendGrid itself
keeps sending to blocked addresses.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from tend.delivery.sendgrid import SendGridSettings
from tend.errors import ConfigError, DeliveryError
from tend.logs import log, table
from tend.shop.read import customer_ids_by_email
from tend.store import suppressions
from tend.store.db import connect

__all__ = ["LISTS", "PullResult", "pull_suppressions"]

#: SendGrid list -> Tend's suppression reason (None: read and counted, suppresses nobody).
LISTS: dict[str, str | None] = {
    "bounces": "hard_bounce",
    "blocks": None,
    "spam_reports": "spam_report",
    "invalid_emails": "invalid_address",
    "unsubscribes": "unsubscribed",
}
PAGE = 500  # the most SendGrid returns per request
_MAX_WAIT = 60.0  # seconds one 429 may make the pull wait before it gives up


@dataclass
class PullResult:
    """What a pull read and did, per list."""

    listed: Counter[str] = field(default_factory=Counter)
    """Addresses each list holds."""
    matched: Counter[str] = field(default_factory=Counter)
    """Of those, customers of the shop (an address can belong to several)."""

    def lines(self) -> list[str]:
        rows = [(name, self.listed[name], self.matched[name] if LISTS[name] else "-",
                 LISTS[name] or "not suppressed") for name in LISTS]
        return table(["SendGrid list", "addresses", "customers", "suppression"], rows)


def pull_suppressions(settings: SendGridSettings, store_url: str, shop_url: str, *,
                      now: Callable[[], dt.datetime] | None = None,
                      transport: httpx.BaseTransport | None = None,
                      sleep: Callable[[float], None] = time.sleep) -> PullResult:
    """Read every list, then suppress the matching customers in one transaction (a customer
    already suppressed for the same reason stays as it was, so the pull is safe to rerun)."""
    stamp = (now or (lambda: dt.datetime.now(dt.UTC)))()
    result = PullResult()
    entries: dict[str, list[tuple[str, dt.datetime]]] = {}
    with httpx.Client(base_url=settings.base_url.rstrip("/"), transport=transport,
                      timeout=httpx.Timeout(settings.read_timeout,
                                            connect=settings.connect_timeout),
                      headers={"Authorization": f"Bearer {settings.api_key}",
                               "Accept": "application/json"}) as client:
        for name in LISTS:
            got = list(_entries(client, name, stamp, sleep))
            result.listed[name] = len(got)
            entries[name] = got
    owners = customer_ids_by_email(shop_url, (e for got in entries.values() for e, _ in got))
    rows: list[dict[str, Any]] = []
    for name, reason in LISTS.items():
        if reason is None:
            continue
        for address, created in entries[name]:
            for customer_id in owners.get(address, ()):
                result.matched[name] += 1
                rows.append({"customer_id": customer_id, "email": address, "reason": reason,
                             "source": f"sendgrid_list:{name}", "created_at": created})
    with connect(store_url).begin() as conn:
        suppressions.add_rows(conn, rows)
    for line in result.lines():
        log.info(line)
    return result


def _entries(client: httpx.Client, name: str, now: dt.datetime,
             sleep: Callable[[float], None]) -> Iterator[tuple[str, dt.datetime]]:
    """(lower-cased email, when SendGrid listed it) for every entry of one list."""
    offset = 0
    while True:
        page = _get(client, f"/v3/suppression/{name}", {"limit": PAGE, "offset": offset}, sleep)
        for item in page:
            address = item.get("email") if isinstance(item, dict) else None
            if not isinstance(address, str) or not address.strip() or len(address) > 320:
                continue
            created = item.get("created")
            when = (dt.datetime.fromtimestamp(created, dt.UTC)
                    if isinstance(created, int) and not isinstance(created, bool)
                    and 0 < created < 2**33 else now)
            yield address.strip().lower(), when
        if len(page) < PAGE:
            return
        offset += PAGE


def _get(client: httpx.Client, path: str, params: dict[str, Any],
         sleep: Callable[[float], None]) -> list[Any]:
    waited = 0.0
    while True:
        try:
            r = client.get(path, params=params)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"could not read SendGrid's {path} ({type(exc).__name__}: "
                                f"{exc}); the next daily pull will try again") from exc
        if r.status_code in (401, 403):
            raise ConfigError(
                f"SendGrid refused the API key on {path} ({r.status_code}): the key needs the "
                "'Suppressions' read scope; check the sendgrid_default connection (or "
                "TEND_SENDGRID_API_KEY)")
        if r.status_code == 429 and waited < _MAX_WAIT:
            delay = _retry_after(r.headers)
            sleep(delay)
            waited += delay
            continue
        if r.status_code != 200:
            raise DeliveryError(f"SendGrid answered {r.status_code} on {path}; the next daily "
                                "pull will try again")
        try:
            doc = r.json()
        except ValueError as exc:
            raise DeliveryError(f"SendGrid's {path} answered something that is not JSON") \
                from exc
        if not isinstance(doc, list):
            raise DeliveryError(f"SendGrid's {path} answered {type(doc).__name__}, not a list")
        return doc


def _retry_after(headers: httpx.Headers) -> float:
    """Seconds to wait after a 429: ``X-RateLimit-Reset`` (epoch seconds) or ``Retry-After``
    (seconds), bounded; one second when neither is usable."""
    for value in (headers.get("X-RateLimit-Reset"), headers.get("Retry-After")):
        try:
            n = float(value or "")
        except ValueError:
            continue
        wait = n - time.time() if n > 1e9 else n
        return min(max(wait, 0.1), 30.0)
    return 1.0
