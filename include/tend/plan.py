"""Tonight's decision: from signals to at most one claimed message per customer.

::

    signals (+ newsletter schedule) ─► one candidate per program that wants the customer
      + deferred candidates from earlier nights (expired ones are logged and dropped)
      ─► consent & suppressions ─► holdouts ─► caps, cooldowns, arbitration, claim
         (one transaction, tend.store.ledger.claim) ─► deferral of what is still relevant
      ─► every candidate's fate in the decision log

Nothing is sent here. Every candidate ends the night with a recorded fate and a sentence that
explains it, which is what ``tend why`` prints.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import delete, select, tuple_

from tend import shop
from tend.caps import held_out, holdout_period
from tend.config import ShopSettings
from tend.consent import consent_fates
from tend.errors import TemplateError
from tend.ingest import read_features
from tend.logs import log, table
from tend.programs import Program, Registry, load_registry
from tend.render import Renderer, sample_context
from tend.signals import SIGNAL_COLUMNS, detect_all
from tend.store import ledger
from tend.store.db import connect, require_current
from tend.store.tables import deferred, suppressions

#: What a signal frame carries (the contract between tend.signals and the programs stage).
SIGNAL_FRAME = SIGNAL_COLUMNS
#: Fates that mean "not tonight, but maybe tomorrow" while the candidate is still valid.
DEFERRABLE = ("capped:", "cooldown:", "lost_to:")


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


def detect_signals(store_url: str, shop_url: str, as_of: dt.date) -> pd.DataFrame:
    """Every behavioural signal tonight (tend.signals), in the SIGNAL_FRAME shape.

    A signal whose due date is still ahead (an upcoming check-up, a season about to open) is
    not a candidate yet: it comes back on its day.
    """
    sig = detect_all(store_url, shop_url, as_of)
    sig["due_date"] = pd.to_datetime(sig["due_date"]).dt.date  # occurrence keys use ISO dates
    sig["valid_until"] = pd.to_datetime(sig["valid_until"]).dt.date
    return sig.loc[sig["due_date"] <= as_of, SIGNAL_FRAME].reset_index(drop=True)


def newsletter_signals(features: pd.DataFrame, as_of: dt.date,
                       programs: Sequence[Program]) -> pd.DataFrame:
    """The calendar 'signal': every customer with an order, on the newsletter's day."""
    rows = []
    for p in programs:
        if p.schedule is None or not p.schedule.fires_on(as_of) or features.empty:
            continue
        period = p.schedule.period(as_of)
        rows.append(pd.DataFrame({
            "customer_id": features["customer_id"], "signal": "newsletter", "score": 0.1,
            "due_date": as_of, "valid_until": as_of + dt.timedelta(days=p.validity_days),
            "reason": f"newsletter for {period}", "value": features["total_spent"].astype(float),
            "sku": None, "product_name": None, "detail": json.dumps({"period": period}),
        }))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=SIGNAL_FRAME)


def candidates_for(signals: pd.DataFrame, programs: Sequence[Program], as_of: dt.date
                   ) -> pd.DataFrame:
    """One candidate per (program, signal row) the program listens to."""
    frames = []
    for p in programs:
        sig = signals.loc[signals["signal"].isin(p.signals)]
        if sig.empty:
            continue
        limit = as_of + dt.timedelta(days=p.validity_days)
        frames.append(sig.assign(
            program=p.name, kind=p.kind, priority=p.priority, cooldown_days=p.cooldown_days,
            valid_until=[min(v, limit) for v in sig["valid_until"]],
            # The same episode of the same signal is the same message, on every night.
            occurrence=sig["signal"] + ":" + sig["sku"].fillna("").astype(str) + ":"
            + sig["due_date"].astype(str),
        ))
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


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
    detector: Callable[[str, str, dt.date], pd.DataFrame] | None = None,
) -> PlanResult:
    """Decide tonight's messages and claim them in the ledger; nothing is sent here.

    Templates are checked first, so a broken template fails the run before anything is claimed.
    ``detector`` (default: every behavioural signal, ``detect_signals``) is a seam for tests
    that exercise the programs stage over many nights with a cheaper signal source.
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
    by_program = {p.name: p for p in programs}

    features = read_features(store_url)
    signals = pd.concat([(detector or detect_signals)(store_url, shop_url, as_of),
                         newsletter_signals(features, as_of, programs)], ignore_index=True)
    fresh = candidates_for(signals, programs, as_of)
    if not fresh.empty:
        last = features.set_index("customer_id")["last_order_at"].dt.date
        fresh["last_order_date"] = fresh["customer_id"].map(last)
    waiting, expired = _deferred(store_url, as_of, by_program)
    cands = _merge(fresh, waiting)
    if cands.empty and expired.empty:
        empty = pd.DataFrame(columns=["program", "fate", "count"])
        with connect(store_url).connect() as conn:
            return PlanResult(as_of, 0, empty, ledger.batches_to_send(conn, as_of))

    cands["fate"] = None
    cands["why"] = None
    customers = shop.read_customers(shop_url, cands["customer_id"].unique()) if len(cands) \
        else pd.DataFrame(columns=["customer_id"])
    with connect(store_url).connect() as conn:
        supp = pd.DataFrame(
            conn.execute(select(suppressions.c.customer_id, suppressions.c.reason)
                         .where(suppressions.c.resolved_at.is_(None))).all(),
            columns=["customer_id", "reason"],
        )
    if len(cands):
        fates = consent_fates(cands, customers, supp, as_of)
        cands["fate"], cands["why"] = fates["fate"], fates["why"]
        _holdouts(cands, by_program, as_of)

    allowed = cands.loc[cands["fate"].isna()].merge(
        customers, on="customer_id", how="left", suffixes=("", "_customer"))
    allowed.index = cands.index[cands["fate"].isna()]
    allowed["context"] = [
        r["context"] if isinstance(r.get("context"), str) and r.get("from_deferred")
        else json.dumps(build_context(r, by_program[r["program"]], settings, secret, as_of),
                        default=str)
        for r in allowed.to_dict("records")
    ]
    invalid = cands.loc[cands["fate"] == "suppressed:invalid_address", "customer_id"].unique()
    stamp = ledger.now()
    with connect(store_url).begin() as conn:
        outcome = ledger.claim(conn, allowed, as_of=as_of, run_id=run_id,
                               caps=registry.caps, batch_size=batch_size).frame
        ledger.insert_ignore(conn, suppressions, [
            {"customer_id": c, "email": None, "reason": "invalid_address",
             "source": "validation", "created_at": stamp} for c in invalid
        ])
        key = ["customer_id", "program", "occurrence"]
        claimed = outcome.set_index(key)
        idx = pd.MultiIndex.from_frame(allowed[key])
        allowed["fate"] = claimed["fate"].reindex(idx).to_numpy()
        allowed["why"] = claimed["why"].reindex(idx).to_numpy()
        allowed["message_id"] = claimed["message_id"].reindex(idx).to_numpy()
        won = allowed["fate"] == "claimed"
        allowed.loc[won, "why"] = allowed.loc[won, "reason"]
        decided = pd.concat([cands.loc[cands["fate"].notna()].assign(message_id=None), allowed])
        decided = _defer(conn, decided, as_of)
        if not expired.empty:
            decided = pd.concat([decided, expired.assign(message_id=None)], ignore_index=True)
        ledger.record_decisions(conn, decided, as_of=as_of, run_id=run_id)
        batches = ledger.batches_to_send(conn, as_of)

    counts = (decided.groupby(["program", "fate"]).size().rename("count").reset_index()
              .sort_values(["program", "count"], ascending=[True, False]))
    result = PlanResult(as_of, len(decided), counts, batches)
    for line in result.lines():
        log.info(line)
    return result


def _holdouts(cands: pd.DataFrame, programs: dict[str, Program], as_of: dt.date) -> None:
    for name, p in programs.items():
        if p.holdout_share <= 0:
            continue
        rows = cands.index[(cands["program"] == name) & cands["fate"].isna()]
        mask = held_out(cands.loc[rows, "customer_id"], name, as_of, p.holdout_share)
        hit = rows[mask]
        cands.loc[hit, "fate"] = "held_out"
        cands.loc[hit, "why"] = (f"control group: {p.holdout_share:.0%} of eligible customers "
                                 f"receive nothing from {name} in {holdout_period(as_of)}")


_DEFERRED_COLS = ["customer_id", "program", "occurrence", "kind", "priority", "score",
                  "cooldown_days", "valid_until", "last_order_date", "context", "reason"]


def _deferred(store_url: str, as_of: dt.date, programs: dict[str, Program]
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Candidates deferred on earlier nights: still valid ones compete again, others expire."""
    with connect(store_url).connect() as conn:
        rows = pd.DataFrame(conn.execute(select(deferred)).mappings().all())
    if rows.empty:
        return pd.DataFrame(columns=_DEFERRED_COLS), pd.DataFrame()
    rows["valid_until"] = pd.to_datetime(rows["valid_until"]).dt.date
    rows["last_order_date"] = pd.to_datetime(rows["last_order_date"]).dt.date
    gone = rows["valid_until"] < as_of
    # A program switched off since: its waiting messages expire with it.
    off = ~rows["program"].isin(list(programs))
    ended = rows.loc[gone | off]
    expired = ended.assign(
        fate="expired",
        why=np.where(gone.loc[gone | off],
                     "deferred until " + ended["valid_until"].astype(str)
                     + ", no longer relevant",
                     "the program was disabled while the message waited"),
    )[["customer_id", "program", "occurrence", "fate", "why"]]
    if len(expired):
        with connect(store_url).begin() as conn:
            conn.execute(delete(deferred).where(tuple_(
                deferred.c.customer_id, deferred.c.program, deferred.c.occurrence
            ).in_(list(expired[["customer_id", "program", "occurrence"]]
                       .itertuples(index=False, name=None)))))
    waiting = rows.loc[~(gone | off)].rename(columns={"last_reason": "reason"})
    waiting = waiting.assign(from_deferred=True)
    waiting["reason"] = waiting["reason"].str.replace(r"^.*?; deferred: ", "", regex=True)
    return waiting, expired


def _merge(fresh: pd.DataFrame, waiting: pd.DataFrame) -> pd.DataFrame:
    """Tonight's candidates: fresh signals, plus deferred ones the signals no longer produce."""
    if waiting.empty:
        return fresh.reset_index(drop=True).assign(from_deferred=False) if len(fresh) else fresh
    if fresh.empty:
        return waiting.reset_index(drop=True)
    key = ["customer_id", "program", "occurrence"]
    seen = pd.MultiIndex.from_frame(fresh[key])
    extra = waiting.loc[~pd.MultiIndex.from_frame(waiting[key]).isin(seen)]
    return pd.concat([fresh.assign(from_deferred=False), extra], ignore_index=True)


def _defer(conn: Any, decided: pd.DataFrame, as_of: dt.date) -> pd.DataFrame:
    """Blocked but still valid -> 'deferred' (kept in the store); claimed/final -> forgotten."""
    d = decided.reset_index(drop=True)
    blocked = d["fate"].astype(str).str.startswith(DEFERRABLE)
    valid = pd.Series([bool(v and v >= as_of) for v in d.get("valid_until", [None] * len(d))],
                      index=d.index)
    defer = blocked & valid
    d.loc[defer, "why"] = (d.loc[defer, "fate"] + ": " + d.loc[defer, "why"].astype(str)
                           + "; deferred: still valid until "
                           + d.loc[defer, "valid_until"].astype(str))
    d.loc[defer, "fate"] = "deferred"

    keys = list(d[["customer_id", "program", "occurrence"]].itertuples(index=False, name=None))
    for i in range(0, len(keys), 500):
        conn.execute(delete(deferred).where(tuple_(
            deferred.c.customer_id, deferred.c.program, deferred.c.occurrence
        ).in_(keys[i : i + 500])))
    later = d.loc[defer]
    if len(later):
        ledger.bulk_load(conn, deferred, pd.DataFrame({
            "customer_id": later["customer_id"], "program": later["program"],
            "occurrence": later["occurrence"], "kind": later["kind"],
            "priority": later["priority"].astype(int), "score": later["score"].astype(float),
            "cooldown_days": later["cooldown_days"].astype(int),
            "valid_until": later["valid_until"], "last_order_date": later["last_order_date"],
            "context": later["context"], "first_deferred_on": as_of,
            "last_reason": later["why"],
        }))
    return d


def voucher_code(secret: str, message_id: str, prefix: str) -> str:
    """Unique per message, unguessable, stable across retries (derived, not stored twice)."""
    mac = hmac.new(secret.encode(), f"voucher:{message_id}".encode(), hashlib.sha256).digest()
    code = base64.b32encode(mac).decode()[:8]
    return f"{prefix}-{code[:4]}-{code[4:]}"


def build_context(row: dict[str, Any], program: Program, settings: ShopSettings, secret: str,
                  as_of: dt.date) -> dict[str, Any]:
    """Everything the template needs, stored with the claim so a retry renders identically."""
    message_id = ledger.message_id_for(row["customer_id"], program.name, row["occurrence"])
    locale = _clean(row.get("locale")) or settings.default_locale
    detail = json.loads(row["detail"]) if isinstance(row.get("detail"), str) else {}
    ctx: dict[str, Any] = {
        "template": program.template,
        "locale": locale,
        "timezone": _clean(row.get("timezone")),
        "customer": {
            "customer_id": row["customer_id"],
            "first_name": _clean(row.get("first_name")),
            "last_name": _clean(row.get("last_name")),
            "email": _clean(row.get("email")),
            "locale": locale,
        },
        "signal": {
            "name": row["signal"],
            "reason": row["reason"],
            "due_date": str(row["due_date"]),
            "sku": _clean(row.get("sku")),
            "product_name": _clean(row.get("product_name")),
            **detail,
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
    if v is None or (isinstance(v, float) and pd.isna(v)) or v is pd.NA:
        return None
    return str(v)


_DATE_FIELDS = ("last_order_date", "due_date", "due_on", "window_start", "window_end")


def context_for_render(raw: str) -> dict[str, Any]:
    """The stored JSON context with dates turned back into dates for the templates."""
    ctx = json.loads(raw)
    sig = ctx.get("signal", {})
    for key in _DATE_FIELDS:
        if isinstance(sig.get(key), str) and len(sig[key]) == 10:
            sig[key] = dt.date.fromisoformat(sig[key])
    offer = ctx.get("offer")
    if offer and offer.get("expires_on"):
        offer["expires_on"] = dt.date.fromisoformat(offer["expires_on"])
    return ctx
