"""Benchmark the per-customer features of a full rebuild: ``consume_frames`` (everything at
once) and iterating ``feature_parts`` (customer ranges, as the ingest writes them).

Reading a 1M-customer shop takes longer than the features themselves, so the two frames the
features take over (orders without their ids, lines) are read once and cached as a pickle under
var/bench/; every later run loads the cache. One computation per process, so the peak RSS
(``getrusage``) is that computation's: run the script several times for a median.

    .venv/bin/python bench/bench_features.py [--shop var/bench/shop-1000000.db]
        [--mode parts|consume] [--part-lines 2000000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import pickle
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VAR = REPO / "var" / "bench"
AS_OF = dt.date(2026, 11, 19)
GIB = 1024**3


def rss_bytes() -> int:
    """Resident set size now (``getrusage`` only knows the peak)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak() -> bool:
    """Start the peak RSS afresh (Linux: ``clear_refs`` 5), so loading the cache does not count
    as the computation's peak; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def load_frames(shop: Path, as_of: dt.date) -> list:
    """[orders without order_id, lines] as the ingest hands them to the features; read from the
    shop once (read-only) and cached next to this repo's other benchmark data."""
    VAR.mkdir(parents=True, exist_ok=True)
    cache = VAR / f"features-frames-{shop.stem}-{as_of.isoformat()}.pkl"
    if not cache.exists():
        from tend.shop.read import read_history

        t = time.perf_counter()
        history = read_history(f"sqlite:///{shop.resolve()}", as_of)
        frames = [history.orders.drop(columns="order_id"), history.lines]
        del history
        tmp = cache.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            pickle.dump(frames, f, protocol=5)
        tmp.rename(cache)
        print(f"read {shop.name} in {time.perf_counter() - t:.1f} s, cached as {cache.name}")
        del frames
        gc.collect()
    with open(cache, "rb") as f:
        return pickle.load(f)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shop", type=Path, default=VAR / "shop-1000000.db",
                    help="the demo shop (SQLite, opened read-only)")
    ap.add_argument("--as-of", type=dt.date.fromisoformat, default=AS_OF)
    ap.add_argument("--mode", choices=["parts", "consume"], default="parts")
    ap.add_argument("--part-lines", type=int, default=2_000_000)
    args = ap.parse_args()

    import pandas as pd
    import pyarrow as pa

    from tend.features import compute as features

    frames = load_frames(args.shop, args.as_of)
    orders, lines = frames
    input_bytes = int(orders.memory_usage(deep=True).sum() + lines.memory_usage(deep=True).sum())
    shape = f"{len(orders):,} orders, {len(lines):,} lines"
    del orders, lines
    gc.collect()
    pa.default_memory_pool().release_unused()
    base = rss_bytes()
    clean_peak = reset_peak()

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    if args.mode == "consume":
        fc = features.consume_frames(frames)
        customers, nparts = len(fc), 1
        del fc
    else:
        customers = nparts = 0
        for part in features.feature_parts(frames, part_lines=args.part_lines):
            customers += len(part)
            nparts += 1
            del part
    wall = time.perf_counter() - t
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    peak = peak_bytes()

    ranges = f"{nparts} part(s) of part_lines={args.part_lines:,}" if args.mode == "parts" \
        else "one result"
    print(f"{args.mode}: {shape}, {customers:,} customers, {ranges} (pandas {pd.__version__})")
    print(f"  wall {wall:.2f} s (user {cpu.ru_utime - cpu0.ru_utime:.2f} s, system "
          f"{cpu.ru_stime - cpu0.ru_stime:.2f} s, {cpu.ru_minflt - cpu0.ru_minflt:,} page "
          "faults)")
    print(f"  input frames {input_bytes / GIB:.2f} GiB, RSS before {base / GIB:.2f} GiB, "
          f"peak RSS {peak / GIB:.2f} GiB ({(peak - base) / GIB:+.2f} GiB over the RSS before"
          f"{'' if clean_peak else '; peak includes loading the cache'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
