"""The contact ledger: claim in bulk within caps, then walk each message to a final state.

Protocol (DESIGN.md)::

    claimed ──► sending ──► sent        (provider accepted it; provider id recorded)
                   │   ├──► failed      (provider refused this message; never retried blindly)
                   │   └──► unknown     (the request may have left: at-most-once, never resent)
                   └─(crash)─► unknown  (found 'sending' by the next attempt)

Claiming and the cap check happen in one transaction that holds the ledger's write lock
(``LOCK TABLE ... SHARE ROW EXCLUSIVE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so two
runs claiming at the same time cannot both pass a cap. All checks are set-based SQL over a
staging table: no query per customer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import (
    Column,
    Connection,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from tend.errors import LedgerError
from tend.programs import Cap
from tend.store.tables import contact_ledger as L
from tend.store.tables import decision_log

#: Statuses that mean "this customer got (or may have got) this message".
COUNTED = ("claimed", "sending", "sent", "unknown")


def message_id_for(customer_id: str, program: str, occurrence: str) -> str:
    """Deterministic id from the ledger key: the same candidate is the same message, forever."""
    digest = hashlib.sha256(f"{customer_id}\x1f{program}\x1f{occurrence}".encode()).hexdigest()
    return digest[:32]


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def insert_ignore(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING on both backends (reruns must be no-ops)."""
    if not rows:
        return
    dialect = conn.dialect.name
    if dialect == "postgresql":
        stmt = postgresql.insert(table).on_conflict_do_nothing()
    elif dialect == "sqlite":
        stmt = sqlite.insert(table).on_conflict_do_nothing()
    else:  # pragma: no cover - other backends are not supported for the store yet
        raise LedgerError(f"the contact store does not support {dialect}; use PostgreSQL or SQLite")
    for i in range(0, len(rows), 5000):
        conn.execute(stmt, list(rows[i : i + 5000]))


def lock_ledger(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("LOCK TABLE contact_ledger IN SHARE ROW EXCLUSIVE MODE")
    # SQLite: the engine begins every transaction with BEGIN IMMEDIATE (tend.store.db).


_stage_md = MetaData()
_stage = Table(
    "tend_claim_stage",
    _stage_md,
    Column("message_id", String(40), primary_key=True),
    Column("customer_id", String(64), nullable=False),
    Column("program", String(100), nullable=False),
    Column("occurrence", String(100), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("cooldown_days", Integer, nullable=False),
    Column("context", Text, nullable=False),
    prefixes=["TEMPORARY"],
)


@dataclass(frozen=True)
class ClaimOutcome:
    """Per candidate: ``fate`` is "claimed" or why not; batch_id set when claimed."""

    frame: pd.DataFrame  # message_id, customer_id, program, fate, why, batch_id


def claim(
    conn: Connection,
    winners: pd.DataFrame,
    *,
    as_of: dt.date,
    run_id: str,
    caps: Iterable[Cap],
    batch_size: int,
) -> ClaimOutcome:
    """Claim ``winners`` (customer_id, program, occurrence, kind, cooldown_days, context).

    Must run inside a transaction (``engine.begin()``); takes the ledger lock first. Returns
    every row with its fate: claimed, already_claimed (a rerun), cooldown:<program> or
    capped:<N>d. Caps count marketing rows in a window around ``as_of`` in both directions, so a
    replayed past night also respects messages sent after it.
    """
    lock_ledger(conn)
    cols = ["message_id", "customer_id", "program", "occurrence", "kind", "cooldown_days",
            "context"]
    if winners.empty:
        return ClaimOutcome(pd.DataFrame(columns=[*cols, "fate", "why", "batch_id"]))
    w = winners.copy()
    w["message_id"] = [
        message_id_for(c, p, o)
        for c, p, o in zip(w["customer_id"], w["program"], w["occurrence"], strict=True)
    ]
    _stage.drop(conn, checkfirst=True)
    _stage.create(conn)
    try:
        conn.execute(insert(_stage), w[cols].to_dict("records"))
        fate = pd.Series(pd.NA, index=w["message_id"].values, dtype="object")
        why = pd.Series(pd.NA, index=fate.index, dtype="object")

        def mark(ids: Iterable[str], f: str, reason: str) -> None:
            ids = [i for i in ids if pd.isna(fate.get(i))]
            fate.loc[ids] = f
            why.loc[ids] = reason

        existing = conn.execute(
            select(_stage.c.message_id).join(L, L.c.message_id == _stage.c.message_id)
        ).scalars()
        mark(existing, "already_claimed", "this message was already claimed by an earlier run")

        for days in sorted({int(d) for d in w["cooldown_days"]}):
            if days <= 0:
                continue
            q = (
                select(_stage.c.message_id, _stage.c.program)
                .join(L, and_(L.c.customer_id == _stage.c.customer_id,
                              L.c.program == _stage.c.program))
                .where(_stage.c.cooldown_days == days)
                .where(L.c.status.in_(COUNTED))
                .where(L.c.as_of > as_of - dt.timedelta(days=days))
                .where(L.c.as_of < as_of + dt.timedelta(days=days))
                .where(L.c.message_id != _stage.c.message_id)
                .distinct()
            )
            for mid, program in conn.execute(q):
                mark([mid], f"cooldown:{program}",
                     f"already contacted by {program} within its {days}-day cooldown")

        for cap in sorted(caps, key=lambda c: c.days):
            q = (
                select(_stage.c.message_id)
                .join(L, L.c.customer_id == _stage.c.customer_id)
                .where(_stage.c.kind == "marketing")
                .where(L.c.kind == "marketing")
                .where(L.c.status.in_(COUNTED))
                .where(L.c.as_of > as_of - dt.timedelta(days=cap.days))
                .where(L.c.as_of < as_of + dt.timedelta(days=cap.days))
                .group_by(_stage.c.message_id)
                .having(func.count() >= cap.messages)
            )
            mark(conn.execute(q).scalars(), cap.label,
                 f"cap reached: {cap.messages} marketing message(s) in {cap.days} days")

        free = fate.isna()
        fate.loc[free] = "claimed"
        why.loc[free] = "won tonight's arbitration and passed caps"
        w["fate"] = fate.loc[w["message_id"]].to_numpy()
        w["why"] = why.loc[w["message_id"]].to_numpy()

        to_claim = w.loc[w["fate"] == "claimed"].reset_index(drop=True)
        first_batch = (
            conn.execute(select(func.coalesce(func.max(L.c.batch_id), -1)).where(
                L.c.as_of == as_of)).scalar_one() + 1
        )
        to_claim["batch_id"] = first_batch + (to_claim.index // batch_size)
        stamp = now()
        rows = [
            {
                "message_id": r.message_id, "customer_id": r.customer_id,
                "program": r.program, "occurrence": r.occurrence, "kind": r.kind,
                "status": "claimed", "as_of": as_of, "run_id": run_id,
                "batch_id": int(r.batch_id), "context": r.context, "claimed_at": stamp,
            }
            for r in to_claim.itertuples()
        ]
        if rows:
            conn.execute(insert(L), rows)
        w = w.merge(to_claim[["message_id", "batch_id"]], on="message_id", how="left")
    finally:
        _stage.drop(conn, checkfirst=True)
    return ClaimOutcome(w[[*cols, "fate", "why", "batch_id"]])


def record_decisions(
    conn: Connection, decisions: pd.DataFrame, *, as_of: dt.date, run_id: str
) -> None:
    """Write each candidate's fate; the first story of a night is kept on reruns."""
    stamp = now()
    rows = [
        {"as_of": as_of, "run_id": run_id, "customer_id": r.customer_id, "program": r.program,
         "fate": r.fate, "reason": r.why, "created_at": stamp,
         "message_id": None if pd.isna(r.message_id) else r.message_id}
        for r in decisions.itertuples()
    ]
    insert_ignore(conn, decision_log, rows)


# -- sending ---------------------------------------------------------------------------------

def batches_to_send(conn: Connection, as_of: dt.date) -> list[int]:
    q = (select(L.c.batch_id).where(L.c.as_of == as_of)
         .where(L.c.status.in_(("claimed", "sending"))).distinct().order_by(L.c.batch_id))
    return [int(b) for b in conn.execute(q).scalars()]


def recover_interrupted(conn: Connection, as_of: dt.date, batch_id: int) -> int:
    """A row still 'sending' means a worker died mid-request: it may have gone out. Never resend."""
    res = conn.execute(
        update(L)
        .where(L.c.as_of == as_of, L.c.batch_id == batch_id, L.c.status == "sending")
        .values(status="unknown", finished_at=now(),
                error="the sending worker stopped mid-request; not resent (at-most-once)")
    )
    return res.rowcount or 0


def next_claimed(conn: Connection, as_of: dt.date, batch_id: int, limit: int) -> list[Any]:
    q = (select(L.c.message_id, L.c.customer_id, L.c.program, L.c.kind, L.c.context, L.c.run_id)
         .where(L.c.as_of == as_of, L.c.batch_id == batch_id, L.c.status == "claimed")
         .order_by(L.c.message_id).limit(limit))
    return list(conn.execute(q))


def mark_sending(conn: Connection, message_ids: Sequence[str]) -> None:
    """One statement for the whole chunk, committed before any request leaves."""
    res = conn.execute(
        update(L).where(L.c.message_id.in_(list(message_ids)), L.c.status == "claimed")
        .values(status="sending", sending_at=now())
    )
    if res.rowcount != len(message_ids):
        raise LedgerError(
            f"expected to mark {len(message_ids)} messages 'sending' but {res.rowcount} were "
            "still 'claimed': another worker is sending the same batch; check the Airflow pool"
        )


def release(conn: Connection, message_ids: Sequence[str]) -> None:
    """Back to 'claimed': only for requests known not to have been accepted (auth refused)."""
    conn.execute(
        update(L).where(L.c.message_id.in_(list(message_ids)), L.c.status == "sending")
        .values(status="claimed", sending_at=None)
    )


def record_results(conn: Connection, results: Sequence[Mapping[str, Any]]) -> None:
    """results: dicts with message_id, status (sent|failed|unknown), provider_id, error."""
    if not results:
        return
    stmt = (
        update(L)
        .where(L.c.message_id == bindparam("mid"), L.c.status == "sending")
        .values(status=bindparam("st"), provider_id=bindparam("pid"),
                error=bindparam("err"), finished_at=bindparam("fin"))
    )
    stamp = now()
    conn.execute(stmt, [
        {"mid": r["message_id"], "st": r["status"], "pid": r.get("provider_id"),
         "err": r.get("error"), "fin": stamp} for r in results
    ])


def status_counts(conn: Connection, as_of: dt.date) -> dict[str, int]:
    q = select(L.c.status, func.count()).where(L.c.as_of == as_of).group_by(L.c.status)
    return {s: int(n) for s, n in conn.execute(q)}

