"""The shop's data: demo-data, load-csv, and the analysts' features and signals CSVs."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tend import config
from tend.cli.args import date, positive, print_lines, ready_store, shop_arg

if TYPE_CHECKING:
    import pandas as pd


def register(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("demo-data", help="generate a realistic demo shop")
    shop_arg(sp)
    sp.add_argument("--customers", type=positive, default=2000,
                    help="how many customers (default: 2000)")
    sp.add_argument("--seed", type=int, default=7,
                    help="the same seed makes the same shop (default: 7)")
    sp.add_argument("--as-of", type=date, default=dt.date.today(),
                    help="the last day with orders (default: today)")
    sp.add_argument("--years", type=positive, default=3,
                    help="years of order history before --as-of (default: 3)")
    sp.set_defaults(run=_demo_data)

    sp = sub.add_parser("load-csv", help="load customers/products/orders/order_lines CSV files")
    shop_arg(sp)
    sp.add_argument("directory", type=Path, help="the folder holding products.csv, "
                    "customers.csv, orders.csv and order_lines.csv (docs/shop-data.md)")
    sp.add_argument("--quarantine", type=Path, help="where rejected rows go "
                                                     "(default: DIRECTORY/quarantine.csv)")
    sp.add_argument("--strict", action="store_true",
                    help="refuse the whole load if any row fails the row rules (default: load "
                         "the good rows and quarantine the others)")
    sp.set_defaults(run=_load_csv)

    for name, helptext in (
            ("features", "one row per customer: lapse score, next order, value, features"),
            ("signals", "one row per customer and signal: score, due date, reason")):
        sp = sub.add_parser(name, help=helptext)
        shop_arg(sp)
        sp.add_argument("--as-of", type=date, required=True,
                        help="only orders up to the end of this day (UTC) exist")
        sp.add_argument("--out", type=Path, required=True, help="CSV file to write")
        sp.add_argument("--store", help="read the store's features (ingested for --as-of) "
                                        "instead of computing them from the shop")
        sp.set_defaults(run=_analyst)


def _demo_data(args: argparse.Namespace) -> None:
    from tend.dev.demo import generate_demo_shop

    url = config.shop_url(args.db)
    summary = generate_demo_shop(url, customers=args.customers, seed=args.seed,
                                 as_of=args.as_of, years=args.years)
    print(f"demo shop at {config.mask_url(url)} (seed {args.seed}, as of {args.as_of})")
    print_lines(summary.lines())


def _load_csv(args: argparse.Namespace) -> None:
    from tend.shop.csv_import import load_csv_dir

    report = load_csv_dir(config.shop_url(args.db), args.directory,
                          quarantine_file=args.quarantine, strict=args.strict)
    print_lines(report.lines())


def _analyst(args: argparse.Namespace) -> None:
    """`tend features` / `tend signals`: CSV for analysts, computed as of any past night."""
    import pandas as pd

    from tend import signals
    from tend.features import ingest, store
    from tend.shop.read import read_products
    from tend.signals.lapsed import lapse_scores

    shop_url = config.shop_url(args.db)
    if args.store:
        store_url = ready_store(args.store)
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
        scored = lapse_scores(fs.customers, args.as_of, fs=fs,
                              products=read_products(shop_url))
        scored = scored.drop(columns=[c for c in scored if c in fs.customers])
        out = pd.concat([fs.customers[["customer_id"]], scored,
                         fs.customers.drop(columns=["customer_id"])], axis=1)
        out = out.rename(columns={"value": "value_estimate", "reason": "lapse_reason"})
    else:
        out = signals.detect(fs, read_products(shop_url), args.as_of)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    _spreadsheet_safe(out).to_csv(args.out, index=False)
    print(f"{len(out):,} rows written to {args.out}")


#: What a spreadsheet takes for the start of a formula (OWASP's "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every text cell a spreadsheet would run as a formula (a product the shop
    named ``=HYPERLINK(...)``) behind an apostrophe, which makes it show as the text it is.
    These files are for analysts' spreadsheets; numbers are not text cells and stay as they
    are."""
    from pandas.api.types import is_bool_dtype, is_datetime64_any_dtype, is_numeric_dtype

    out = frame.copy()
    for col in out.columns:
        kind = out[col].dtype
        if not (is_numeric_dtype(kind) or is_bool_dtype(kind) or is_datetime64_any_dtype(kind)):
            out[col] = out[col].astype(object)
            risky = out[col].map(lambda v: isinstance(v, str) and v.startswith(_FORMULA_START))
            out.loc[risky, col] = "'" + out.loc[risky, col]
    return out
