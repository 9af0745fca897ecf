"""Order events: ``tend publish-order``, for shops without a webhook relay and for tests."""

from __future__ import annotations

import argparse
import sys

from tend import config
from tend.cli.args import shop_arg


def register(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("publish-order",
                        help='publish an "order placed" event for an order the shop holds '
                             "(the tend_events DAG decides its thank-you within minutes)")
    sp.add_argument("order_id", metavar="ORDER_ID", help="an order of the shop (tend_shop)")
    shop_arg(sp)
    sp.add_argument("--url", help="Redis URL (default: TEND_ORDER_EVENTS_URL, else the "
                                  "tend_order_events connection)")
    sp.add_argument("--channel", help="pub/sub channel (default: TEND_ORDER_EVENTS_CHANNEL, "
                                      f"else {config.DEFAULT_ORDER_EVENTS_CHANNEL})")
    sp.set_defaults(run=_publish)


def _publish(args: argparse.Namespace) -> int:
    from tend.listen.orders import event_for_order, publish

    event = event_for_order(config.shop_url(args.db), args.order_id)
    channel = args.channel or config.order_events_channel()
    receivers = publish(event, url=args.url, channel=channel)
    print(event.to_json())
    if not receivers:
        # Pub/sub keeps nothing for absent subscribers: only the nightly run will see it.
        print(f"tend: nobody is subscribed to {channel!r} (is the Airflow triggerer running "
              "and tend_events unpaused?); the nightly run will still see this order",
              file=sys.stderr)
        return 1
    print(f"published to {channel!r} ({receivers} subscriber(s))", file=sys.stderr)
    return 0
