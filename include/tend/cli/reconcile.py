"""``tend reconcile``: an operator's decision on messages left 'unknown' by a crash or a timeout.

An 'unknown' message may or may not have reached the provider; Tend never resends one by itself
(a second copy is worse than a missing one). The outbox and SendGrid's events settle most of
them automatically (``tend.delivery.engine``); what is left waits here for a person who has
checked the provider's activity log.
"""

from __future__ import annotations

import argparse

from tend import config
from tend.cli.args import date, print_lines, store_arg

_RISK = {
    "mark-sent": "recorded as sent: they count against caps and cooldowns; if one did not go "
                 "out, that customer simply misses this message",
    "release": "back to 'claimed': the next `tend send` of their batch sends them; if one did "
               "go out, that customer gets a second copy",
    "not-sent": "recorded as failed (not sent): they hold no cap or cooldown and are never "
                "sent; if one did go out, Tend will not know it was contacted",
}


def register(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser(
        "reconcile", help="settle 'unknown' messages: mark them sent, or release them for a "
                          "resend (lists them without an action)",
        description=__doc__.splitlines()[0] + " Without an action, lists what is unknown.",
        epilog="Risks — --mark-sent: " + _RISK["mark-sent"] + ". --release: " + _RISK["release"]
               + ". --not-sent: " + _RISK["not-sent"] + ".")
    store_arg(sp)
    sp.add_argument("--as-of", type=date, help="the night (YYYY-MM-DD); required with an action")
    sp.add_argument("--batch", type=int, help="only this batch of the night (default: all)")
    act = sp.add_mutually_exclusive_group()
    act.add_argument("--mark-sent", dest="action", action="store_const", const="mark-sent",
                     help="they went out (the provider's activity log shows them)")
    act.add_argument("--release", dest="action", action="store_const", const="release",
                     help="they did not go out: back to 'claimed' for the next `tend send` "
                          "(risk: a second copy of any that did)")
    act.add_argument("--not-sent", dest="action", action="store_const", const="not-sent",
                     help="they did not go out and must not be sent: failed, holding no cap or "
                          "cooldown")
    sp.set_defaults(run=_reconcile, action=None)


def _reconcile(args: argparse.Namespace) -> int:
    from tend.errors import ConfigError
    from tend.store import ledger
    from tend.store.db import connect, require_current

    url = config.store_url(args.store)
    require_current(url)
    engine = connect(url)
    with engine.connect() as conn:
        pending = ledger.unknown_counts(conn, args.as_of, args.batch)
    if args.action is None:
        if not pending:
            print("no 'unknown' messages" + (f" on {args.as_of}" if args.as_of else ""))
            return 0
        lines = [f"{night} batch {b}: {n:,} unknown" for night, b, n in pending]
        total = sum(n for *_, n in pending)
        print_lines([*lines, f"{total:,} message(s) unknown; settle them with "
                     "`tend reconcile --as-of DATE [--batch N] --mark-sent | --release | "
                     "--not-sent` after checking the provider's activity log"])
        return 0
    if args.as_of is None:
        raise ConfigError("--as-of is required with --mark-sent, --release or --not-sent")
    with engine.begin() as conn:
        n = ledger.reconcile(conn, args.as_of, args.batch, args.action)
    where = f"{args.as_of}" + (f" batch {args.batch}" if args.batch is not None else "")
    out = [f"{n:,} unknown message(s) of {where}: {_RISK[args.action]}"]
    if args.action == "release" and n:
        batches = sorted({b for _, b, _ in pending})
        out.append("send them now with: " + "; ".join(
            f"tend send --as-of {args.as_of} --batch {b}" for b in batches))
    print_lines(out)
    return 0
