"""The SendGrid Event Webhook: ``POST /sendgrid/events``.

SendGrid posts a JSON array of events, signed with ECDSA over the timestamp header and the raw
body (its "Signed Event Webhook"). A request is accepted only when the signature verifies with
the configured public key and its timestamp is within :data:`~tend.config.WEBHOOK_TOLERANCE_SECONDS`
of this clock; anything else gets 403 and is not read further. Without a key the endpoint
answers 503 (SendGrid keeps retrying for a day, so events wait for the key to be set rather than
being taken unsigned).

Each event is checked on its own: a malformed one is counted and skipped, never a 500. Text no
store can keep (a NUL or a lone UTF-16 surrogate) is no reason to drop an event's effect: such
an address is dropped and such characters in the details are replaced. The
well-formed ones are written in one transaction (or spooled while the store is down) by
:func:`apply_events`, which stores each ``sg_event_id`` once and gives only its first arrival
effects (the table in docs/sendgrid-events.md):

- hard bounces, drops for a bad address, spam reports and unsubscribes suppress the customer;
- a spam report also opens a complaint;
- any report about a message left ``unknown`` by a crash settles it (sent, or failed if
  SendGrid dropped it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from tend import config
from tend.listen import UNSTORABLE
from tend.store import complaints, ledger, message_events, suppressions

if TYPE_CHECKING:
    from tend.listen.app import Handler, Service

__all__ = ["ACTION", "HANDLERS", "MAX_EVENTS", "apply_events", "parse_events", "routes"]

log = logging.getLogger("tend.listen")

ACTION = "sendgrid_events"
PATH = "/sendgrid/events"
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
#: Events one request may carry. SendGrid cuts its batches by size, well under the body limit
#: (about a thousand events); an array several times longer did not come from it.
MAX_EVENTS = 5000

_EVENT = re.compile(r"[a-z_]{1,32}")
_EVENT_ID = re.compile(r"[\x21-\x7e]{1,100}")
_MESSAGE_ID = re.compile(r"[0-9a-f]{32}")
#: ASCII digits only: ``str.isdigit`` also takes "²", which ``int`` refuses.
_STAMP = re.compile(r"[0-9]{1,12}")
_DETAIL_KEYS = ("reason", "type", "status", "response", "url", "sg_message_id", "asm_group_id",
                "bounce_classification", "attempt")
_TEXT_MAX = 300

#: event -> suppression reason. ``bounce`` only when its ``type`` is a bounce, not a block (a
#: block is the receiving server refusing the sender for now, not a bad address).
_SUPPRESS = {"spamreport": "spam_report", "unsubscribe": "unsubscribed",
             "group_unsubscribe": "unsubscribed"}
#: ``dropped`` reasons that say the address itself must not be written to again.
_DROPPED = {"bounced address": "hard_bounce", "invalid": "invalid_address",
            "invalid address": "invalid_address", "unsubscribed address": "unsubscribed",
            "spam reporting address": "spam_report"}


def suppression_reason(event: Mapping[str, Any]) -> str | None:
    """The suppression an event calls for, if any."""
    kind = event["event"]
    if kind == "bounce":
        return "hard_bounce" if (event.get("type") or "bounce").lower() == "bounce" else None
    if kind == "dropped":
        return _DROPPED.get((event.get("reason") or "").strip().lower())
    return _SUPPRESS.get(kind)


# -- parsing: bytes from the internet to plain, bounded records ---------------------------------

class BadRequest(ValueError):
    """The body is not a JSON array of objects of a sane length."""


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_events(body: bytes) -> tuple[list[dict[str, Any]], int]:
    """The well-formed events of a webhook body, as plain JSON-able records, and how many
    were skipped as malformed. BadRequest when the body as a whole is unusable."""
    try:
        doc = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadRequest("not UTF-8 JSON") from exc
    if not isinstance(doc, list):
        raise BadRequest("not a JSON array")
    if len(doc) > MAX_EVENTS:
        raise BadRequest(f"more than {MAX_EVENTS} events")
    events: list[dict[str, Any]] = []
    skipped = 0
    for raw in doc:
        event = _event(raw)
        if event is None:
            skipped += 1
        else:
            events.append(event)
    return events, skipped


def _text(value: Any, limit: int = _TEXT_MAX) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float | str):
        return str(value)[:limit]
    return None


def _event(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    kind, event_id, stamp = raw.get("event"), raw.get("sg_event_id"), raw.get("timestamp")
    if not (isinstance(kind, str) and _EVENT.fullmatch(kind)):
        return None
    if not (isinstance(event_id, str) and _EVENT_ID.fullmatch(event_id)):
        return None
    if isinstance(stamp, bool) or not isinstance(stamp, int | float) or not (
            0 < stamp < 2**33):  # NaN fails both comparisons
        return None
    mid = raw.get("tend_message_id")
    email = raw.get("email")
    if isinstance(email, str) and UNSTORABLE.search(email):
        email = None  # not an address; the event still counts by its message id
    # The details are for the record: what no store keeps is replaced, never a reason to drop
    # a spam report or an unsubscribe (the event's effect).
    detail = {k: UNSTORABLE.sub("\ufffd", t) for k in _DETAIL_KEYS
              if (t := _text(raw.get(k))) is not None}
    if isinstance(mid, str) and mid and not _MESSAGE_ID.fullmatch(mid):
        # not one of ours: kept for the record only
        detail["tend_message_id"] = UNSTORABLE.sub("\ufffd", mid[:64])
    return {
        "id": event_id,
        "event": kind,
        "ts": int(stamp),
        "mid": mid if isinstance(mid, str) and _MESSAGE_ID.fullmatch(mid) else None,
        "email": email.strip().lower() if isinstance(email, str) and 3 <= len(email) <= 320
        else None,
        "reason": detail.get("reason"),
        "type": detail.get("type"),
        "detail": json.dumps(detail, separators=(",", ":"), ensure_ascii=False) if detail
        else None,
    }


# -- applying: one transaction per delivery, idempotent --------------------------------------

def apply_events(conn: Connection, payload: Mapping[str, Any], now: dt.datetime) -> None:
    """Store a delivery's events; give the effects of those stored for the first time."""
    events = [e for e in payload.get("events") or () if isinstance(e, dict)]
    if not events:
        return
    known = ledger.owners(conn, [e["mid"] for e in events if e.get("mid")])
    rows = [{
        "event_id": e["id"],
        "message_id": e["mid"] if e.get("mid") in known else None,
        "customer_id": known[e["mid"]][0] if e.get("mid") in known else None,
        "event": e["event"],
        "occurred_at": dt.datetime.fromtimestamp(int(e["ts"]), dt.UTC),
        "received_at": now,
        "detail": e.get("detail"),
    } for e in events]
    new = message_events.add_new(conn, rows)
    supp: list[dict[str, Any]] = []
    settle: dict[str, tuple[str, str]] = {}
    for e in events:
        if e["id"] not in new:
            continue
        new.discard(e["id"])  # a second copy inside the same batch is not new either
        if e.get("mid") not in known:
            continue  # not one of our messages: stored, without effects
        customer, status = known[e["mid"]]
        reason = suppression_reason(e)
        if reason is not None:
            supp.append({"customer_id": customer, "email": e.get("email"), "reason": reason,
                         "source": f"sendgrid:{e['event']}", "created_at": now})
        if e["event"] == "spamreport":
            complaints.open_complaint(conn, customer_id=customer, source="spam_report", now=now,
                                      message_id=e["mid"])
        if status != "unknown":
            continue
        if e["event"] == "dropped":
            settle[e["mid"]] = ("failed", f"SendGrid dropped it ({e.get('reason') or 'no reason'})")
        else:
            settle.setdefault(e["mid"], ("sent", f"SendGrid reported it {e['event']}"))
    suppressions.add_rows(conn, supp)
    ledger.settle_reported(conn, settle)


HANDLERS: dict[str, Handler] = {ACTION: apply_events}


# -- the route --------------------------------------------------------------------------------

def _refuse(status: int, text: str) -> Response:
    return PlainTextResponse(text + "\n", status_code=status)


def routes(service: Service) -> list[BaseRoute]:
    key = config.sendgrid_webhook_key()
    verify: Callable[[bytes, str, str], bool] | None = None
    if key is None:
        log.warning("no SendGrid webhook key (TEND_SENDGRID_WEBHOOK_KEY or the sendgrid_default "
                    "connection's webhook_public_key): %s answers 503 until one is set", PATH)
    else:
        from tend.delivery.sendgrid import event_webhook_verifier

        verify = event_webhook_verifier(key)  # a malformed key stops tend serve here
    tolerance = config.WEBHOOK_TOLERANCE_SECONDS

    async def receive(request: Request) -> Response:
        if verify is None:
            return _refuse(503, "The SendGrid webhook key is not configured")
        signature = request.headers.get(SIGNATURE_HEADER, "")
        stamp = request.headers.get(TIMESTAMP_HEADER, "")
        if not signature or not _STAMP.fullmatch(stamp) or len(signature) > 200:
            return _refuse(403, "Forbidden")
        if abs(time.time() - int(stamp)) > tolerance:
            return _refuse(403, "Forbidden")
        body = await request.body()
        if not verify(body, signature, stamp):
            return _refuse(403, "Forbidden")
        try:
            events, skipped = parse_events(body)
        except BadRequest:
            return _refuse(400, "Bad request")
        if skipped:
            log.warning("SendGrid webhook: %d malformed event(s) skipped", skipped)
        if events:
            await asyncio.to_thread(service.record, ACTION, {"events": events})
        return JSONResponse({"accepted": len(events), "skipped": skipped},
                            headers={"Cache-Control": "no-store"})

    return [Route(PATH, receive, methods=["POST"])]
