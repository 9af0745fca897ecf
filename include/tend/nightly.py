"""One night of Tend, as plain functions: ingest, plan (signals -> consent -> arbitration ->
claim), send a batch, summarise. The Airflow DAGs and the CLI both call these, so a night can be
run, replayed and tested without a scheduler.

"Today" is always the ``as_of`` date handed in (the run's logical date), never ``now()``:
only orders placed before the end of ``as_of`` (UTC) exist for the night.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy import delete, func, select

from tend import shop
from tend.config import ShopSettings
from tend.delivery.base import DeliveryBackend, DeliveryStatus, OutgoingMessage
from tend.errors import DeliveryAuthError, TemplateError
from tend.features import FEATURE_COLUMNS, compute_features
from tend.logs import log, mask_email, table

# The programs stage lives in tend.plan; re-exported for the DAGs, the CLI and the send stage.
from tend.plan import PlanResult, context_for_render, plan_night, voucher_code  # noqa: F401
from tend.render import Renderer
from tend.store import ledger
from tend.store.db import connect, require_current
from tend.store.tables import (
    contact_ledger,
    customer_features,
    decision_log,
    ingest_state,
    quarantine,
)

WATERMARK = "orders"


# -- ingest ----------------------------------------------------------------------------------

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
) -> IngestResult:
    """Fold orders up to ``as_of`` into the feature table.

    Incremental by default: customers with an order in (watermark - lookback, end of as_of] are
    recomputed from their whole history, which equals a full rebuild for them (the lookback
    catches orders that reached the shop database late). A night earlier than the stored one
    (a replay) or ``full=True`` rebuilds everything as of that night.
    """
    require_current(store_url)
    shop.require_schema(shop_url)
    store = connect(store_url)
    with store.connect() as conn:
        state = conn.execute(
            select(ingest_state).where(ingest_state.c.name == WATERMARK)
        ).first()

    mode = "full" if full or state is None or as_of < state.as_of else "incremental"
    if mode == "full":
        orders, bad = shop.read_orders(shop_url, as_of)
        changed: list[str] | None = None
    else:
        since = _aware(state.watermark) - dt.timedelta(days=lookback_days)
        changed = shop.changed_customer_ids(shop_url, since, as_of)
        orders, bad = shop.read_orders(shop_url, as_of, changed)

    feats = compute_features(orders)
    stamp = ledger.now()
    feats = feats.assign(as_of=as_of, updated_at=stamp)
    watermark = orders["ordered_at"].max() if len(orders) else None
    new_watermark = max(
        [w for w in (watermark and watermark.to_pydatetime(),
                     state and _aware(state.watermark)) if w],
        default=shop.end_of_day(as_of) - dt.timedelta(microseconds=1),
    )
    if mode == "full":
        new_watermark = watermark.to_pydatetime() if watermark is not None else new_watermark

    with store.begin() as conn:
        if changed is None:
            conn.execute(delete(customer_features))
        else:
            for i in range(0, len(changed), 900):
                conn.execute(delete(customer_features).where(
                    customer_features.c.customer_id.in_(changed[i : i + 900])))
        records = feats[[*FEATURE_COLUMNS, "as_of", "updated_at"]].to_dict("records")
        for r in records:
            for k in ("first_order_at", "last_order_at"):
                r[k] = r[k].to_pydatetime()
            for k in ("mean_interval_days", "median_interval_days"):
                r[k] = None if pd.isna(r[k]) else float(r[k])
            r["orders_count"] = int(r["orders_count"])
        for i in range(0, len(records), 5000):
            conn.execute(customer_features.insert(), records[i : i + 5000])
        ledger.insert_ignore(conn, quarantine, [
            {"as_of": as_of, "run_id": run_id, "source": q.source, "record_key": q.record_key,
             "reason": q.reason, "payload": json.dumps(q.payload, default=str),
             "created_at": stamp}
            for q in bad
        ])
        conn.execute(delete(ingest_state).where(ingest_state.c.name == WATERMARK))
        conn.execute(ingest_state.insert().values(
            name=WATERMARK, watermark=new_watermark, as_of=as_of, updated_at=stamp))

    result = IngestResult(
        as_of=as_of, mode=mode, orders_read=len(orders) + len(bad),
        changed_customers=len(feats), quarantined=Counter(q.reason for q in bad),
    )
    for line in result.lines():
        log.info(line)
    return result


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def read_features(store_url: str) -> pd.DataFrame:
    with connect(store_url).connect() as conn:
        df = pd.DataFrame(conn.execute(select(customer_features)).mappings().all())
    if df.empty:
        return pd.DataFrame(columns=FEATURE_COLUMNS)
    for col in ("first_order_at", "last_order_at"):
        df[col] = pd.to_datetime(df[col], utc=True)
    for col in ("mean_interval_days", "median_interval_days", "total_spent", "avg_order_value"):
        df[col] = pd.to_numeric(df[col])
    return df


# -- plan: see tend.plan (re-exported above for the DAGs, the CLI and the send stage) ---------


# -- send ------------------------------------------------------------------------------------

@dataclass
class SendResult:
    batch_id: int
    counts: Counter[str] = field(default_factory=Counter)
    recovered_unknown: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        rate = sum(self.counts.values()) / self.seconds if self.seconds else 0.0
        head = (f"batch {self.batch_id}: " + ", ".join(
            f"{k} {v:,}" for k, v in sorted(self.counts.items())) or "nothing to send")
        out = [f"{head} in {self.seconds:.1f}s ({rate:,.0f} msg/s)"]
        if self.recovered_unknown:
            out.append(f"{self.recovered_unknown:,} message(s) were mid-send when a previous "
                       "attempt stopped: marked unknown, not resent")
        return out


def send_batch(
    store_url: str,
    as_of: dt.date,
    batch_id: int,
    *,
    backend: DeliveryBackend,
    renderer: Renderer,
    settings: ShopSettings,
    chunk_size: int = 50,
    progress_every: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
) -> SendResult:
    """Send every claimed message of one batch, following the ledger protocol.

    Each chunk is rendered, marked 'sending' in one committed statement, handed to the
    backend, and its results recorded. A crash between those steps leaves 'sending' rows that the
    next attempt turns into 'unknown' (at most ``chunk_size`` of them): never a second copy.
    """
    engine = connect(store_url)
    result = SendResult(batch_id)
    start = last_report = clock()
    with engine.begin() as conn:
        result.recovered_unknown = ledger.recover_interrupted(conn, as_of, batch_id)
    if result.recovered_unknown:
        result.counts["unknown"] += result.recovered_unknown
    while True:
        with engine.connect() as conn:
            rows = ledger.next_claimed(conn, as_of, batch_id, chunk_size)
        if not rows:
            break
        outgoing: list[OutgoingMessage] = []
        failed: list[dict[str, Any]] = []
        for r in rows:
            try:
                outgoing.append(_message(r, renderer, settings))
            except TemplateError as exc:
                failed.append({"message_id": r.message_id, "status": "failed",
                               "error": f"render: {exc}"})
        ids = [r.message_id for r in rows]
        with engine.begin() as conn:
            ledger.mark_sending(conn, ids)
        try:
            results = backend.send(outgoing) if outgoing else []
        except DeliveryAuthError:
            with engine.begin() as conn:
                ledger.release(conn, [m.message_id for m in outgoing])
                ledger.record_results(conn, failed)
            raise
        recorded = [
            {"message_id": res.message_id, "status": str(res.status),
             "provider_id": res.provider_id, "error": res.error}
            for res in results
        ] + failed
        with engine.begin() as conn:
            ledger.record_results(conn, recorded)
        result.counts.update(r["status"] for r in recorded)
        for res in results:
            if res.status != DeliveryStatus.SENT:
                log.warning("message %s to %s: %s (%s)", res.message_id,
                            mask_email(_to(outgoing, res.message_id)), res.status, res.error)
        if clock() - last_report >= progress_every:
            last_report = clock()
            done = sum(result.counts.values())
            log.info("batch %s: %s so far, %.0f msg/s", batch_id,
                     dict(result.counts), done / max(last_report - start, 1e-9))
    result.seconds = clock() - start
    for line in result.lines():
        log.info(line)
    return result


def _to(messages: Sequence[OutgoingMessage], message_id: str) -> str | None:
    return next((m.to_email for m in messages if m.message_id == message_id), None)


def _message(row: Any, renderer: Renderer, settings: ShopSettings) -> OutgoingMessage:
    ctx = context_for_render(row.context)
    customer = ctx["customer"]
    rendered = renderer.render(ctx["template"], ctx["locale"], ctx,
                               customer_id=row.customer_id, kind=row.kind)
    name = " ".join(x for x in (customer.get("first_name"), customer.get("last_name")) if x)
    return OutgoingMessage(
        message_id=row.message_id,
        to_email=customer["email"],
        to_name=name or None,
        from_email=settings.from_email,
        from_name=settings.from_name,
        reply_to=settings.reply_to,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        headers=rendered.headers,
        categories=(row.program, row.kind),
        custom_args={"tend_message_id": row.message_id, "program": row.program,
                     "kind": row.kind, "run_id": row.run_id},
    )


# -- summary and the story of one customer ---------------------------------------------------

def summary_lines(store_url: str, as_of: dt.date) -> list[str]:
    with connect(store_url).connect() as conn:
        fates = conn.execute(
            select(decision_log.c.program, decision_log.c.fate, func.count())
            .where(decision_log.c.as_of == as_of)
            .group_by(decision_log.c.program, decision_log.c.fate)
        ).all()
        statuses = ledger.status_counts(conn, as_of)
        quarantined = conn.execute(
            select(quarantine.c.reason, func.count()).where(quarantine.c.as_of == as_of)
            .group_by(quarantine.c.reason)).all()
    candidates = sum(n for _, _, n in fates)
    skipped = Counter()
    for _, fate, n in fates:
        if fate != "claimed":
            skipped[fate] += n
    out = [f"Tend night {as_of}",
           f"  candidates  {candidates:,}",
           f"  claimed     {sum(n for _, f, n in fates if f == 'claimed'):,}",
           f"  sent        {statuses.get('sent', 0):,}",
           f"  failed      {statuses.get('failed', 0):,}",
           f"  unknown     {statuses.get('unknown', 0):,}",
           f"  waiting     {statuses.get('claimed', 0) + statuses.get('sending', 0):,}",
           f"  skipped     {sum(skipped.values()):,}"]
    out += ["", *table(["skipped because", "customers"], sorted(skipped.items(),
                                                                key=lambda kv: -kv[1]))]
    if quarantined:
        out += ["", *table(["quarantined because", "rows"], [tuple(r) for r in quarantined])]
    return out


def why_lines(store_url: str, customer_id: str, as_of: dt.date | None = None) -> list[str]:
    """The story of one customer: every decision and message, newest night first."""
    with connect(store_url).connect() as conn:
        q = select(decision_log).where(decision_log.c.customer_id == customer_id)
        if as_of is not None:
            q = q.where(decision_log.c.as_of == as_of)
        decisions = conn.execute(q.order_by(decision_log.c.as_of.desc())).mappings().all()
        msgs = {m["message_id"]: m for m in conn.execute(
            select(contact_ledger).where(contact_ledger.c.customer_id == customer_id)
        ).mappings()}
    if not decisions:
        when = f" on {as_of}" if as_of else ""
        return [f"customer {customer_id}: no decisions recorded{when} "
                "(no signal fired for them, or the night has not run)"]
    out = [f"customer {customer_id}"]
    for d in decisions:
        line = f"  {d['as_of']}  {d['program']:<12} {d['fate']:<28} {d['reason']}"
        m = msgs.get(d["message_id"]) if d["message_id"] else None
        if m:
            line += f"\n{'':16}message {m['message_id']}: {m['status']}"
            if m["provider_id"]:
                line += f" ({m['provider_id']})"
            if m["error"]:
                line += f" — {m['error']}"
        out.append(line)
    return out
