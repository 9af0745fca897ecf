"""``tend forget``: erase customers' personal data — the answer to an erasure request.

Removes the customers from the contact store (render contexts, ledger, decision log, deferred
candidates, preferences, survey answers, complaints, events, features, quarantine), the outbox
and ``tend serve``'s spool, keeping only a keyed hash of each address among the suppressions so
that they are never mailed again (``tend.store.erasure``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tend import config
from tend.cli.args import print_lines, shop_arg, store_arg


def register(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser(
        "forget", help="erase customers' personal data (an erasure request under Law 25, "
                       "PIPEDA or the GDPR); they are never mailed again",
        description=__doc__.splitlines()[0])
    store_arg(sp)
    shop_arg(sp)
    sp.add_argument("customer_ids", nargs="*", metavar="CUSTOMER_ID",
                    help="the shop's customer id(s) to erase")
    sp.add_argument("--file", type=Path,
                    help="a file of customer ids to erase, one a line (# comments allowed)")
    sp.add_argument("--outbox", type=Path,
                    help="the outbox directory to erase from (default: TEND_OUTBOX_DIR)")
    sp.add_argument("--spool", type=Path,
                    help="tend serve's spool directory (default: TEND_SPOOL_DIR)")
    sp.set_defaults(run=_forget)


def _forget(args: argparse.Namespace) -> int:
    from tend.errors import ConfigError
    from tend.store.db import require_current
    from tend.store.erasure import forget, forget_ids_from_file

    ids = list(args.customer_ids)
    if args.file is not None:
        try:
            ids += forget_ids_from_file(args.file)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the list of customers {args.file}: {exc}; give a "
                              "UTF-8 text file with one customer id a line") from exc
    if not ids:
        raise ConfigError("name the customers to forget: tend forget CUSTOMER_ID ... or "
                          "--file FILE (one id a line)")
    store_url = config.store_url(args.store)
    require_current(store_url)
    shop: str | None = config.shop_url(args.db)
    shop_file = config.sqlite_file(shop or "")
    if shop_file is not None and not Path(shop_file).exists():
        shop = None  # no shop here: the store's own records name the addresses
    outbox, spool = config.outbox_dir(args.outbox), config.spool_dir(args.spool)
    done = forget(store_url, ids, secret=config.unsubscribe_secret(), shop_url=shop,
                  outbox_dir=outbox, spool_dir=spool)
    print_lines([line for erased in done for line in erased.lines()])
    # A folder that is not there holds nothing here, which is also what a mistyped path or a
    # container without the volume looks like: say so rather than let the erasure look whole.
    for what, folder, flag, var in (("outbox", outbox, "--outbox", "TEND_OUTBOX_DIR"),
                                    ("spool", spool, "--spool", "TEND_SPOOL_DIR")):
        if not folder.is_dir():
            print(f"warning: no {what} folder at {folder}: nothing was erased from one; if "
                  f"this machine has one elsewhere, run again with {flag} DIR (or {var})",
                  file=sys.stderr)
    return 0
