"""Benchmark reading a shop: the full read and an incremental night's read.

Times ``shop.read_history`` on a SQLite shop (the demo shop ``make bench-signals`` caches under
var/bench/) as the ingest uses it: a full read of every order and line as of the night before
the demo's last night, and that last night read incrementally (``changed_customer_ids`` since
the full read's night began, then ``read_history`` of those customers). Each case runs in a
fresh child process, so its time includes no warm-up of another case and its peak RSS (what
the process ever held, the shop's pages it mapped included) is its own.

    .venv/bin/python bench/bench_read.py [--shop var/bench/shop-1000000.db] [--runs 3]

The shop is only read. Timings move with whatever else the machine runs: compare runs made
one after another, and the CPU seconds beside the wall time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

FULL_AS_OF = dt.date(2026, 11, 19)  # the night before the demo shop's last night
NIGHT = dt.date(2026, 11, 20)
#: The incremental night reads the customers with an order since the start of the full read's
#: night (what the ingest reads after a full read of FULL_AS_OF with no lookback): two days of
#: buyers, ~18.6k customers of the 1M demo shop.
SINCE = dt.datetime.combine(FULL_AS_OF, dt.time(), tzinfo=dt.UTC) - dt.timedelta(microseconds=1)
ROOT = Path(__file__).resolve().parent.parent


def _case(shop_path: Path, case: str) -> dict[str, object]:
    """One case in this process: its wall time, peak RSS and a few counts."""
    from tend.shop import read as shop

    url = f"sqlite:///{shop_path.resolve()}"
    cpu = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    t = time.perf_counter()
    out: dict[str, object] = {}
    if case == "full":
        h = shop.read_history(url, FULL_AS_OF)
    else:
        ids = shop.changed_customer_ids(url, SINCE, NIGHT)
        out["t_changed"] = time.perf_counter() - t
        out["customers"] = len(ids)
        h = shop.read_history(url, NIGHT, ids)
    out["wall"] = time.perf_counter() - t
    out["cpu"] = sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - cpu
    out["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    out["orders"], out["lines"], out["quarantined"] = len(h.orders), len(h.lines), len(
        h.quarantined)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shop", type=Path, default=ROOT / "var" / "bench" / "shop-1000000.db",
                    help="SQLite shop database (read-only)")
    ap.add_argument("--runs", type=int, default=1, help="runs per case (the median is shown)")
    ap.add_argument("--case", choices=["full", "incremental"], action="append",
                    help="only these cases (default: both)")
    ap.add_argument("--child", choices=["full", "incremental"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.shop.exists():
        print(f"no shop at {args.shop} (make bench-signals creates it)", file=sys.stderr)
        return 2
    if args.child:
        print(json.dumps(_case(args.shop, args.child)))
        return 0
    for case in args.case or ["full", "incremental"]:
        runs = []
        for _ in range(args.runs):
            done = subprocess.run(
                [sys.executable, __file__, "--shop", str(args.shop), "--child", case],
                check=True, capture_output=True, text=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = runs[-1]
            extra = f", changed_customer_ids {r['t_changed']:.2f}s ({r['customers']:,} " \
                "customers)" if case == "incremental" else ""
            print(f"  {case}: {r['wall']:.2f}s wall, {r['cpu']:.1f}s CPU, peak "
                  f"{r['peak_gib']:.2f} GiB; {r['orders']:,} orders, {r['lines']:,} lines, "
                  f"{r['quarantined']:,} quarantined{extra}", flush=True)
        walls = [float(r["wall"]) for r in runs]
        peaks = [float(r["peak_gib"]) for r in runs]
        print(f"{case}: median {statistics.median(walls):.2f}s wall, median peak "
              f"{statistics.median(peaks):.2f} GiB over {len(runs)} run(s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
