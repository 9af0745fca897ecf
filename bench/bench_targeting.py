"""How well Tend targets, against the demo shop's ground truth (``make bench-targeting``).

Accuracy, not speed: for each seed a demo shop (default 20,000 customers, night 2026-11-20) is
generated into a temporary directory, and

* **lapse ranking**: ROC AUC of "did not order in the 180 days before the night", ranked from
  the features as of 180 days before (``tend.signals.evaluation.lapse_aucs``): the lapse score
  beside a BG/NBD fitted on the same features and plain recency, over all customers, repeat
  buyers, one-time buyers, and the repeat buyers whose orders BG/NBD itself generated (the
  occasional archetype: the baseline's home ground);
* **seasonal customers**: precision and recall against the seasonal archetype, and the
  false-alarm rate among occasional and one-time customers with orders in two years or more;
* **check-ups**: precision and recall of the check-up reminders tonight.

Prints one row per seed, the mean and the worst seed, and whether each target of the issue is
met on every seed. ``--markdown`` prints the same tables for bench/RESULTS.md.

    .venv/bin/python bench/bench_targeting.py [--seeds 1 2 3 4 5] [--customers 20000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

NIGHT = dt.date(2026, 11, 20)
HOLDOUT = 180
GROUPS = ("all", "repeat", "one-time", "repeat, occasional")


def measure(seed: int, customers: int, workdir: Path) -> dict[str, float]:
    from tend.dev.demo import generate_demo_shop
    from tend.features.ingest import compute_from_shop
    from tend.shop.read import read_products
    from tend.signals import detect
    from tend.signals.evaluation import checkup_quality, lapse_aucs, seasonal_quality

    url = f"sqlite:///{workdir / f'shop-{seed}.db'}"
    generate_demo_shop(url, customers=customers, seed=seed, as_of=NIGHT)
    truth = pd.read_sql("SELECT * FROM demo_truth", url).set_index("customer_id")
    aucs = lapse_aucs(url, NIGHT, holdout=HOLDOUT, truth=truth)
    fs, _ = compute_from_shop(url, NIGHT)
    products = read_products(url)
    seasonal = seasonal_quality(fs, products, truth)
    checkup = checkup_quality(detect(fs, products, NIGHT), truth, NIGHT)
    row: dict[str, float] = {"seed": seed}
    for group in GROUPS:
        for ranking in ("lapse_score", "bgnbd", "recency"):
            row[f"{group}:{ranking}"] = aucs.loc[group, ranking]
        row[f"{group}:customers"] = aucs.loc[group, "customers"]
    row.update({f"seasonal:{k}": v for k, v in seasonal.items()})
    row["checkup:precision"], row["checkup:recall"] = checkup
    return row


TARGETS = (
    ("lapse AUC >= BG/NBD, all customers", lambda r: r["all:lapse_score"] >= r["all:bgnbd"]),
    ("lapse AUC >= BG/NBD, repeat buyers",
     lambda r: r["repeat:lapse_score"] >= r["repeat:bgnbd"]),
    ("lapse AUC > recency, one-time buyers",
     lambda r: r["one-time:lapse_score"] > r["one-time:recency"]),
    ("seasonal precision >= 0.95", lambda r: r["seasonal:precision"] >= 0.95),
    ("seasonal recall >= 0.9", lambda r: r["seasonal:recall"] >= 0.9),
)


def tables(rows: pd.DataFrame, markdown: bool) -> str:
    summary = pd.concat([rows, rows.mean().to_frame("mean").T, rows.min().to_frame("worst").T])
    summary.index = [*(f"seed {int(s)}" for s in rows["seed"]), "mean", "min"]
    lapse = pd.DataFrame({
        f"{g} ({ranking})": summary[f"{g}:{key}"]
        for g in GROUPS
        for ranking, key in (("lapse", "lapse_score"), ("BG/NBD", "bgnbd"),
                             ("recency", "recency"))})
    quality = pd.DataFrame({
        "seasonal precision": summary["seasonal:precision"],
        "seasonal recall": summary["seasonal:recall"],
        "false alarms, occasional (>= 2 years)": summary["seasonal:false_alarm_occasional"],
        "their number": summary["seasonal:occasional_multi_year"],
        "false alarms, all non-seasonal": summary["seasonal:false_alarm_all"],
        "checkup precision": summary["checkup:precision"],
        "checkup recall": summary["checkup:recall"],
    })
    if markdown:  # seeds as columns: twelve rankings side by side do not fit a page
        return (lapse.T.round(3).to_markdown() + "\n\n" + quality.T.round(4).to_markdown())
    return (f"lapse ranking, ROC AUC of 'no order in the last {HOLDOUT} days' (customers at "
            f"calibration: all {int(rows['all:customers'].mean()):,}, repeat "
            f"{int(rows['repeat:customers'].mean()):,}, one-time "
            f"{int(rows['one-time:customers'].mean()):,}, repeat occasional "
            f"{int(rows['repeat, occasional:customers'].mean()):,} on average)\n"
            + lapse.round(4).to_string() + "\n\nseasonal customers and check-ups\n"
            + quality.round(4).to_string())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tend-bench-targeting-") as tmp:
        rows = pd.DataFrame([measure(seed, args.customers, Path(tmp)) for seed in args.seeds])
    print(f"{len(args.seeds)} demo shops of {args.customers:,} customers, night {NIGHT}, "
          f"holdout {HOLDOUT} days ({time.perf_counter() - started:.0f} s)\n")
    print(tables(rows, args.markdown))
    print()
    ok = True
    for name, check in TARGETS:
        met = sum(bool(check(r)) for _, r in rows.iterrows())
        ok &= met == len(rows)
        print(f"{'met' if met == len(rows) else 'NOT MET':>8}  {name} ({met}/{len(rows)} seeds)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
