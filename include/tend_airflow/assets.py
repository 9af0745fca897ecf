"""The assets the Tend DAGs hand each other, and the one the shop feeds.

tend_ingest emits ``CUSTOMER_FEATURES`` with ``{as_of, changed_customers}`` when it has folded a
night's orders into the features; tend_programs is scheduled on it. One object, imported by both
DAG files, so producer and consumer cannot drift apart.

``ORDER_EVENTS`` is fed from outside: its watcher (common-messaging's ``MessageQueueTrigger`` on
the ``redis+pubsub`` scheme, run by the triggerer) subscribes to ``TEND_ORDER_EVENTS_CHANNEL``
through the connection ``tend_order_events``; each message becomes an asset event whose extra
``payload`` is the Redis message (``data``: the event's JSON), and tend_events is scheduled on
it (docs/events.md).
"""

from __future__ import annotations

from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger
from airflow.sdk import Asset, AssetWatcher

from tend import config

CUSTOMER_FEATURES = Asset(uri="tend://customer_features", name="tend_customer_features")

#: Seconds the Redis trigger sleeps between polls when no message has come. Messages that
#: arrive meanwhile wait in the subscription, so this bounds the delay, not what is received.
ORDER_EVENTS_POLL_SECONDS = 2.0

ORDER_EVENTS = Asset(
    uri="tend://order_events",
    name="tend_order_events",
    watchers=[AssetWatcher(
        name="tend_order_events_watcher",
        trigger=MessageQueueTrigger(
            scheme="redis+pubsub",
            channels=[config.order_events_channel()],
            redis_conn_id=config.ORDER_EVENTS_CONN_ID,
            poll_interval=ORDER_EVENTS_POLL_SECONDS,
        ),
    )],
)
