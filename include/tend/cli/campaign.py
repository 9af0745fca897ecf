"""Campaigns: ``tend campaign upload-audience`` and ``tend campaign show``."""

from __future__ import annotations

import argparse
from pathlib import Path

from tend import config
from tend.cli.args import print_lines, shop_arg, store_arg


def register(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("campaign", help="campaigns started from the tend_campaign form")
    verbs = sp.add_subparsers(dest="verb", required=True, metavar="VERB")
    up = verbs.add_parser("upload-audience",
                          help="store a CSV of customer ids as an audience for the form's "
                               "'uploaded list'")
    up.add_argument("name", help="the audience's name, written in the form's 'Uploaded list "
                                 "name'")
    up.add_argument("file", type=Path, help="CSV with a customer_id column (or only ids)")
    shop_arg(up)
    store_arg(up)
    up.set_defaults(run=_upload)
    show = verbs.add_parser("show", help="a campaign's status and its last reports; without "
                                         "a name, every campaign and uploaded audience")
    show.add_argument("name", nargs="?",
                      help="one campaign (default: every campaign and uploaded audience)")
    store_arg(show)
    show.set_defaults(run=_show)


def _upload(args: argparse.Namespace) -> None:
    from tend.campaigns.upload import upload_audience

    result = upload_audience(config.store_url(args.store), config.shop_url(args.db),
                             args.name, args.file)
    print_lines(result.lines())


def _show(args: argparse.Namespace) -> None:
    from tend.campaigns.run import show_lines

    print_lines(show_lines(config.store_url(args.store), args.name))
