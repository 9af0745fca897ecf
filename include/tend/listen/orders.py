"""Order events: "order placed", published to Redis pub/sub, decided within minutes.

The event is one JSON object (docs/events.md)::

    {"type": "order.placed", "order_id": "O-1042", "customer_id": "C-17",
     "ordered_at": "2026-12-06T10:14:03Z", "total": "84.50", "currency": "CAD",
     "lines": [{"sku": "FILTER-01", "quantity": 2}]}

``order_id``, ``customer_id`` and ``ordered_at`` are required; ``type`` (when given) must be
``order.placed``; ``total``, ``currency`` and ``lines`` are informational. The event is a
doorbell, not the record: Tend reads the order from the shop by its id, and acts only when the
shop holds it for that customer. An event that is not JSON, lacks a field, names an order the
shop does not have (yet) or another customer's order is logged and skipped; the nightly run,
which reads the shop itself, stays the backstop for every order an event missed.

``publish_order`` (``tend publish-order``) builds the event from the shop's row and publishes
it; a shop or its platform's webhook relay can publish the same JSON itself. ``plan_events``
is what the tend_events DAG runs: the nightly machinery (``tend.programs.plan.plan_night``)
restricted to the event-driven programs (``trigger: event``) and the events' customers, whose
features are computed from the shop's current orders, so their signals and the ledger's
occurrence keys are exactly the ones the nightly run will compute for the same orders.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from tend import config
from tend.errors import DataError
from tend.logs import log
from tend.shop import rules

if TYPE_CHECKING:
    from tend.messages.render import Renderer
    from tend.programs.registry import Registry

EVENT_TYPE = "order.placed"
#: A bigger event is not an order event (a whole order with its lines is a few kilobytes).
MAX_EVENT_BYTES = 64 * 1024
MAX_ID_CHARS = 64  # the shop schema's order_id and customer_id columns
_FIELDS = frozenset({"type", "order_id", "customer_id", "ordered_at", "total", "currency",
                     "lines"})


@dataclass(frozen=True)
class OrderEvent:
    order_id: str
    customer_id: str
    ordered_at: dt.datetime  # timezone-aware, UTC
    total: str | None = None
    currency: str | None = None
    lines: tuple[tuple[str, int], ...] = ()

    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "type": EVENT_TYPE, "order_id": self.order_id, "customer_id": self.customer_id,
            "ordered_at": self.ordered_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
        }
        if self.total is not None:
            doc["total"] = self.total
        if self.currency is not None:
            doc["currency"] = self.currency
        if self.lines:
            doc["lines"] = [{"sku": sku, "quantity": q} for sku, q in self.lines]
        return json.dumps(doc, separators=(",", ":"))


def parse_event(data: str | bytes) -> OrderEvent:
    """One event from its JSON text; a DataError that says what is wrong with it otherwise."""
    if isinstance(data, bytes):
        if len(data) > MAX_EVENT_BYTES:
            raise DataError(f"order event of {len(data):,} bytes is over {MAX_EVENT_BYTES:,}")
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError("order event is not UTF-8 text") from None
    if len(data) > MAX_EVENT_BYTES:
        raise DataError(f"order event of {len(data):,} characters is over {MAX_EVENT_BYTES:,}")
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise DataError(f"order event is not JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(doc, dict):
        raise DataError("order event must be a JSON object with order_id, customer_id and "
                        "ordered_at")
    unknown = sorted(str(k) for k in set(doc) - _FIELDS)
    if unknown:
        raise DataError(f"order event has unknown fields {', '.join(unknown[:5])}; allowed: "
                        f"{', '.join(sorted(_FIELDS))}")
    if doc.get("type", EVENT_TYPE) != EVENT_TYPE:
        raise DataError(f"order event type {str(doc.get('type'))[:40]!r} is not {EVENT_TYPE!r}")
    order_id, customer_id = _id(doc, "order_id"), _id(doc, "customer_id")
    return OrderEvent(order_id=order_id, customer_id=customer_id,
                      ordered_at=_timestamp(doc.get("ordered_at")),
                      total=_optional_text(doc, "total"),
                      currency=_optional_text(doc, "currency"), lines=_lines(doc.get("lines")))


def _id(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_ID_CHARS:
        raise DataError(f"order event needs {key} as text of 1 to {MAX_ID_CHARS} characters")
    return value.strip()


def _timestamp(value: Any) -> dt.datetime:
    if not isinstance(value, str):
        raise DataError("order event needs ordered_at as ISO 8601 text, e.g. "
                        "2026-12-06T10:14:03Z")
    try:
        ts = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise DataError(f"order event's ordered_at {value[:40]!r} is not ISO 8601; use e.g. "
                        "2026-12-06T10:14:03Z") from None
    if ts.tzinfo is None:
        raise DataError(f"order event's ordered_at {value[:40]!r} has no timezone; add Z or an "
                        "offset")
    try:
        utc = ts.astimezone(dt.UTC)
    except OverflowError:  # 9999-12-31T23:00-05:00 is past the last datetime in UTC
        utc = None
    if utc is None or not rules.EARLIEST <= utc < rules.LATEST:
        raise DataError(f"order event's ordered_at {value[:40]!r} is outside "
                        f"{rules.EARLIEST:%Y-%m-%d}..{rules.LATEST:%Y-%m-%d}, the dates the "
                        "shop's orders may carry")
    return utc


def _optional_text(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise DataError(f"order event's {key} must be text or a number")
    text = str(value)
    if len(text) > MAX_ID_CHARS:
        raise DataError(f"order event's {key} is over {MAX_ID_CHARS} characters")
    return text


def _lines(value: Any) -> tuple[tuple[str, int], ...]:
    if value is None:
        return ()
    bad = DataError('order event\'s lines must be a list of {"sku": text, "quantity": whole '
                    "number}")
    if not isinstance(value, list):
        raise bad
    out = []
    for line in value:
        if not isinstance(line, dict) or set(line) - {"sku", "quantity"}:
            raise bad
        sku, quantity = line.get("sku"), line.get("quantity", 1)
        if (not isinstance(sku, str) or not sku or len(sku) > MAX_ID_CHARS
                or isinstance(quantity, bool) or not isinstance(quantity, int)):
            raise bad
        out.append((sku, quantity))
    return tuple(out)


def message_data(message: Any) -> str | bytes | None:
    """The event text of one watcher payload: the Redis pub/sub message the trigger yielded
    (``{"type": "message", "channel": ..., "data": ...}``), or the text itself."""
    if isinstance(message, str | bytes):
        return message
    if isinstance(message, Mapping):
        data = message.get("data")
        if isinstance(data, str | bytes):
            return data
    return None


# -- Publishing -------------------------------------------------------------------------------

def event_for_order(shop_url: str, order_id: str) -> OrderEvent:
    """The event of one order the shop holds."""
    from tend.shop.read import read_order

    row = read_order(shop_url, order_id)
    if row is None:
        raise DataError(f"the shop has no order {order_id!r}; check the id "
                        "(tend publish-order publishes only orders the shop holds)")
    return parse_event(json.dumps({**row, "ordered_at": _iso(row["ordered_at"])}))


def _iso(text: str) -> str:
    """The shop's timestamp text (a naive SQLite one is UTC) as ISO 8601 with a zone."""
    try:
        ts = pd.Timestamp(text)
    except (ValueError, OverflowError):  # pandas' DateParseError is a ValueError
        ts = pd.NaT
    if ts is pd.NaT:
        raise DataError(f"the shop's order has ordered_at {text[:40]!r}, which is not a date "
                        "and time; fix the order in the shop (the nightly run sets it aside "
                        "too)")
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.isoformat()


def publish(event: OrderEvent, *, url: str | None = None, channel: str | None = None) -> int:
    """Publish one event; how many subscribers received it (0: nobody listens, e.g. the
    triggerer is down: the nightly run will still see the order)."""
    import redis

    url = url or config.order_events_url()
    channel = channel or config.order_events_channel()
    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)
    try:
        return int(client.publish(channel, event.to_json()))
    except redis.RedisError as exc:
        raise DataError(f"could not publish to {config.mask_url(url)} ({exc}); check "
                        "TEND_ORDER_EVENTS_URL") from None
    finally:
        client.close()


# -- Deciding ---------------------------------------------------------------------------------

@dataclass
class EventsResult:
    as_of: dt.date
    orders: list[str] = field(default_factory=list)  # the events' orders that were acted on
    skipped: list[str] = field(default_factory=list)  # one reason per skipped event
    batches: list[int] = field(default_factory=list)
    fates: pd.DataFrame = field(default_factory=pd.DataFrame)

    def lines(self) -> list[str]:
        out = [f"order events {self.as_of}: {len(self.orders)} order(s) decided, "
               f"{len(self.skipped)} event(s) skipped, {len(self.batches)} batch(es) to send"]
        out += [f"  skipped: {why}" for why in self.skipped]
        out += [f"  {r.program}: {r.fate} x{int(r.count)}" for r in self.fates.itertuples()]
        return out


def screen_events(messages: Iterable[Any]) -> tuple[list[OrderEvent], list[str]]:
    """The well-formed events (each order once) and a reason for each one set aside. Keyed by
    order and customer, so an event naming the wrong customer cannot shadow the right one."""
    events: dict[tuple[str, str], OrderEvent] = {}
    skipped: list[str] = []
    for message in messages:
        data = message_data(message)
        if data is None:
            skipped.append("a watcher payload without message data")
            continue
        try:
            event = parse_event(data)
        except DataError as exc:
            skipped.append(str(exc))
            continue
        events.setdefault((event.order_id, event.customer_id), event)
    return list(events.values()), skipped


def plan_events(
    shop_url: str,
    store_url: str,
    messages: Iterable[Any],
    run_id: str,
    *,
    settings: config.ShopSettings,
    renderer: Renderer,
    secret: str,
    as_of: dt.date | None = None,
    registry: Registry | None = None,
) -> EventsResult:
    """Decide and claim the event-driven programs' messages for the events' customers.

    ``as_of`` (default: today, UTC) is the night the claims belong to: tonight's run sees them
    as tonight's messages (one message per customer per night, the same caps) and finds the
    thank-you already claimed under the same key. Nothing is sent here; the batch ids returned
    are sent by ``tend.delivery.engine.send_batch`` like a night's.
    """
    from tend.features.compute import compute_feature_set
    from tend.programs.plan import due_signals, plan_night
    from tend.programs.registry import EVENT_SIGNALS, Registry, load_registry
    from tend.shop import read as shop
    from tend.signals import SignalParams, detect

    as_of = as_of or dt.datetime.now(dt.UTC).date()
    result = EventsResult(as_of)
    events, result.skipped = screen_events(messages)
    registry = registry or load_registry()
    programs = registry.event_driven()
    if not programs:
        result.skipped += [f"order {e.order_id}: no enabled program has trigger: event"
                           for e in events]
        events = []
    customers = sorted({e.customer_id for e in events})
    history = shop.read_history(shop_url, as_of, customers) if customers else None
    if history is not None:
        held = set(zip(history.orders["order_id"].astype(str),
                       history.orders["customer_id"].astype(str), strict=True))
        for e in events:
            if (e.order_id, e.customer_id) in held:
                result.orders.append(e.order_id)
            else:
                result.skipped.append(
                    f"order {e.order_id}: the shop has no such order of customer "
                    f"{e.customer_id} up to {as_of} (not written yet, or a wrong id); the "
                    "nightly run will see it if it exists")
    for why in result.skipped:
        log.warning("order event skipped: %s", why)
    if not result.orders or history is None:
        log.info("%s", result.lines()[0])
        return result

    acted = {e.customer_id for e in events if e.order_id in result.orders}
    features = compute_feature_set(history.orders, history.lines)
    wanted = tuple(sorted({s for p in programs for s in p.signals} & set(EVENT_SIGNALS)))
    signals = due_signals(detect(features, shop.read_products(shop_url), as_of,
                                 SignalParams(signals=wanted)), as_of)
    signals = signals.loc[signals["customer_id"].isin(acted)].reset_index(drop=True)
    only = Registry(programs=tuple(programs), caps=registry.caps,
                    send_window=registry.send_window)
    planned = plan_night(shop_url, store_url, as_of, run_id, settings=settings,
                         renderer=renderer, secret=secret, registry=only,
                         detector=lambda *_: signals, only=features)
    result.batches, result.fates = list(planned.batches), planned.fates
    for line in result.lines():
        log.info("%s", line)
    return result
