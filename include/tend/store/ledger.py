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
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import (
    Column,
    Connection,
    Date,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from tend.errors import LedgerError
from tend.logs import log
from tend.programs import Cap
from tend.store.tables import contact_ledger as L
from tend.store.tables import decision_log

#: Statuses that mean "this customer got (or may have got) this message".
COUNTED = ("claimed", "sending", "sent", "unknown")


def message_id_for(customer_id: str, program: str, occurrence: str) -> str:
    """Deterministic id from the ledger key: the same candidate is the same message, forever."""
    return message_ids([customer_id], [program], [occurrence])[0]


def message_ids(customers: Iterable[str], programs: Iterable[str],
                occurrences: Iterable[str]) -> list[str]:
    """``message_id_for`` over columns (the same ids, without per-row call overhead)."""
    sha = hashlib.sha256
    return [sha(f"{c}\x1f{p}\x1f{o}".encode()).hexdigest()[:32]
            for c, p, o in zip(customers, programs, occurrences, strict=True)]


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


#: Memory for the claim's hash joins and sorts on PostgreSQL (SET LOCAL: this transaction only).
#: The server default (4MB) makes a million-candidate join spill to disk in many batches.
CLAIM_WORK_MEM = os.environ.get("TEND_CLAIM_WORK_MEM", "256MB")


def lock_ledger(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("LOCK TABLE contact_ledger IN SHARE ROW EXCLUSIVE MODE")
        conn.exec_driver_sql("SELECT set_config('work_mem', %s, true)", (CLAIM_WORK_MEM,))
    # SQLite: the engine begins every transaction with BEGIN IMMEDIATE (tend.store.db).


_stage_md = MetaData()
_stage = Table(
    "tend_claim_stage",
    _stage_md,
    # No keys or indexes: candidates are unique by construction, and the staging table is only
    # ever scanned whole (a hash side of each join), so an index would only slow the load.
    Column("message_id", String(40), nullable=False),
    Column("customer_id", String(64), nullable=False),
    Column("program", String(100), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("cooldown_days", Integer, nullable=False),
    prefixes=["TEMPORARY"],
)
_STAGE_COLS = ["message_id", "customer_id", "program", "kind", "cooldown_days"]


@dataclass(frozen=True)
class ClaimOutcome:
    """Per candidate: ``fate`` is "claimed" or why not; batch_id set when claimed.

    ``blocked`` is True where a cap, a cooldown or a better message stood in the way tonight,
    which is what may be deferred to another night (as opposed to already_claimed).
    """

    frame: pd.DataFrame  # message_id, customer_id, program, occurrence, fate, why, batch_id


def claim(
    conn: Connection,
    candidates: pd.DataFrame,
    *,
    as_of: dt.date,
    run_id: str,
    caps: Iterable[Cap],
    batch_size: int,
    context_for: Callable[[pd.DataFrame], Sequence[str]] | None = None,
) -> ClaimOutcome:
    """Arbitrate ``candidates`` and claim at most one message per customer, within caps.

    ``candidates``: customer_id, program, occurrence, kind, priority, score, cooldown_days,
    and either a ``context`` column or ``context_for``, which builds the contexts of the
    winners only (a night may have many more candidates than messages). Must run inside a
    transaction (``engine.begin()``); takes the ledger lock first, so the caps it checks cannot
    change before its claims commit.

    Set-based: the candidates' keys go to a temporary table in one bulk load (COPY on
    PostgreSQL); one query per rule flags what is blocked (already claimed, cooldown, each cap);
    arbitration picks the best unblocked candidate per customer by priority then score; the
    winners go to the ledger in one bulk insert. No query per customer.

    Caps and cooldowns count ledger rows in a window around ``as_of`` in both directions, so a
    replayed past night also respects messages sent after it.
    """
    started = time.perf_counter()
    lock_ledger(conn)
    out_cols = ["message_id", "customer_id", "program", "occurrence", "kind", "fate", "why",
                "batch_id"]
    if candidates.empty:
        return ClaimOutcome(pd.DataFrame(columns=out_cols))
    c = candidates.reset_index(drop=True).copy()
    c["message_id"] = message_ids(c["customer_id"], c["program"], c["occurrence"])
    c = c.drop_duplicates("message_id", keep="first").reset_index(drop=True)
    c["cooldown_days"] = c["cooldown_days"].astype(int)
    max_cooldown = int(c["cooldown_days"].max())

    _stage.drop(conn, checkfirst=True)
    _stage.create(conn)
    try:
        bulk_load(conn, _stage, c[_STAGE_COLS])
        if conn.dialect.name == "postgresql":
            # Fresh temp tables have no statistics; without them the planner guesses badly.
            conn.exec_driver_sql(f"ANALYZE {_stage.name}")
        log.debug("claim: staged %s candidates in %.2fs", len(c), time.perf_counter() - started)
        flags: dict[str, tuple[str, str]] = {}

        def flag(ids: Iterable[str], fate: str, why: str) -> None:
            for i in ids:
                flags.setdefault(i, (fate, why))

        flag(conn.execute(
            select(_stage.c.message_id).join(L, L.c.message_id == _stage.c.message_id)
        ).scalars(), "already_claimed", "this message was already claimed by an earlier run")

        # One message per customer per night, across runs: a rerun (or a campaign claiming
        # after the nightly run) must not add a second message for a customer who already has
        # tonight's.
        # Transactional messages (a receipt) are outside this rule, as they are outside caps.
        tonight = conn.execute(
            select(L.c.customer_id, func.min(L.c.program))
            .where(L.c.as_of == as_of, L.c.status.in_(COUNTED), L.c.kind != "transactional")
            .where(L.c.customer_id.in_(select(_stage.c.customer_id)))
            .group_by(L.c.customer_id)
        ).all()
        if tonight:
            had = dict(tonight)
            taken = c.loc[c["customer_id"].isin(had) & (c["kind"] != "transactional")]
            for mid, cid in zip(taken["message_id"], taken["customer_id"], strict=True):
                flag([mid], f"lost_to:{had[cid]}",
                     f"already has tonight's message ({had[cid]}); one message per night")

        # Every cooldown length in one query: the window travels with each staged row.
        q = (
            select(_stage.c.message_id, _stage.c.program, _stage.c.cooldown_days)
            .join(L, and_(L.c.customer_id == _stage.c.customer_id,
                          L.c.program == _stage.c.program))
            .where(_stage.c.cooldown_days > 0)
            .where(L.c.status.in_(COUNTED))
            .where(L.c.as_of > _shift(conn, as_of, -_stage.c.cooldown_days))
            .where(L.c.as_of < _shift(conn, as_of, _stage.c.cooldown_days))
            .where(L.c.as_of > as_of - dt.timedelta(days=max_cooldown))
            .where(L.c.as_of < as_of + dt.timedelta(days=max_cooldown))
            .where(L.c.message_id != _stage.c.message_id)
            .distinct()
        )
        log.debug("claim: already-claimed checked after %.2fs", time.perf_counter() - started)
        for mid, program, days in conn.execute(q):
            flag([mid], f"cooldown:{program}",
                 f"already contacted by {program} within its {days}-day cooldown")
        log.debug("claim: cooldowns checked after %.2fs", time.perf_counter() - started)

        # Every cap in one pass over the ledger's recent marketing rows.
        caps = sorted(caps, key=lambda cp: cp.days)
        if caps:
            widest = max(cp.days for cp in caps)
            counts = [
                func.sum(case((and_(L.c.as_of > as_of - dt.timedelta(days=cp.days),
                                    L.c.as_of < as_of + dt.timedelta(days=cp.days)), 1),
                              else_=0)).label(f"c{i}")
                for i, cp in enumerate(caps)
            ]
            q = (
                select(L.c.customer_id, *counts)
                .where(L.c.kind == "marketing", L.c.status.in_(COUNTED))
                .where(L.c.as_of > as_of - dt.timedelta(days=widest))
                .where(L.c.as_of < as_of + dt.timedelta(days=widest))
                .where(L.c.customer_id.in_(
                    select(_stage.c.customer_id).where(_stage.c.kind == "marketing")))
                .group_by(L.c.customer_id)
            )
            capped: dict[str, Cap] = {}
            for row in conn.execute(q):
                for i, cp in enumerate(caps):
                    if row[i + 1] >= cp.messages:
                        capped[row[0]] = cp
                        break
            marketing = c.loc[(c["kind"] == "marketing") & c["customer_id"].isin(capped)]
            for mid, cid in zip(marketing["message_id"], marketing["customer_id"], strict=True):
                cp = capped[cid]
                flag([mid], cp.label,
                     f"cap reached: {cp.messages} marketing message(s) in {cp.days} days")
    finally:
        _stage.drop(conn, checkfirst=True)
    log.debug("claim: %s blocked by rules after %.2fs", len(flags), time.perf_counter() - started)

    c["fate"] = c["message_id"].map(lambda m: flags.get(m, (None, None))[0])
    c["why"] = c["message_id"].map(lambda m: flags.get(m, (None, None))[1])

    # Arbitration: the best unblocked marketing or service candidate per customer wins
    # tonight; transactional messages (receipts, thank-yous) are not in the contest.
    free = c.loc[c["fate"].isna()].sort_values(
        ["customer_id", "priority", "score", "program"], ascending=[True, False, False, True])
    contest = free.loc[free["kind"] != "transactional"]
    best = contest.drop_duplicates("customer_id", keep="first")
    winners = pd.concat([best, free.loc[free["kind"] == "transactional"]])
    losers = contest.index.difference(best.index)
    won_by = best.set_index("customer_id")["program"]
    if len(losers):
        c.loc[losers, "fate"] = "lost_to:" + c.loc[losers, "customer_id"].map(won_by).astype(str)
        c.loc[losers, "why"] = "another program had a better message for this customer tonight"
    c.loc[winners.index, "fate"] = "claimed"
    c.loc[winners.index, "why"] = "won tonight's arbitration and passed caps"

    first_batch = conn.execute(
        select(func.coalesce(func.max(L.c.batch_id), -1)).where(L.c.as_of == as_of)
    ).scalar_one() + 1
    w = c.loc[winners.index].sort_values("message_id")
    c["batch_id"] = pd.Series(dtype="Int64")
    c.loc[w.index, "batch_id"] = first_batch + pd.RangeIndex(len(w)) // batch_size
    if len(w):
        stamp = now()
        context = list(context_for(w)) if context_for is not None else w["context"]
        rows = pd.DataFrame({
            "message_id": w["message_id"], "customer_id": w["customer_id"],
            "program": w["program"], "occurrence": w["occurrence"], "kind": w["kind"],
            "status": "claimed", "as_of": as_of, "run_id": run_id,
            "batch_id": c.loc[w.index, "batch_id"].astype(int), "context": context,
            "claimed_at": stamp,
        })
        bulk_load(conn, L, rows)
    log.debug("claim: %s claimed, done after %.2fs", len(w), time.perf_counter() - started)
    return ClaimOutcome(c[out_cols])


def _shift(conn: Connection, day: dt.date, days: Any) -> Any:
    """``day`` plus a per-row number of days, in the dialect's own date arithmetic."""
    if conn.dialect.name == "postgresql":
        return literal(day, Date) + days
    return func.date(literal(day.isoformat()), func.printf("%+d days", days))


def bulk_load(conn: Connection, table: Table, frame: pd.DataFrame) -> None:
    """Insert a frame fast: one CSV COPY on PostgreSQL, chunked executemany elsewhere."""
    if frame.empty:
        return
    if conn.dialect.name == "postgresql":
        cols = ", ".join(f'"{c}"' for c in frame.columns)
        # NULL is spelled \N so that an empty string stays an empty string.
        payload = frame.to_csv(header=False, index=False, na_rep="\\N",
                               date_format="%Y-%m-%d %H:%M:%S.%f%z")
        raw = conn.connection.driver_connection
        with raw.cursor() as cur, cur.copy(
            f"COPY \"{table.name}\" ({cols}) FROM STDIN WITH (FORMAT csv, NULL '\\N')"
        ) as copy:
            copy.write(payload)
        return
    records = frame.to_dict("records")
    for i in range(0, len(records), 10_000):
        conn.execute(insert(table), records[i : i + 10_000])


def record_decisions(
    conn: Connection, decisions: pd.DataFrame, *, as_of: dt.date, run_id: str
) -> None:
    """Write each candidate's fate; the first story of a night is kept on reruns."""
    stamp = now()
    rows = [
        {"as_of": as_of, "run_id": run_id, "customer_id": r.customer_id, "program": r.program,
         "occurrence": getattr(r, "occurrence", "") or "",
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

