"""The nightly verbs: migrate, ingest, plan, night, send, summary, why."""

from __future__ import annotations

import argparse

from tend import config
from tend.cli.args import date, print_lines, shop_arg, store_arg


def register(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("migrate", help="create or upgrade the contact store schema")
    store_arg(sp)
    sp.set_defaults(run=_migrate)

    for name, helptext in (("ingest", "fold orders up to --as-of into customer features"),
                           ("plan", "decide and claim tonight's messages (sends nothing)"),
                           ("night", "ingest, plan and send one night without Airflow")):
        sp = sub.add_parser(name, help=helptext)
        shop_arg(sp)
        store_arg(sp)
        sp.add_argument("--as-of", type=date, required=True)
        sp.add_argument("--run-id", default=None)
        if name in ("ingest", "night"):
            sp.add_argument("--full", action="store_true", help="rebuild every customer")
        if name == "night":
            sp.add_argument("--delivery", choices=config.DELIVERY_BACKENDS)
        sp.set_defaults(run=_night)

    sp = sub.add_parser("send", help="send one claimed batch")
    store_arg(sp)
    sp.add_argument("--as-of", type=date, required=True)
    sp.add_argument("--batch", type=int, required=True)
    sp.add_argument("--delivery", choices=config.DELIVERY_BACKENDS)
    sp.set_defaults(run=_send)

    sp = sub.add_parser("summary", help="a night's totals: candidates, sent, skipped by reason")
    store_arg(sp)
    sp.add_argument("--as-of", type=date, required=True)
    sp.set_defaults(run=_summary)

    sp = sub.add_parser("why", help="the story of one customer's nights")
    store_arg(sp)
    sp.add_argument("customer_id")
    sp.add_argument("--as-of", type=date)
    sp.set_defaults(run=_why)


def _migrate(args: argparse.Namespace) -> None:
    from tend.store import migrate

    url = config.store_url(args.store)
    print(f"contact store {config.mask_url(url)} at revision {migrate(url)}")


def _send(args: argparse.Namespace) -> None:
    from tend import delivery, messages
    from tend.delivery.engine import send_batch

    backend = delivery.configured_backend(args.delivery)
    try:
        result = send_batch(config.store_url(args.store), args.as_of, args.batch,
                            backend=backend, renderer=messages.default_renderer(),
                            settings=config.ShopSettings.from_env())
    finally:
        backend.close()
    print_lines(result.lines())


def _summary(args: argparse.Namespace) -> None:
    from tend.reports import summary_lines

    print_lines(summary_lines(config.store_url(args.store), args.as_of))


def _why(args: argparse.Namespace) -> None:
    from tend.reports import why_lines

    print_lines(why_lines(config.store_url(args.store), args.customer_id, args.as_of))


def _night(args: argparse.Namespace) -> None:
    from tend import delivery, messages, reports
    from tend.delivery import engine
    from tend.features import ingest
    from tend.programs import plan
    from tend.store import migrate

    shop_url = config.shop_url(args.db)
    store_url = config.store_url(args.store)
    run_id = args.run_id or f"cli__{args.as_of.isoformat()}"
    settings = config.ShopSettings.from_env()
    if args.command in ("ingest", "night"):
        migrate(store_url)
        print_lines(ingest.run_ingest(shop_url, store_url, args.as_of, run_id,
                                      full=args.full).lines())
    if args.command in ("plan", "night"):
        planned = plan.plan_night(shop_url, store_url, args.as_of, run_id,
                                  settings=settings,
                                  renderer=messages.default_renderer(settings),
                                  secret=config.unsubscribe_secret())
        print_lines(planned.lines())
    if args.command == "night":
        backend = delivery.configured_backend(args.delivery)
        renderer = messages.default_renderer(settings)
        try:
            for batch in planned.batches:
                print_lines(engine.send_batch(store_url, args.as_of, batch, backend=backend,
                                              renderer=renderer, settings=settings).lines())
        finally:
            backend.close()
        print_lines(["", *reports.summary_lines(store_url, args.as_of)])
