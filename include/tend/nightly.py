"""One night of Tend, as plain functions: ingest, plan (signals -> consent -> arbitration ->
claim), send a batch, summarise. The Airflow DAGs and the CLI both call these, so a night can be
run, replayed and tested without a scheduler.

"Today" is always the ``as_of`` date handed in (the run's logical date), never ``now()``:
only orders placed before the end of ``as_of`` (UTC) exist for the night.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy import func, select

from tend import ingest, shop  # noqa: F401 - shop: kept for callers of nightly.shop
from tend.config import ShopSettings
from tend.delivery.base import DeliveryBackend, DeliveryStatus, OutgoingMessage
from tend.errors import DeliveryAuthError, TemplateError
from tend.ingest import WATERMARK, IngestResult  # noqa: F401 - re-exported
from tend.logs import log, mask_email, table

# The programs stage lives in tend.plan; re-exported for the DAGs, the CLI and the send stage.
from tend.plan import PlanResult, context_for_render, plan_night, voucher_code  # noqa: F401
from tend.render import Renderer
from tend.store import ledger
from tend.store.db import connect
from tend.store.tables import (
    contact_ledger,
    decision_log,
    quarantine,
)

# -- ingest: see tend.ingest (thin delegates, for the DAGs and the CLI) ----------------------

def run_ingest(
    shop_url: str,
    store_url: str,
    as_of: dt.date,
    run_id: str,
    *,
    full: bool = False,
    lookback_days: int = 2,
) -> IngestResult:
    """Fold orders up to ``as_of`` into the feature tables (``tend.ingest.run_ingest``)."""
    return ingest.run_ingest(shop_url, store_url, as_of, run_id, full=full,
                             lookback_days=lookback_days)


def read_features(store_url: str) -> pd.DataFrame:
    """One row per customer: base features and profile (``tend.ingest.read_features``)."""
    return ingest.read_features(store_url)


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
