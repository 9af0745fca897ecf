"""The nightly verbs: migrate, ingest, plan, night, send, summary, why."""

from __future__ import annotations

import argparse

from tend import config
from tend.cli.args import checked_renderer, date, print_lines, ready_store, shop_arg, store_arg
from tend.errors import DataError


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
        sp.add_argument("--as-of", type=date, required=True,
                        help="the night (YYYY-MM-DD): orders up to the end of this day (UTC)")
        sp.add_argument("--run-id", default=None,
                        help="a name for this run in the store (default: cli__<as-of>)")
        if name in ("ingest", "night"):
            sp.add_argument("--full", action="store_true", help="rebuild every customer")
        if name == "night":
            sp.add_argument("--delivery", choices=config.DELIVERY_BACKENDS,
                            help="where messages go (default: TEND_DELIVERY, else outbox)")
        sp.set_defaults(run=_night)

    sp = sub.add_parser("send", help="send one claimed batch")
    store_arg(sp)
    sp.add_argument("--as-of", type=date, required=True,
                    help="the night (YYYY-MM-DD) whose batch to send")
    sp.add_argument("--batch", type=int, required=True,
                    help="the batch number, as `tend plan` printed it")
    sp.add_argument("--delivery", choices=config.DELIVERY_BACKENDS,
                    help="where messages go (default: TEND_DELIVERY, else outbox)")
    sp.set_defaults(run=_send)

    sp = sub.add_parser("summary", help="a night's totals: candidates, sent, skipped by reason")
    store_arg(sp)
    sp.add_argument("--as-of", type=date, required=True, help="the night (YYYY-MM-DD)")
    sp.set_defaults(run=_summary)

    sp = sub.add_parser("why", help="the story of one customer's nights")
    store_arg(sp)
    sp.add_argument("customer_id", help="the shop's customer_id")
    sp.add_argument("--as-of", type=date,
                    help="only that night (YYYY-MM-DD; default: every night, newest first)")
    sp.set_defaults(run=_why)


def _migrate(args: argparse.Namespace) -> None:
    from tend.store import migrate

    url = config.store_url(args.store)
    print(f"contact store {config.mask_url(url)} at revision {migrate(url)}")


def _send(args: argparse.Namespace) -> None:
    from tend import delivery
    from tend.delivery.engine import send_batch
    from tend.store import ledger
    from tend.store.db import connect

    store_url = ready_store(args.store)
    with connect(store_url).connect() as conn:
        batches = ledger.batch_ids(conn, args.as_of)
    if args.batch not in batches:
        raise DataError(
            f"night {args.as_of} has no batch {args.batch} in the contact store"
            + (f"; its batches are {', '.join(map(str, batches))}" if batches else
               f"; it claimed nothing: run `tend plan --as-of {args.as_of}` first, or check "
               "--as-of") + " (`tend plan` prints the batches it claims)")
    checked = checked_renderer()
    backend = delivery.configured_backend(args.delivery)
    try:
        result = send_batch(store_url, args.as_of, args.batch,
                            backend=backend, renderer=checked,
                            settings=config.ShopSettings.from_env())
    finally:
        backend.close()
    print_lines(result.lines())


def _summary(args: argparse.Namespace) -> None:
    from tend.reports import night_known, nights, summary_lines

    store_url = ready_store(args.store)
    if not night_known(store_url, args.as_of):
        known = nights(store_url)
        raise DataError(
            f"the contact store has no night {args.as_of}"
            + (f" (latest: {', '.join(map(str, known))})" if known else " (it has no night yet)")
            + f": check --as-of, or run `tend night --as-of {args.as_of}` first")
    print_lines(summary_lines(store_url, args.as_of))


def _why(args: argparse.Namespace) -> None:
    from tend.reports import why_lines

    print_lines(why_lines(ready_store(args.store), args.customer_id, args.as_of))


def _night(args: argparse.Namespace) -> None:
    from tend import delivery, messages, reports
    from tend.delivery import engine
    from tend.delivery.base import is_rehearsal
    from tend.features import ingest
    from tend.programs import plan
    from tend.store import migrate

    shop_url = config.shop_url(args.db)
    store_url = config.store_url(args.store)
    run_id = args.run_id or f"cli__{args.as_of.isoformat()}"
    settings = config.ShopSettings.from_env()
    if args.command in ("plan", "night"):
        checked_renderer(settings)  # an unknown TEND_DEFAULT_LOCALE stops here, before any work
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
        print_lines(["", *reports.summary_lines(
            store_url, args.as_of, rehearsal=is_rehearsal(backend))])
