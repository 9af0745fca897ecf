"""SendGrid's suppression lists in, and what the shop needs out: ``tend suppressions pull``,
``tend suppressions export`` and ``tend vouchers export``."""

from __future__ import annotations

import argparse

from tend import config
from tend.cli.args import date, out_file, print_lines, shop_arg, store_arg


def register(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("suppressions", help="SendGrid's suppression lists in; the shop's "
                                             "opt-out list out")
    verbs = sp.add_subparsers(dest="verb", required=True, metavar="VERB")
    pull = verbs.add_parser(
        "pull", help="suppress the customers on SendGrid's bounce, spam report, invalid email "
                     "and unsubscribe lists (the daily backstop for lost webhooks)")
    store_arg(pull)
    shop_arg(pull)
    pull.set_defaults(run=_pull)
    export = verbs.add_parser("export", help="write the active suppressions as CSV "
                                             "(customer_id, email, reason, since)")
    store_arg(export)
    shop_arg(export)
    export.add_argument("--out", type=out_file, required=True, help="the CSV file to write")
    export.set_defaults(run=_export_suppressions)

    vp = sub.add_parser("vouchers", help="the voucher codes in a night's emails")
    vverbs = vp.add_subparsers(dest="verb", required=True, metavar="VERB")
    vexport = vverbs.add_parser("export", help="write one night's voucher codes as CSV, to "
                                               "import as discount codes in the shop")
    store_arg(vexport)
    vexport.add_argument("--as-of", type=date, required=True, help="the night (YYYY-MM-DD)")
    vexport.add_argument("--out", type=out_file, required=True, help="the CSV file to write")
    vexport.set_defaults(run=_export_vouchers)


def _pull(args: argparse.Namespace) -> None:
    from tend.delivery.sendgrid import SendGridSettings
    from tend.listen.pull import pull_suppressions

    result = pull_suppressions(SendGridSettings.from_env(), config.store_url(args.store),
                               config.shop_url(args.db))
    print_lines(result.lines())


def _export_suppressions(args: argparse.Namespace) -> None:
    from tend.listen.exports import suppressions_csv

    n = suppressions_csv(config.store_url(args.store), config.shop_url(args.db), args.out)
    print(f"{n:,} suppression(s) written to {args.out}")


def _export_vouchers(args: argparse.Namespace) -> None:
    from tend.listen.exports import vouchers_csv

    n = vouchers_csv(config.store_url(args.store), args.as_of, args.out)
    print(f"{n:,} voucher(s) of {args.as_of} written to {args.out}")
