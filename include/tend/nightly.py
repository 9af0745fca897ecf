"""One night of Tend, as plain functions: ingest, plan (signals -> consent -> arbitration ->
claim), send a batch, summarise. The Airflow DAGs and the CLI both call these, so a night can be
run, replayed and tested without a scheduler.

"Today" is always the ``as_of`` date handed in (the run's logical date), never ``now()``:
only orders placed before the end of ``as_of`` (UTC) exist for the night.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
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
from tend.consent import consent_fates
from tend.delivery.base import DeliveryBackend, DeliveryStatus, OutgoingMessage
from tend.errors import DeliveryAuthError, TemplateError
from tend.features import FEATURE_COLUMNS, compute_features
from tend.logs import log, mask_email, table
from tend.programs import Program, Registry, load_registry
from tend.render import Renderer, sample_context
from tend.signals.lapsed import detect_lapsed
from tend.store import ledger
from tend.store.db import connect, require_current
from tend.store.tables import (
    contact_ledger,
    customer_features,
    decision_log,
    ingest_state,
    quarantine,
    suppressions,
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


# -- plan ------------------------------------------------------------------------------------

@dataclass
class PlanResult:
    as_of: dt.date
    candidates: int
    fates: pd.DataFrame  # program, fate, count
    batches: list[int]

    def claimed(self) -> int:
        return int(self.fates.loc[self.fates["fate"] == "claimed", "count"].sum())

    def lines(self) -> list[str]:
        out = [f"plan {self.as_of}: {self.candidates:,} candidates, {self.claimed():,} claimed "
               f"in {len(self.batches)} batch(es)"]
        rows = [(r.program, r.fate, int(r.count)) for r in self.fates.itertuples()]
        return out + table(["program", "fate", "customers"], rows)


def detect_signals(features: pd.DataFrame, as_of: dt.date, signal: str) -> pd.DataFrame:
    if signal == "lapsed":
        return detect_lapsed(features, as_of)
    raise ValueError(f"no detector for signal {signal!r}")  # registry validation prevents this


def plan_night(
    shop_url: str,
    store_url: str,
    as_of: dt.date,
    run_id: str,
    *,
    settings: ShopSettings,
    renderer: Renderer,
    secret: str,
    registry: Registry | None = None,
    batch_size: int = 5000,
) -> PlanResult:
    """Decide tonight's messages and claim them in the ledger; nothing is sent here.

    Templates are checked first, so a broken template fails the run before anything is claimed.
    """
    require_current(store_url)
    registry = registry or load_registry()
    programs = registry.enabled()
    for program in programs:
        problems = renderer.check(program.template, ("en", "fr"),
                                  sample_context(program.template))
        if problems:
            raise TemplateError(
                f"program {program.name}: template {program.template!r} failed its check: "
                + "; ".join(problems), template=program.template)

    features = read_features(store_url)
    cands = _candidates(features, as_of, programs)
    if cands.empty:
        empty = pd.DataFrame(columns=["program", "fate", "count"])
        return PlanResult(as_of, 0, empty, _batches(store_url, as_of))

    customers = shop.read_customers(shop_url, cands["customer_id"].unique())
    with connect(store_url).connect() as conn:
        supp = pd.DataFrame(
            conn.execute(select(suppressions.c.customer_id, suppressions.c.reason)
                         .where(suppressions.c.resolved_at.is_(None))).all(),
            columns=["customer_id", "reason"],
        )
    fates = consent_fates(cands, customers, supp, as_of)
    cands = cands.join(fates)

    # Arbitration: the best allowed program per customer wins; the others are told why.
    allowed = cands.loc[cands["fate"].isna()].sort_values(
        ["customer_id", "priority", "score"], ascending=[True, False, False])
    winners = allowed.drop_duplicates("customer_id", keep="first")
    lost = allowed.index.difference(winners.index)
    won_by = winners.set_index("customer_id")["program"]
    cands.loc[lost, "fate"] = "lost_to:" + cands.loc[lost, "customer_id"].map(won_by)
    cands.loc[lost, "why"] = "another program had a better message for this customer tonight"

    winners = winners.merge(customers, on="customer_id", how="left")
    winners["context"] = [
        json.dumps(_context(r, by_name(programs, r["program"]), settings, secret, as_of),
                   default=str)
        for r in winners.to_dict("records")
    ]
    invalid = cands.loc[cands["fate"] == "suppressed:invalid_address", "customer_id"].unique()
    stamp = ledger.now()
    with connect(store_url).begin() as conn:
        outcome = ledger.claim(conn, winners, as_of=as_of, run_id=run_id,
                               caps=registry.caps, batch_size=batch_size).frame
        ledger.insert_ignore(conn, suppressions, [
            {"customer_id": c, "email": None, "reason": "invalid_address",
             "source": "validation", "created_at": stamp} for c in invalid
        ])
        decided = pd.concat([
            cands.loc[cands["fate"].notna(), ["customer_id", "program", "fate", "why"]]
            .assign(message_id=None),
            outcome[["customer_id", "program", "fate", "why", "message_id"]],
        ], ignore_index=True)
        decided.loc[decided["fate"] != "claimed", "message_id"] = None
        won = decided["fate"] == "claimed"
        signal_reason = winners.set_index("customer_id")["reason"]
        decided.loc[won, "why"] = decided.loc[won, "customer_id"].map(signal_reason)
        ledger.record_decisions(conn, decided, as_of=as_of, run_id=run_id)
        batches = ledger.batches_to_send(conn, as_of)

    counts = (decided.groupby(["program", "fate"]).size().rename("count").reset_index()
              .sort_values(["program", "count"], ascending=[True, False]))
    result = PlanResult(as_of, len(cands), counts, batches)
    for line in result.lines():
        log.info(line)
    return result


def by_name(programs: Sequence[Program], name: str) -> Program:
    return next(p for p in programs if p.name == name)


def _batches(store_url: str, as_of: dt.date) -> list[int]:
    with connect(store_url).connect() as conn:
        return ledger.batches_to_send(conn, as_of)


def _candidates(features: pd.DataFrame, as_of: dt.date, programs: Sequence[Program]
                ) -> pd.DataFrame:
    frames = []
    cache: dict[str, pd.DataFrame] = {}
    for p in programs:
        if p.signal not in cache:
            cache[p.signal] = detect_signals(features, as_of, p.signal)
        sig = cache[p.signal]
        if sig.empty:
            continue
        frames.append(sig.assign(
            program=p.name, kind=p.kind, priority=p.priority, cooldown_days=p.cooldown_days,
            # One message per lapse episode: a new order starts a new episode.
            occurrence=p.signal + ":" + sig["last_order_date"].astype(str),
        ))
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


def voucher_code(secret: str, message_id: str, prefix: str) -> str:
    """Unique per message, unguessable, stable across retries (derived, not stored twice)."""
    mac = hmac.new(secret.encode(), f"voucher:{message_id}".encode(), hashlib.sha256).digest()
    code = base64.b32encode(mac).decode()[:8]
    return f"{prefix}-{code[:4]}-{code[4:]}"


def _context(row: dict[str, Any], program: Program, settings: ShopSettings, secret: str,
             as_of: dt.date) -> dict[str, Any]:
    message_id = ledger.message_id_for(row["customer_id"], program.name, row["occurrence"])
    ctx: dict[str, Any] = {
        "template": program.template,
        "locale": row.get("locale") or settings.default_locale,
        "customer": {
            "customer_id": row["customer_id"],
            "first_name": _clean(row.get("first_name")),
            "last_name": _clean(row.get("last_name")),
            "email": row.get("email"),
            "locale": row.get("locale") or settings.default_locale,
        },
        "signal": {
            "reason": row["reason"],
            "days_since_last_order": int(row["days_since_last_order"]),
            "orders_count": int(row["orders_count"]),
            "last_order_date": str(row["last_order_date"]),
        },
    }
    if program.offer is not None:
        o = program.offer
        ctx["offer"] = {
            "code": voucher_code(secret, message_id, o.code_prefix),
            "amount": o.amount,
            "currency": settings.currency,
            "kind": o.kind,
            "expires_on": str(as_of + dt.timedelta(days=o.valid_days)),
        }
    return ctx


def _clean(v: Any) -> str | None:
    return None if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)


def context_for_render(raw: str) -> dict[str, Any]:
    """The stored JSON context with dates turned back into dates for the templates."""
    ctx = json.loads(raw)
    sig = ctx.get("signal", {})
    if sig.get("last_order_date"):
        sig["last_order_date"] = dt.date.fromisoformat(sig["last_order_date"])
    offer = ctx.get("offer")
    if offer and offer.get("expires_on"):
        offer["expires_on"] = dt.date.fromisoformat(offer["expires_on"])
    return ctx


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
