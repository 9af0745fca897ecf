"""The ingest stage: fold the shop's orders up to a night into the feature tables of the store.

Incremental by default: customers with an order in (watermark - lookback, end of as_of] are
recomputed from their whole history, which equals a full rebuild for them (the lookback catches
orders that reached the shop database late); the shop's daily totals are rewritten from the
first day of that window on. A night earlier than the stored one (a replay) or ``full=True``
rebuilds everything as of that night.

Bad rows never stop a night: they are quarantined with a reason (``tend.shop.read``), counted in the
task log (``IngestResult.lines``) and stored in the ``quarantine`` table, which ``tend summary``
reports per night.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa

from tend.config import sqlite_file
from tend.features import store
from tend.features.columns import FeatureColumns, FeatureSet
from tend.features.compute import compute_feature_set, feature_parts
from tend.logs import log, table
from tend.shop import read as shop
from tend.store import ledger
from tend.store.db import require_current
from tend.store.sqlite_process import SqliteProcess

#: Order lines per range of customers whose features are computed and written together: the
#: helper process writes one range while the next is computed, and neither holds more.
PART_LINES = 1_000_000


@dataclass
class IngestResult:
    as_of: dt.date
    mode: str  # "full" | "incremental"
    orders_read: int
    changed_customers: int
    quarantined: Counter[str] = field(default_factory=Counter)

    def lines(self) -> list[str]:
        out = [
            f"ingest {self.as_of} ({self.mode}): {self.orders_read:,} orders read, "
            f"{self.changed_customers:,} customers updated, "
            f"{sum(self.quarantined.values()):,} rows quarantined",
        ]
        if self.quarantined:
            out += table(["quarantined because", "rows"], sorted(self.quarantined.items()))
        return out


def run_ingest(
    shop_url: str,
    store_url: str,
    as_of: dt.date,
    run_id: str,
    *,
    full: bool = False,
    lookback_days: int = 2,
    now: dt.datetime | None = None,
) -> IngestResult:
    """Fold orders up to ``as_of`` into the feature tables (see the module docstring).

    ``now`` is the wall clock of the run (default: now), only used to tell orders dated in the
    future — quarantined — from orders after a replayed night, which simply do not exist yet.
    """
    require_current(store_url)
    shop.require_schema(shop_url)
    state = store.watermark_row(store_url)

    mode = "full" if full or state is None or as_of < state.as_of else "incremental"
    # A large night into a SQLite store is written by a helper process (``SqliteProcess``):
    # for a full rebuild it is started now, so its start-up overlaps the read.
    big = mode == "full" and shop.order_rows_hint(shop_url) > store.HELPER_PROCESS_ROWS
    writer = SqliteProcess() if big and sqlite_file(store_url) else None
    try:
        since_day: dt.date | None = None
        clock = time.perf_counter()
        if mode == "full":
            history = shop.read_history(shop_url, as_of, now=now)
            changed: list[str] | None = None
        else:
            # Day-aligned, so every order of the days we rewrite in shop_daily is read.
            since_day = (_aware(state.watermark) - dt.timedelta(days=lookback_days)).date()
            since = dt.datetime.combine(since_day, dt.time(), tzinfo=dt.UTC) - dt.timedelta(
                microseconds=1)
            changed = shop.changed_customer_ids(shop_url, since, as_of)
            if len(changed) > store.HELPER_PROCESS_ROWS // 4 and sqlite_file(store_url):
                writer = SqliteProcess()
            history = shop.read_history(shop_url, as_of, changed, now=now) if changed else \
                shop.History.empty()

        t_read = time.perf_counter() - clock
        orders = history.orders
        watermark = orders["ordered_at"].max() if len(orders) else None
        # the customers and products rows the night's reads set aside (a repeated key) are
        # recorded and counted here, the one stage that writes the quarantine table
        rows_read = history.rows_read
        quarantined = [*history.quarantined, *shop.duplicated_rows(shop_url)]
        # The features take over the only references to the frames (they need no order ids),
        # and memory the reader's Arrow pool kept goes back.
        frames = [orders.drop(columns="order_id"), history.lines]
        del history, orders
        pa.default_memory_pool().release_unused()
        stamp = ledger.now()
        new_watermark = max(
            [w for w in (watermark and watermark.to_pydatetime(),
                         state and _aware(state.watermark)) if w],
            default=shop.end_of_day(as_of) - dt.timedelta(microseconds=1),
        )
        if mode == "full":
            new_watermark = watermark.to_pydatetime() if watermark is not None else new_watermark
        computing = _Timed(feature_parts(frames, part_lines=PART_LINES))
        written = store.write_night(store_url, computing, as_of=as_of, run_id=run_id,
                                    stamp=stamp, changed=changed, since_day=since_day,
                                    quarantined=quarantined, watermark=new_watermark,
                                    writer=writer)
    finally:
        if writer is not None:
            writer.close()

    result = IngestResult(
        as_of=as_of, mode=mode, orders_read=rows_read,
        changed_customers=written,
        quarantined=Counter(q.reason for q in quarantined),
    )
    for line in result.lines():
        log.info(line)
    t_rest = time.perf_counter() - clock - t_read
    log.info("ingest timings: read and validate %.1fs, then %.1fs for features %.1fs and the "
             "store (overlapping when a helper process writes)", t_read, t_rest,
             computing.seconds)
    return result


class _Timed(Iterator[FeatureColumns]):
    """The feature parts, timed: how long computing them took (for the task log)."""

    def __init__(self, parts: Iterator[FeatureColumns]) -> None:
        self._parts = parts
        self.seconds = 0.0

    def __next__(self) -> FeatureColumns:
        start = time.perf_counter()
        try:
            return next(self._parts)
        finally:
            self.seconds += time.perf_counter() - start


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def compute_from_shop(shop_url: str, as_of: dt.date, *, now: dt.datetime | None = None
                      ) -> tuple[FeatureSet, shop.History]:
    """Every feature as of ``as_of`` straight from the shop, without a store (analysts, replays:
    only orders up to the end of ``as_of`` exist for the computation)."""
    shop.require_schema(shop_url)
    history = shop.read_history(shop_url, as_of, now=now)
    return compute_feature_set(history.orders, history.lines), history
