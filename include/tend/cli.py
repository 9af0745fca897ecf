"""The ``tend`` command: the same functions the DAGs call, for analysts, replays and scripts.

Database URLs come from ``--db``/``--store``, else ``TEND_SHOP_URL``/``TEND_STORE_URL``, else the
embedded SQLite files under ``var/``. Errors Tend raises on purpose print one line that says how
to fix them and exit with status 2; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from tend import config
from tend.errors import TendError


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date; use YYYY-MM-DD") from exc


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be a whole number >= 1")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tend", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="-v: progress lines as in the Airflow task log; -vv: debug")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def shop_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--db", help="shop database URL (default: TEND_SHOP_URL or var/shop.db)")

    def store_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--store", help="contact store URL (default: TEND_STORE_URL or "
                                        "var/store.db)")

    sp = sub.add_parser("migrate", help="create or upgrade the contact store schema")
    store_arg(sp)

    sp = sub.add_parser("demo-data", help="generate a realistic demo shop")
    shop_arg(sp)
    sp.add_argument("--customers", type=_positive, default=2000)
    sp.add_argument("--seed", type=int, default=7)
    sp.add_argument("--as-of", type=_date, default=dt.date.today(),
                    help="the last day with orders (default: today)")
    sp.add_argument("--years", type=_positive, default=3)

    sp = sub.add_parser("load-csv", help="load customers/products/orders/order_lines CSV files")
    shop_arg(sp)
    sp.add_argument("directory", type=Path)
    sp.add_argument("--quarantine", type=Path, help="where rejected rows go "
                                                     "(default: DIRECTORY/quarantine.csv)")

    for name, helptext in (("ingest", "fold orders up to --as-of into customer features"),
                           ("plan", "decide and claim tonight's messages (sends nothing)"),
                           ("night", "ingest, plan and send one night without Airflow")):
        sp = sub.add_parser(name, help=helptext)
        shop_arg(sp)
        store_arg(sp)
        sp.add_argument("--as-of", type=_date, required=True)
        sp.add_argument("--run-id", default=None)
        if name in ("ingest", "night"):
            sp.add_argument("--full", action="store_true", help="rebuild every customer")
        if name == "night":
            sp.add_argument("--delivery", choices=config.DELIVERY_BACKENDS)

    sp = sub.add_parser("send", help="send one claimed batch")
    store_arg(sp)
    sp.add_argument("--as-of", type=_date, required=True)
    sp.add_argument("--batch", type=int, required=True)
    sp.add_argument("--delivery", choices=config.DELIVERY_BACKENDS)

    sp = sub.add_parser("fake-sendgrid", help="serve a local SendGrid stand-in (tests, "
                                              "benchmarks, rehearsals without an account)")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8089, help="0: any free port (printed)")
    sp.add_argument("--api-key", help="accept only this key (default: any Bearer key)")
    sp.add_argument("--latency-ms", type=float, default=0.0,
                    help="delay every answer, e.g. 20 (SendGrid answers in ~20-200 ms)")
    sp.add_argument("--fault-rate", type=float, default=0.0,
                    help="share of requests that get a fault, e.g. 0.1")
    sp.add_argument("--faults", default="429,503,500,slow,drop",
                    help="comma-separated fault kinds among 429,503,500,slow,drop,reset,400,413,"
                         "401,403 (see tend.dev.fake_sendgrid)")
    sp.add_argument("--seed", type=int, default=None)
    sp.add_argument("--reset-ms", type=int, default=1000, help="429: when the limit resets")
    sp.add_argument("--slow-ms", type=int, default=5000, help="slow: how late the 202 comes")
    sp.add_argument("--record", type=Path, help="append every accepted message to this JSONL")
    sp.add_argument("--keep-payloads", action="store_true",
                    help="keep whole payloads in memory and in --record (default: summaries)")

    sp = sub.add_parser("serve", help="serve the public endpoints: unsubscribe, preferences, "
                                      "survey answers and SendGrid's Event Webhook")
    store_arg(sp)
    sp.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1; 0.0.0.0 in a container)")
    sp.add_argument("--port", type=int, default=config.DEFAULT_SERVE_PORT,
                    help=f"default {config.DEFAULT_SERVE_PORT}; 0: any free port (printed)")
    sp.add_argument("--workers", type=_positive, default=1,
                    help="uvicorn worker processes (default 1)")

    sp = sub.add_parser("summary", help="a night's totals: candidates, sent, skipped by reason")
    store_arg(sp)
    sp.add_argument("--as-of", type=_date, required=True)

    sp = sub.add_parser("why", help="the story of one customer's nights")
    store_arg(sp)
    sp.add_argument("customer_id")
    sp.add_argument("--as-of", type=_date)

    for name, helptext in (
            ("features", "one row per customer: lapse score, next order, value, features"),
            ("signals", "one row per customer and signal: score, due date, reason")):
        sp = sub.add_parser(name, help=helptext)
        shop_arg(sp)
        sp.add_argument("--as-of", type=_date, required=True,
                        help="only orders up to the end of this day (UTC) exist")
        sp.add_argument("--out", type=Path, required=True, help="CSV file to write")
        sp.add_argument("--store", help="read the store's features (ingested for --as-of) "
                                        "instead of computing them from the shop")

    sp = sub.add_parser("programs", help="validate the program registry")
    sp.add_argument("action", choices=["check"])
    sp.add_argument("--file", type=Path)

    sp = sub.add_parser("templates", help="render every email template in every locale "
                                          "against its sample contexts")
    sp.add_argument("action", choices=["check"])
    sp.add_argument("--locale", action="append",
                    help="only this locale (repeatable; default: every locale directory)")
    sp.add_argument("--template", action="append", help="only this template (repeatable)")

    sp = sub.add_parser("preview", help="render one program's email for one customer to "
                                        "HTML (and a PNG with --png)")
    shop_arg(sp)
    sp.add_argument("program", help="a program in programs.yaml (or a template name)")
    sp.add_argument("--locale", help="default: the customer's locale, else the shop's")
    sp.add_argument("--customer", help="a customer id from the shop database (default: the "
                                       "template's sample customer)")
    sp.add_argument("--as-of", type=_date, default=None,
                    help="the night to preview (order history and voucher expiry; "
                         "default: today)")
    sp.add_argument("--out", type=Path, help="folder for the files (default: var/previews)")
    sp.add_argument("--png", action="store_true", help="also a screenshot (headless Chromium)")
    sp.add_argument("--dark", action="store_true", help="screenshot in dark mode")
    sp.add_argument("--width", type=_positive, default=640, help="screenshot width in px")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        return _dispatch(args)
    except TendError as exc:
        print(f"tend: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "migrate":
        from tend.store import migrate

        url = config.store_url(args.store)
        print(f"contact store {config.mask_url(url)} at revision {migrate(url)}")
    elif cmd == "demo-data":
        from tend.dev.demo import generate_demo_shop

        url = config.shop_url(args.db)
        summary = generate_demo_shop(url, customers=args.customers, seed=args.seed,
                                     as_of=args.as_of, years=args.years)
        print(f"demo shop at {config.mask_url(url)} (seed {args.seed}, as of {args.as_of})")
        _print(summary.lines())
    elif cmd == "load-csv":
        from tend.shop.csv_import import load_csv_dir

        report = load_csv_dir(config.shop_url(args.db), args.directory,
                              quarantine_file=args.quarantine)
        _print(report.lines())
    elif cmd in ("ingest", "plan", "night"):
        _night(args)
    elif cmd == "send":
        from tend import delivery, messages
        from tend.delivery.engine import send_batch

        backend = delivery.configured_backend(args.delivery)
        try:
            result = send_batch(config.store_url(args.store), args.as_of, args.batch,
                                backend=backend, renderer=messages.default_renderer(),
                                settings=config.ShopSettings.from_env())
        finally:
            backend.close()
        _print(result.lines())
    elif cmd == "summary":
        from tend.reports import summary_lines

        _print(summary_lines(config.store_url(args.store), args.as_of))
    elif cmd == "serve":
        from tend.listen.serve import serve

        serve(store=args.store, host=args.host, port=args.port, workers=args.workers)
    elif cmd == "fake-sendgrid":
        from tend.dev.fake_sendgrid import run_from_args

        run_from_args(args, sys.stdout)
    elif cmd == "why":
        from tend.reports import why_lines

        _print(why_lines(config.store_url(args.store), args.customer_id, args.as_of))
    elif cmd in ("features", "signals"):
        _analyst(args)
    elif cmd == "programs":
        from tend.logs import table
        from tend.programs.registry import load_registry, registry_path

        reg = load_registry(args.file)
        print(f"{args.file or registry_path()}: {len(reg.programs)} program(s) OK, "
              f"{len(reg.enabled())} enabled")
        print("caps (marketing): " + ", ".join(f"{c.messages} per {c.days} days"
                                                for c in reg.caps)
              + f"; send window {reg.send_window.start:%H:%M}-{reg.send_window.end:%H:%M} "
              "in the customer's timezone")
        _print(table(
            ["program", "signal", "kind", "priority", "cooldown", "holdout", "enabled"],
            [(p.name, ", ".join(p.signals), p.kind, p.priority, f"{p.cooldown_days}d",
              f"{p.holdout_share:.0%}", "yes" if p.enabled else "no") for p in reg.programs],
        ))
    elif cmd == "templates":
        from tend import delivery, messages
        from tend.dev.preview import check_templates
        from tend.programs.registry import load_registry

        check_templates(messages.default_renderer(), locales=args.locale, templates=args.template,
                        programs=[(p.name, p.template, p.kind)
                                  for p in load_registry().programs])
    elif cmd == "preview":
        from tend import delivery, messages
        from tend.dev.preview import make_preview

        settings = config.ShopSettings.from_env()
        _print(make_preview(
            args.program, renderer=messages.default_renderer(settings), settings=settings,
            out_dir=args.out or config.var_dir() / "previews", locale=args.locale,
            customer_id=args.customer, shop_url=config.shop_url(args.db), as_of=args.as_of,
            png=args.png, width=args.width, dark=args.dark,
        ).lines())
    return 0


def _analyst(args: argparse.Namespace) -> None:
    """`tend features` / `tend signals`: CSV for analysts, computed as of any past night."""
    from tend import signals
    from tend.features import ingest, store
    from tend.shop.read import read_products
    from tend.signals.lapsed import lapse_scores

    shop_url = config.shop_url(args.db)
    if args.store:
        store_url = config.store_url(args.store)
        if store.store_as_of(store_url) != args.as_of:
            from tend.errors import DataError

            raise DataError(f"the store was not ingested for {args.as_of}: run "
                            f"`tend ingest --as-of {args.as_of}` or drop --store")
        fs = store.read_feature_set(store_url)
    else:
        fs, history = ingest.compute_from_shop(shop_url, args.as_of)
        if history.quarantined:
            print(f"{len(history.quarantined):,} row(s) set aside (see `tend ingest`)",
                  file=sys.stderr)
    if args.command == "features":
        scored = lapse_scores(fs.customers, args.as_of)
        scored = scored.drop(columns=[c for c in scored if c in fs.customers])
        out = pd.concat([fs.customers[["customer_id"]], scored,
                         fs.customers.drop(columns=["customer_id"])], axis=1)
        out = out.rename(columns={"value": "value_estimate", "reason": "lapse_reason"})
    else:
        out = signals.detect(fs, read_products(shop_url), args.as_of)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(args.out, index=False)
    print(f"{len(out):,} rows written to {args.out}")


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
        _print(ingest.run_ingest(shop_url, store_url, args.as_of, run_id,
                                  full=args.full).lines())
    if args.command in ("plan", "night"):
        planned = plan.plan_night(shop_url, store_url, args.as_of, run_id,
                                     settings=settings,
                                     renderer=messages.default_renderer(settings),
                                     secret=config.unsubscribe_secret())
        _print(planned.lines())
    if args.command == "night":
        backend = delivery.configured_backend(args.delivery)
        renderer = messages.default_renderer(settings)
        try:
            for batch in planned.batches:
                _print(engine.send_batch(store_url, args.as_of, batch, backend=backend,
                                          renderer=renderer, settings=settings).lines())
        finally:
            backend.close()
        _print(["", *reports.summary_lines(store_url, args.as_of)])


def _print(lines: Sequence[str]) -> None:
    for line in lines:
        print(line)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
