"""Benchmark the ingest and signals on a large demo shop (``make bench-signals``).

Creates the demo shop once (1M customers ≈ 6M orders, 12M order lines; a few minutes) and
caches it under var/bench/ (delete it after the demo changes), then measures on a fresh store
each run: a full rebuild, an incremental night where ~1% of customers have a new order, the
signal detection, the BG/NBD fit, and peak memory.

    .venv/bin/python bench/bench_signals.py [--customers 1000000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import sqlite3
import sys
import time
from pathlib import Path

NIGHT = dt.date(2026, 11, 20)
VAR = Path(__file__).resolve().parent.parent / "var" / "bench"


def peak_gib() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + kids) / 1024 / 1024


def cached_shop(customers: int) -> Path:
    """The demo shop of ``customers`` customers under var/bench/, generated on first use.

    Shared by the benchmarks that need a large shop (bench_scale.py too): generating 1M
    customers takes minutes, so it is made once and reused until deleted.
    """
    from tend.dev.demo import generate_demo_shop
    from tend.store.db import connect

    VAR.mkdir(parents=True, exist_ok=True)
    cached = VAR / f"shop-{customers}.db"
    if not cached.exists():
        t = time.perf_counter()
        tmp = cached.with_suffix(".tmp")
        for p in tmp.parent.glob(tmp.name + "*"):
            p.unlink()  # a generation that was interrupted
        summary = generate_demo_shop(f"sqlite:///{tmp}", customers=customers, seed=7,
                                     as_of=NIGHT)
        connect(f"sqlite:///{tmp}").dispose()  # closed: its WAL is folded in before the rename
        tmp.rename(cached)
        print(f"generated {cached.name}: {summary.orders:,} orders, {summary.order_lines:,} "
              f"lines in {time.perf_counter() - t:.0f}s")
    return cached


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=1_000_000)
    args = ap.parse_args()
    import logging

    from tend.features import ingest
    from tend.features.store import read_features
    from tend.signals import bgnbd, detect_all
    from tend.store import migrate

    logging.basicConfig(level=logging.INFO, format="  %(message)s")
    cached = cached_shop(args.customers)
    # The incremental night: the shop as generated, ingested in full as of the night before;
    # the night's own orders then touch ~1% of the customers.
    shop = cached
    store_path = VAR / "store.db"
    for p in VAR.glob("store.db*"):
        p.unlink()
    store = f"sqlite:///{store_path}"
    shop_url = f"sqlite:///{shop}"
    migrate(store)

    t = time.perf_counter()
    full = ingest.run_ingest(shop_url, store, NIGHT - dt.timedelta(days=1), "bench-full",
                             full=True)
    t_full = time.perf_counter() - t
    mem_full = peak_gib()
    with sqlite3.connect(shop) as con:
        n = con.execute("SELECT count(*) FROM customers").fetchone()[0]

    t = time.perf_counter()
    inc = ingest.run_ingest(shop_url, store, NIGHT, "bench-inc", lookback_days=0)
    t_inc = time.perf_counter() - t
    # and again with the default two-day lookback for late rows (re-reads ~4 days of buyers)
    t = time.perf_counter()
    inc2 = ingest.run_ingest(shop_url, store, NIGHT, "bench-inc-2", lookback_days=2)
    t_inc2 = time.perf_counter() - t

    t = time.perf_counter()
    sig = detect_all(store, shop_url, NIGHT)
    t_sig = time.perf_counter() - t

    feats = read_features(store)
    t = time.perf_counter()
    rfm = bgnbd.summarise(feats, NIGHT)
    bgnbd.fit(rfm)
    t_bg = time.perf_counter() - t

    print(f"shop: {n:,} customers, {full.orders_read:,} orders")
    print(f"full rebuild      {t_full:6.1f} s   peak memory {mem_full:.2f} GiB "
          f"({full.changed_customers:,} customers)")
    print(f"incremental night {t_inc:6.1f} s   ({inc.changed_customers:,} customers changed, "
          "lookback 0 days)")
    print(f"incremental night {t_inc2:6.1f} s   ({inc2.changed_customers:,} customers changed, "
          "default lookback 2 days)")
    print(f"detect_all        {t_sig:6.1f} s   ({len(sig):,} signals)")
    print(f"BG/NBD fit        {t_bg:6.1f} s   ({len(bgnbd.collapse(rfm)):,} distinct (x, t_x, T)"
          " rows)")
    print(f"peak memory overall {peak_gib():.2f} GiB (this process + its largest helper "
          "process: the store's reader or writer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
