"""Complaints: what unhappy customers told the shop (``tend complaints``)."""

from __future__ import annotations

import argparse

from tend import config
from tend.cli.args import positive, print_lines, store_arg


def register(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("complaints", help="list open customer complaints; resolve one; send "
                                           "the staff digest of new ones")
    store_arg(sp)
    sp.set_defaults(run=_list)
    verbs = sp.add_subparsers(dest="complaints_command", metavar="VERB")
    resolve = verbs.add_parser("resolve", help="close an open complaint (marketing to the "
                                               "customer resumes)")
    store_arg(resolve)
    resolve.add_argument("id", type=positive, help="the complaint's id (tend complaints)")
    resolve.add_argument("--note", required=True,
                         help="what staff did, kept with the complaint")
    resolve.set_defaults(run=_resolve)
    digest = verbs.add_parser("digest", help="email TEND_STAFF_EMAIL the complaints no "
                                                 "digest has carried yet")
    store_arg(digest)
    digest.add_argument("--delivery", help="outbox, smtp or sendgrid (default: TEND_DELIVERY "
                                           "or outbox)")
    digest.set_defaults(run=_digest)


def _list(args: argparse.Namespace) -> None:
    from tend.reports import complaint_table
    from tend.store import complaints
    from tend.store.db import connect, require_current

    url = config.store_url(args.store)
    require_current(url)
    with connect(url).connect() as conn:
        rows = complaints.open_ones(conn)
    if not rows:
        print("no open complaints")
        return
    print_lines([f"{len(rows)} open complaint(s); marketing to these customers is paused "
                 "until resolved (tend complaints resolve ID --note TEXT)", "",
                 *complaint_table(rows)])


def _resolve(args: argparse.Namespace) -> int:
    import datetime as dt

    from tend.store import complaints
    from tend.store.db import connect, require_current

    url = config.store_url(args.store)
    require_current(url)
    note = args.note.strip()
    if not note:
        from tend.errors import ConfigError

        raise ConfigError("--note is empty; say what was done for the customer")
    with connect(url).begin() as conn:
        done = complaints.resolve(conn, args.id, note=note, now=dt.datetime.now(dt.UTC))
    if not done:
        from tend.errors import ConfigError

        raise ConfigError(f"there is no open complaint #{args.id}; `tend complaints` lists "
                          "the open ones")
    print(f"complaint #{args.id} resolved")
    return 0


def _digest(args: argparse.Namespace) -> None:
    from tend.config import ShopSettings
    from tend.delivery import configured_backend
    from tend.reports import send_complaint_digest
    from tend.store.db import require_current

    url = config.store_url(args.store)
    require_current(url)
    staff = config.staff_email()
    backend = configured_backend(args.delivery)
    try:
        sent = send_complaint_digest(url, backend=backend, settings=ShopSettings.from_env(),
                                     staff_email=staff)
    finally:
        backend.close()
    print(f"complaints digest: {sent} complaint(s) sent to staff" if sent
          else "complaints digest: no new complaints, nothing sent")
