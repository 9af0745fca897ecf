"""Results: ``tend report`` (what each program earns against its holdout) and
``tend demo-nights`` (demo nights whose customers answer at a known rate)."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import os
from collections.abc import Iterator

from tend import config
from tend.cli.args import date, out_file, positive, print_lines, ready_store, shop_arg, store_arg


def register(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("report", help="per program: contacted, held out, response rates, "
                                       "revenue per customer and the lift with its 95 %% "
                                       "interval")
    shop_arg(sp)
    store_arg(sp)
    sp.add_argument("--from", dest="start", type=date, required=True,
                    help="first night of contacts to count")
    sp.add_argument("--to", dest="end", type=date, required=True,
                    help="last night of contacts to count")
    sp.add_argument("--format", choices=("table", "csv", "json"), default="table",
                    help="table (default): for reading; csv: one row per program; json")
    sp.add_argument("--by-month", action="store_true", help="one row per month and program")
    sp.add_argument("--out", type=out_file, help="write to this file instead of printing")
    sp.set_defaults(run=_report)

    sp = sub.add_parser("demo-nights", help="run demo nights whose customers answer their "
                                            "contacts at a known rate (the demo's truth for "
                                            "lift), then print the report")
    shop_arg(sp)
    store_arg(sp)
    sp.add_argument("--nights", type=positive, default=30,
                    help="how many nights to run, one after the other (default 30)")
    sp.add_argument("--from", dest="start", type=date, required=True,
                    help="the first night (the day after the demo shop's --as-of)")
    sp.add_argument("--seed", type=int, default=7, help="seed of the customers' answers")
    sp.set_defaults(run=_demo_nights)


def _report(args: argparse.Namespace) -> None:
    from tend.errors import ConfigError
    from tend.results import report
    from tend.results.lift import compute

    if args.end < args.start:
        raise ConfigError(f"--to {args.end} is before --from {args.start}: swap them")
    results = compute(config.shop_url(args.db), ready_store(args.store), args.start, args.end)
    if args.format == "table":
        text = "\n".join(report.table_lines(results, by_month=args.by_month)) + "\n"
    elif args.format == "csv":
        text = report.csv_text(results, by_month=args.by_month)
    else:
        text = report.json_text(results) + "\n"
    if args.out:
        args.out.write_text(text, encoding="utf-8")
        print(f"report written to {args.out}")
    else:
        print(text, end="")


def _demo_nights(args: argparse.Namespace) -> None:
    from tend.cli import main
    from tend.dev.responses import simulate_night
    from tend.errors import ConfigError

    shop_url, store_url = config.shop_url(args.db), config.store_url(args.store)
    last = args.start + dt.timedelta(days=args.nights - 1)
    today = dt.datetime.now(dt.UTC).date()
    if last >= today:
        # the answers of a night are orders on the following days: none may be in the future
        first = today - dt.timedelta(days=args.nights + 31)
        raise ConfigError(
            f"the last demo night, {last}, is not in the past: generate the demo shop as of "
            f"{first} (tend demo-data --as-of {first}) and start the nights the day after")
    for k in range(args.nights):
        night = args.start + dt.timedelta(days=k)
        quiet = io.StringIO()
        # Each night runs as on its own next day, as the 02:00 run would have: implied consent
        # counts back from the day a message is sent (tend.config.today), and a demo replayed
        # today must not refuse customers its nights would have mailed.
        with contextlib.redirect_stdout(quiet), _today(night + dt.timedelta(days=1)):
            code = main(["night", "--db", shop_url, "--store", store_url,
                         "--as-of", night.isoformat()])
        if code:
            raise ConfigError(f"tend night --as-of {night} failed (exit {code}); run it alone "
                              "to see why")
        added = simulate_night(shop_url, store_url, night, seed=args.seed)
        sent = next((line.split()[-1] for line in quiet.getvalue().splitlines()
                     if line.strip().startswith("sent ")), "0")
        print(f"night {night}: {sent} sent, {added:,} simulated order(s) in their windows")
    print()
    print_lines([f"tend report --from {args.start} --to {last}", ""])
    _report(argparse.Namespace(db=shop_url, store=store_url, start=args.start, end=last,
                               format="table", by_month=False, out=None))


@contextlib.contextmanager
def _today(day: dt.date) -> Iterator[None]:
    """``TEND_TODAY`` set to ``day`` for the duration (``tend.config.today``)."""
    before = os.environ.get("TEND_TODAY")
    os.environ["TEND_TODAY"] = day.isoformat()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TEND_TODAY", None)
        else:
            os.environ["TEND_TODAY"] = before
