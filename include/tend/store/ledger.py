"""The contact ledger: claim in bulk within caps, then walk each message to a final state.

Protocol::

    claimed ──► sending ──► sent        (provider accepted it; provider id recorded)
       ▲           │   ├──► failed      (provider refused this message; never retried blindly)
       │           │   └──► unknown     (the request may have left: at-most-once, never resent)
       │           └─(crash)─► unknown  (found 'sending' by the next holder of the batch)
       │                        │
       └──── not sent ◄─────────┤       (resolved: the backend knows it never went out, or an
                                │        operator released it: ``tend reconcile --release``)
                      sent ◄────┘       (resolved: the outbox file exists, SendGrid reported an
                                         event for it, or ``tend reconcile --mark-sent``)

A batch is sent under a lease (``batch_leases``) with a fencing token: ``acquire_lease`` takes
it only when free, expired, or held by a dead process on this host; every ledger update of a
send carries the token, so a worker that lost its lease can neither mark more rows 'sending' nor
touch rows the new holder marked (``lease_token`` on each row).

Claiming and the cap check happen in one transaction that holds the ledger's write lock
(``LOCK TABLE ... SHARE ROW EXCLUSIVE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so two
runs claiming at the same time cannot both pass a cap. All checks are set-based SQL over a
staging table: no query per customer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from sqlalchemy import (
    ColumnElement,
    Connection,
    bindparam,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError

from tend import config
from tend.errors import LedgerError
from tend.logs import log
from tend.programs.registry import Cap
from tend.store.bulk import bulk_rows, staged, stored_time
from tend.store.tables import batch_leases as BL
from tend.store.tables import contact_ledger as L
from tend.store.tables import context_batches as CB
from tend.store.tables import decision_log, message_events

#: Statuses that mean "this customer got (or may have got) this message".
COUNTED = ("claimed", "sending", "sent", "unknown")

#: How the send stage's last look words the ``failed`` messages it stops because the customer
#: unsubscribed, bounced or changed their preferences after planning: the customer's choice
#: honoured, not a failure for an operator, so the night's check and a campaign's finish do
#: not count them as failed (``stopped_after_planning``).
SUPPRESSED_AFTER_PLANNING = "suppressed after planning"
CHOSE_AFTER_PLANNING = "preferences changed after planning"


def stopped_after_planning(error: ColumnElement[str | None]) -> ColumnElement[bool]:
    """Whether a ``failed`` row's ``error`` is one of the last look's stops."""
    said = func.coalesce(error, "")  # NULL would make the test NULL, and NOT of it too
    return or_(*(said.like(f"{p} (%") for p in (SUPPRESSED_AFTER_PLANNING,
                                                 CHOSE_AFTER_PLANNING)))

#: A campaign's ledger rows carry ``program = CAMPAIGN_PREFIX + name`` (tend.campaigns): its
#: batches and contexts belong to its own run, never to the night's, and the reverse.
CAMPAIGN_PREFIX = "campaign:"


def owned_by(program: str | None) -> Any:
    """The ledger rows one run owns: a campaign's (``program``), or the nightly programs'
    (None: every row that is no campaign's). A run sends and completes only its own."""
    if program is None:
        return ~L.c.program.startswith(CAMPAIGN_PREFIX, autoescape=True)
    return L.c.program == program


def message_id_for(customer_id: str, program: str, occurrence: str) -> str:
    """Deterministic id from the ledger key: the same candidate is the same message, forever."""
    return message_ids([customer_id], [program], [occurrence])[0]


def message_ids(customers: Iterable[str], programs: Iterable[str],
                occurrences: Iterable[str]) -> list[str]:
    """``message_id_for`` over columns (the same ids, without per-row call overhead)."""
    sha = hashlib.sha256
    cols = [c.to_numpy(dtype=object) if isinstance(c, pd.Series) else c
            for c in (customers, programs, occurrences)]  # no per-value Arrow boxing
    return [sha(f"{c}\x1f{p}\x1f{o}".encode()).hexdigest()[:32]
            for c, p, o in zip(*cols, strict=True)]


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def lock_ledger(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("LOCK TABLE contact_ledger IN SHARE ROW EXCLUSIVE MODE")
        conn.exec_driver_sql("SELECT set_config('work_mem', %s, true)", (config.claim_work_mem(),))
        conn.exec_driver_sql("SET LOCAL jit = off")
    # SQLite: the engine begins every transaction with BEGIN IMMEDIATE (tend.store.db).


#: The staging table of one claim: the candidates' keys, one bulk load, scanned whole by the one
#: rules query. On PostgreSQL it is an UNLOGGED table created inside the claiming transaction
#: (which holds the ledger lock, so no second claim can see it; the CREATE rolls back with the
#: transaction): unlike a TEMPORARY table, parallel workers may scan it, so the rules query can
#: use both cores. SQLite gets a TEMPORARY table.
_STAGE = "tend_claim_stage"
_STAGE_COLS = ["idx", "message_id", "customer_id", "program", "kind", "cooldown_days"]


@dataclass(frozen=True)
class ClaimOutcome:
    """Per candidate: ``fate`` is "claimed" or why not; batch_id set when claimed."""

    frame: pd.DataFrame  # message_id, customer_id, program, occurrence, kind, fate, why, batch_id
    #: Seconds per phase (stage, rules, arbitrate, contexts, insert), for logs and benchmarks.
    timings: dict[str, float] = field(default_factory=dict)


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
    optionally ``holdout_why`` (set for the candidates the program's holdout draw picked: those
    the rules below let through are ``held_out``, with that reason, and claim nothing), and
    optionally a ``context`` column or ``context_for``, which builds the contexts of the
    winners only (a night may have many more candidates than messages); with neither, the
    claims are written without contexts and the caller stores them with ``write_contexts``
    after this transaction (so building them does not hold the ledger's lock). Must run inside a
    transaction (``engine.begin()``); takes the ledger lock first, so the caps it checks cannot
    change before its claims commit.

    Set-based, in four steps and no query per customer:

    1. the candidates' keys go to a staging table in one bulk load (COPY on PostgreSQL);
    2. two queries read the ledger rows of those customers in the windows the rules can see
       (the widest cooldown, the widest cap, around ``as_of`` in both directions, so a replayed
       past night also respects messages sent after it) and flag, per candidate: already
       claimed (the same message in that window: a rerun), one message per customer per night,
       the program's cooldown, and each rolling cap (marketing only; transactional exempt);
    3. arbitration (NumPy): the best unflagged marketing or service candidate per customer by
       priority, then score, then program name; transactional messages are outside the contest;
    4. the winners go to the ledger in one bulk insert inside a savepoint. A message claimed
       before the window (an old occurrence offered again) is caught there by the ledger's
       primary key: the savepoint rolls back, those candidates become ``already_claimed``, their
       customers' next-best candidates compete again, and the insert is retried. So "already
       claimed" costs nothing on a normal night instead of a join against the whole ledger.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    mark = started

    def lap(phase: str) -> None:
        nonlocal mark
        now_ = time.perf_counter()
        timings[phase] = timings.get(phase, 0.0) + now_ - mark
        mark = now_

    lock_ledger(conn)
    out_cols = ["message_id", "customer_id", "program", "occurrence", "kind", "fate", "why",
                "batch_id"]
    if candidates.empty:
        return ClaimOutcome(pd.DataFrame(columns=out_cols))
    c = candidates.reset_index(drop=True)
    c["message_id"] = message_ids(c["customer_id"], c["program"], c["occurrence"])
    c = c.drop_duplicates("message_id", keep="first").reset_index(drop=True)
    c["cooldown_days"] = c["cooldown_days"].astype(np.int64)
    c["idx"] = np.arange(len(c), dtype=np.int64)
    caps = sorted(caps, key=lambda cp: cp.days)
    fate = np.full(len(c), None, dtype=object)
    why = np.full(len(c), None, dtype=object)

    mid = "UUID" if conn.dialect.name == "postgresql" else "VARCHAR(40)"
    with staged(conn, _STAGE, f"idx BIGINT NOT NULL, message_id {mid} NOT NULL, "
                "customer_id VARCHAR(64) NOT NULL, program VARCHAR(100) NOT NULL, "
                "kind VARCHAR(16) NOT NULL, cooldown_days INTEGER NOT NULL",
                {col: c[col] for col in _STAGE_COLS}, unlogged=True):
        log.debug("claim: staged %s candidates in %.2fs", len(c), time.perf_counter() - started)
        lap("stage")
        _apply_rules(conn, c, fate, why, as_of=as_of, caps=caps)
    if "holdout_why" in c.columns:
        # The control group is drawn among the candidates the rules let through: a customer
        # in the program's cooldown (last month's recipient, maybe holding a live voucher) or
        # already messaged tonight is no more held out than contacted, so the held-out group
        # stays like the contacted one (docs/results.md).
        held = c["holdout_why"].notna().to_numpy() & pd.isna(fate)
        fate[held] = "held_out"
        why[held] = c["holdout_why"].to_numpy(dtype=object)[held]
    log.debug("claim: %s blocked by rules after %.2fs", int(pd.notna(fate).sum()),
              time.perf_counter() - started)
    lap("rules")

    cust_code = pd.factorize(c["customer_id"])[0]
    first_batch = conn.execute(
        select(func.coalesce(func.max(L.c.batch_id), -1)).where(L.c.as_of == as_of)
    ).scalar_one() + 1
    batch = np.full(len(c), -1, dtype=np.int64)
    stamp = now()
    contest_customers: np.ndarray | None = None  # None: every customer
    while True:
        _arbitrate(c, cust_code, fate, why, contest_customers)
        # Every winner, including earlier rounds' (a failed insert rolled all of them back).
        won = pd.Series(fate).eq("claimed").to_numpy()
        rows = np.flatnonzero(won)
        # Batches in message_id order (Arrow's sort: no Python string comparisons).
        rows = rows[c["message_id"].take(rows).argsort(kind="stable").to_numpy()]
        w = c.take(rows)
        wb = first_batch + np.arange(len(w)) // batch_size
        lap("arbitrate")
        if not len(w):
            break
        context = (list(context_for(w)) if context_for is not None
                   else w["context"].tolist() if "context" in w.columns else None)
        lap("contexts")
        try:
            with conn.begin_nested():
                _insert_claims(conn, w, wb, context, as_of=as_of, run_id=run_id, stamp=stamp)
        except (IntegrityError, conn.dialect.dbapi.IntegrityError):  # COPY raises the driver's
            # Some winner was claimed on a night outside the rules' window.
            taken = _existing_ids(conn, w["message_id"].tolist())
            if not taken:
                raise
            hit = c["message_id"].isin(taken).to_numpy() & won
            fate[hit] = "already_claimed"
            why[hit] = "this message was already claimed by an earlier run"
            contest_customers = np.unique(cust_code[hit])
            # The other winners stand; the contest runs again only for the customers whose
            # winner was taken.
            log.info("claim: %s winner(s) were claimed on an earlier night; re-arbitrating",
                     len(taken))
            lap("insert")
            continue
        batch[rows] = wb
        break
    lap("insert")
    log.debug("claim: %s claimed, done after %.2fs", int((batch >= 0).sum()),
              time.perf_counter() - started)
    out = c[["message_id", "customer_id", "program", "occurrence", "kind"]].copy()
    out["fate"] = fate
    out["why"] = why
    out["batch_id"] = pd.array(np.where(batch >= 0, batch, 0), dtype="Int64")
    out.loc[batch < 0, "batch_id"] = pd.NA
    return ClaimOutcome(out[out_cols], timings)


def _rules_sql(dialect: str, caps: Sequence[Cap]) -> tuple[str, str]:
    """The two queries behind every rule (see ``claim``); both return only what is flagged.

    The first is per candidate, over the ledger rows of the same customer and program in the
    widest cooldown window: the same message (already claimed) or a cooldown. The second is
    per customer, over the widest cap window: tonight's message if any, and the marketing count
    in each cap window (only customers with tonight's message or a cap reached come back).
    Two narrow queries beat one wide one here: each reads only its own window, and the caps
    never join on the program.
    """
    counted = "l.status IN (" + ", ".join(f"'{s}'" for s in COUNTED) + ")"
    if dialect == "postgresql":
        cool_lo = "CAST(:night AS DATE) - s.cooldown_days"
        cool_hi = "CAST(:night AS DATE) + s.cooldown_days"
    else:
        cool_lo = "date(:night, printf('%+d days', -s.cooldown_days))"
        cool_hi = "date(:night, printf('%+d days', s.cooldown_days))"
    already = "MAX(CASE WHEN l.message_id = s.message_id THEN 1 ELSE 0 END)"
    cool = (f"MAX(CASE WHEN {counted} AND s.cooldown_days > 0 AND l.message_id <> s.message_id"
            f" AND l.as_of > {cool_lo} AND l.as_of < {cool_hi} THEN 1 ELSE 0 END)")
    per_candidate = f"""
SELECT s.idx, {already}, {cool}
FROM {_STAGE} s JOIN contact_ledger l
  ON l.customer_id = s.customer_id AND l.program = s.program
WHERE l.as_of > :lo AND l.as_of < :hi
GROUP BY s.idx
HAVING {already} = 1 OR {cool} = 1"""
    cap_counts = [f"SUM(CASE WHEN {counted} AND l.kind = 'marketing' AND l.as_of > :cap{i}_lo "
                  f"AND l.as_of < :cap{i}_hi THEN 1 ELSE 0 END)" for i in range(len(caps))]
    sums = "".join(f", {count}" for count in cap_counts)
    tonight = (f"MIN(CASE WHEN {counted} AND l.as_of = :night AND l.kind <> 'transactional' "
               "THEN l.program END)")
    having = " OR ".join([f"{tonight} IS NOT NULL", *(
        f"{count} >= {cp.messages}" for count, cp in zip(cap_counts, caps, strict=True))])
    per_customer = f"""
SELECT l.customer_id, {tonight} {sums}
FROM contact_ledger l
WHERE l.as_of > :clo AND l.as_of < :chi
  AND l.customer_id IN (SELECT customer_id FROM {_STAGE})
GROUP BY l.customer_id
HAVING {having}"""
    return per_candidate, per_customer


def _apply_rules(conn: Connection, c: pd.DataFrame, fate: np.ndarray, why: np.ndarray, *,
                 as_of: dt.date, caps: Sequence[Cap]) -> None:
    """Run the rule queries and write each flagged candidate's first reason, in rule order:
    already claimed, one message per night, cooldown, caps (narrowest first)."""
    window = max(int(c["cooldown_days"].max()), 1)
    widest = max([cp.days for cp in caps] + [1])
    params: dict[str, Any] = {
        "night": as_of, "lo": as_of - dt.timedelta(days=window),
        "hi": as_of + dt.timedelta(days=window), "clo": as_of - dt.timedelta(days=widest),
        "chi": as_of + dt.timedelta(days=widest),
    }
    for i, cp in enumerate(caps):
        params[f"cap{i}_lo"] = as_of - dt.timedelta(days=cp.days)
        params[f"cap{i}_hi"] = as_of + dt.timedelta(days=cp.days)
    if conn.dialect.name != "postgresql":  # SQLite keeps dates as ISO text
        params = {k: v.isoformat() if isinstance(v, dt.date) else v for k, v in params.items()}
    per_candidate, per_customer = _rules_sql(conn.dialect.name, caps)
    t = time.perf_counter()
    pairs = conn.execute(text(per_candidate), params).all()
    log.debug("claim: cooldowns and repeats in %.2fs", time.perf_counter() - t)
    t = time.perf_counter()
    people = conn.execute(text(per_customer), params).all()
    log.debug("claim: caps and tonight's messages in %.2fs", time.perf_counter() - t)

    n = len(c)
    transactional = c["kind"].eq("transactional").to_numpy()
    already = np.zeros(n, bool)
    cool = np.zeros(n, bool)
    if pairs:
        p = np.array(pairs, dtype=np.int64)
        already[p[p[:, 1] == 1, 0]] = True
        cool[p[p[:, 2] == 1, 0]] = True
    program = c["program"]
    n_caps = len(caps)
    tonight = np.full(n, None, dtype=object)
    counts = np.zeros((n, n_caps), np.int64)
    if people:
        per = pd.DataFrame(people, columns=["customer_id", "tonight",
                                            *(f"cap{i}" for i in range(n_caps))])
        # Only the few flagged customers' rows are looked up one by one.
        rows = np.flatnonzero(c["customer_id"].isin(per["customer_id"]).to_numpy())
        at = pd.Index(per["customer_id"]).get_indexer(c["customer_id"].take(rows))
        tonight[rows] = per["tonight"].to_numpy(dtype=object)[at]
        if n_caps:
            counts[rows] = per[[f"cap{i}" for i in range(n_caps)]].fillna(0).to_numpy(
                dtype=np.int64)[at]

    def flat(mask: np.ndarray, f: str, y: str) -> None:
        mask = mask & pd.isna(fate)
        fate[mask], why[mask] = f, y

    flat(already, "already_claimed", "this message was already claimed by an earlier run")
    # One message per customer per night, across runs: a rerun (or a campaign claiming after
    # the nightly run) must not add a second one for a customer who already has tonight's.
    for i in np.flatnonzero(pd.notna(tonight) & ~transactional & pd.isna(fate)):
        fate[i] = f"lost_to:{tonight[i]}"
        why[i] = f"already has tonight's message ({tonight[i]}); one message per night"
    cooldown = c["cooldown_days"].to_numpy()
    rows = np.flatnonzero(cool & pd.isna(fate))
    for i, p, d in zip(rows, program.take(rows).tolist(), cooldown[rows].tolist(), strict=True):
        fate[i], why[i] = f"cooldown:{p}", f"already contacted by {p} within its {d}-day cooldown"
    marketing = c["kind"].eq("marketing").to_numpy()
    for i, cp in enumerate(caps):
        flat(marketing & (counts[:, i] >= cp.messages), cp.label,
             f"cap reached: {cp.messages} marketing message(s) in {cp.days} days")


def _arbitrate(c: pd.DataFrame, cust_code: np.ndarray, fate: np.ndarray, why: np.ndarray,
               customers: np.ndarray | None) -> None:
    """Mark tonight's winners ("claimed") and the losers of the contest ("lost_to:...").

    The best unflagged marketing or service candidate per customer wins (priority, then score,
    then program name); unflagged transactional messages all win. ``customers`` limits the
    contest to those customer codes (a re-run after a late "already claimed"): their earlier
    losers compete again, everyone else's result stands.
    """
    transactional = c["kind"].eq("transactional").to_numpy()
    scope = np.ones(len(c), bool) if customers is None else np.isin(cust_code, customers)
    if customers is not None:  # earlier losers of these customers compete again
        again = scope & pd.Series(fate).astype(str).str.startswith("lost_to:").to_numpy() & \
            pd.Series(why).eq(_LOST).to_numpy()
        fate[again] = None
        why[again] = None
    free = scope & pd.isna(fate)
    contest = free & ~transactional
    won = free & transactional
    rows = np.flatnonzero(contest)
    if len(rows):
        prog_code, prog_names = pd.factorize(c["program"], sort=True)
        prog_names = np.asarray(prog_names, dtype=object)
        order = np.lexsort((prog_code[rows], -c["score"].to_numpy(dtype=float)[rows],
                            -c["priority"].to_numpy(dtype=np.int64)[rows], cust_code[rows]))
        ranked = rows[order]
        first = np.ones(len(ranked), bool)
        first[1:] = cust_code[ranked][1:] != cust_code[ranked][:-1]
        best, lost = ranked[first], ranked[~first]
        won[best] = True
        winner = np.zeros(int(cust_code.max()) + 1, np.int64)
        winner[cust_code[best]] = prog_code[best]
        labels = np.array([f"lost_to:{p}" for p in prog_names], dtype=object)
        fate[lost] = labels[winner[cust_code[lost]]]
        why[lost] = _LOST
    fate[won] = "claimed"
    why[won] = "won tonight's arbitration and passed caps"


_LOST = "another program had a better message for this customer tonight"


def _insert_claims(conn: Connection, w: pd.DataFrame, batch: np.ndarray,
                   context: list[str] | None, *,
                   as_of: dt.date, run_id: str, stamp: dt.datetime) -> None:
    n = len(w)
    claimed_at = stored_time(conn, stamp)
    night = np.full(n, as_of.isoformat(), dtype=object)
    t = time.perf_counter()
    bulk_rows(conn, L.name, {
        "message_id": w["message_id"], "customer_id": w["customer_id"],
        "program": w["program"], "occurrence": w["occurrence"],
        "kind": w["kind"], "status": np.full(n, "claimed", dtype=object),
        "as_of": night, "run_id": np.full(n, run_id, dtype=object),
        "batch_id": batch, "claimed_at": np.full(n, claimed_at, dtype=object),
    })
    log.debug("claim: %s ledger rows written in %.2fs", n, time.perf_counter() - t)
    if context is None:  # the caller writes them after the claim commits (tend.programs.plan)
        return
    t = time.perf_counter()
    write_contexts(conn, as_of, batch, w["message_id"].tolist(), context)
    log.debug("claim: %s contexts written in %.2fs", n, time.perf_counter() - t)


def _existing_ids(conn: Connection, ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(ids), 5000):
        found.update(conn.execute(
            select(L.c.message_id).where(L.c.message_id.in_(ids[i : i + 5000]))).scalars())
    return found


def record_decisions(
    conn: Connection, decisions: pd.DataFrame, *, as_of: dt.date, run_id: str
) -> None:
    """Write each candidate's fate; the first story of a night is kept on reruns.

    A night can decide a million candidates: the rows go to a staging table in one bulk load
    and into the log with one INSERT ... SELECT that skips what a rerun already wrote.
    """
    if decisions.empty:
        return
    n = len(decisions)
    occurrence = (decisions["occurrence"].fillna("").astype(str)
                  if "occurrence" in decisions else pd.Series([""] * n))
    message_id = decisions["message_id"].astype(object)
    pg = conn.dialect.name == "postgresql"
    stamp = now()
    cols: dict[str, Any] = {
        "as_of": np.full(n, as_of.isoformat(), dtype=object),
        "run_id": np.full(n, run_id, dtype=object),
        "customer_id": decisions["customer_id"].astype(str).to_numpy(dtype=object),
        "program": decisions["program"].astype(str).to_numpy(dtype=object),
        "occurrence": occurrence.to_numpy(dtype=object),
        "fate": decisions["fate"].astype(str).to_numpy(dtype=object),
        "reason": decisions["why"].astype(str).to_numpy(dtype=object),
        "created_at": np.full(n, stored_time(conn, stamp), dtype=object),
        "message_id": message_id.where(message_id.notna(), None).to_numpy(dtype=object),
    }
    names = ", ".join(cols)
    with staged(conn, "tend_decision_stage",
                f"as_of {'DATE' if pg else 'TEXT'}, run_id TEXT, customer_id TEXT, program TEXT, "
                "occurrence TEXT, fate TEXT, reason TEXT, "
                f"created_at {'TIMESTAMPTZ' if pg else 'TEXT'}, message_id TEXT",
                cols, analyze=False) as stage:
        verb = "INSERT" if pg else "INSERT OR IGNORE"
        tail = " ON CONFLICT DO NOTHING" if pg else ""
        conn.exec_driver_sql(f"{verb} INTO {decision_log.name} ({names}) "
                             f"SELECT {names} FROM {stage}{tail}")


# -- sending ---------------------------------------------------------------------------------

def batches_to_send(conn: Connection, as_of: dt.date, program: str | None = None) -> list[int]:
    """The night's batches still to send that ``program`` owns (``owned_by``); a claim numbers
    its own batches, so no batch mixes a campaign's messages with the night's."""
    q = (select(L.c.batch_id).where(L.c.as_of == as_of, owned_by(program))
         .where(L.c.status.in_(("claimed", "sending"))).distinct().order_by(L.c.batch_id))
    return [int(b) for b in conn.execute(q).scalars()]


class LeaseHeld(LedgerError):
    """Another live worker holds the batch's send lease."""


class LeaseLost(LedgerError):
    """This worker's lease was taken over (it stalled past its expiry): it must stop sending."""


@dataclass(frozen=True)
class Lease:
    """The right to send one (night, batch); ``token`` fences every ledger update of the send."""

    as_of: dt.date
    batch_id: int
    token: int
    holder: str


def lease_holder() -> str:
    """host:pid of this process: who holds a lease, and whether a same-host holder still runs."""
    import os

    from tend.processes import this_host

    return f"{this_host()}:{os.getpid()}"


def _holder_gone(holder: str | None) -> bool:
    """True only when ``holder`` ran on this host and its process no longer exists."""
    from tend.processes import gone

    if not holder:
        return True
    host, _, pid = holder.rpartition(":")
    return gone(host, pid)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)  # SQLite keeps UTC fields without an offset


def acquire_lease(conn: Connection, as_of: dt.date, batch_id: int, *, ttl: float,
                  holder: str | None = None) -> Lease:
    """Take the send lease of a batch, with a token greater than every earlier holder's.

    Refused (``LeaseHeld``) while another holder's lease is live: not expired, and not a dead
    process on this host. Must run in its own transaction (``engine.begin()``); the row lock
    (``FOR UPDATE``; SQLite's write lock) orders it against any ``mark_sending`` in progress.
    """
    from tend.store.bulk import insert_ignore

    holder = holder or lease_holder()
    insert_ignore(conn, BL, [{"as_of": as_of, "batch_id": batch_id, "token": 0,
                              "holder": None, "acquired_at": None, "expires_at": None}])
    row = conn.execute(select(BL).where(BL.c.as_of == as_of, BL.c.batch_id == batch_id)
                       .with_for_update()).one()
    stamp = now()
    expires = _aware(row.expires_at)
    if expires is not None and expires > stamp and not _holder_gone(row.holder):
        raise LeaseHeld(
            f"batch {batch_id} of {as_of} is being sent by {row.holder} (its lease runs until "
            f"{expires:%H:%M:%S} UTC unless renewed); let it finish — if that worker is stuck, "
            "stop it or wait for the lease to expire (TEND_SEND_LEASE_SECONDS), then retry")
    token = int(row.token) + 1
    conn.execute(update(BL).where(BL.c.as_of == as_of, BL.c.batch_id == batch_id,
                                  BL.c.token == row.token)
                 .values(token=token, holder=holder, acquired_at=stamp,
                         expires_at=stamp + dt.timedelta(seconds=ttl)))
    if row.holder and expires is not None:
        log.warning("batch %s: took over the send lease from %s (%s)", batch_id, row.holder,
                    "its process is gone" if expires > stamp else "its lease expired")
    return Lease(as_of, batch_id, token, holder)


def renew_lease(conn: Connection, lease: Lease, *, ttl: float) -> bool:
    """Extend the lease; False when it was taken over (the caller must stop sending)."""
    res = conn.execute(update(BL).where(BL.c.as_of == lease.as_of,
                                        BL.c.batch_id == lease.batch_id,
                                        BL.c.token == lease.token)
                       .values(expires_at=now() + dt.timedelta(seconds=ttl)))
    return (res.rowcount or 0) == 1


def release_lease(conn: Connection, lease: Lease) -> None:
    """Let the next worker take the batch at once (a no-op when the lease was taken over)."""
    conn.execute(update(BL).where(BL.c.as_of == lease.as_of, BL.c.batch_id == lease.batch_id,
                                  BL.c.token == lease.token)
                 .values(holder=None, expires_at=None))


def _check_lease(conn: Connection, lease: Lease) -> None:
    """Refuse a stale holder; on PostgreSQL the shared row lock keeps a takeover (``FOR
    UPDATE``) waiting until this transaction's update commits, so the new holder's recovery
    sees every row this one marked."""
    q = select(BL.c.token).where(BL.c.as_of == lease.as_of, BL.c.batch_id == lease.batch_id)
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(read=True)
    current = conn.execute(q).scalar_one_or_none()
    if current != lease.token:
        raise LeaseLost(
            f"batch {lease.batch_id} of {lease.as_of}: this worker's send lease (token "
            f"{lease.token}) was taken over by a newer one ({current}) after it stalled past "
            "its expiry; it stops here and leaves the batch to the new holder")


def recover_interrupted(conn: Connection, as_of: dt.date, batch_id: int,
                        lease: Lease | None = None) -> int:
    """A row still 'sending' under an earlier lease means a worker died or lost its lease
    mid-request: it may have gone out. Never resend; ``resolve``/``reconcile`` settle it."""
    q = update(L).where(L.c.as_of == as_of, L.c.batch_id == batch_id, L.c.status == "sending")
    if lease is not None:
        q = q.where((L.c.lease_token.is_(None)) | (L.c.lease_token != lease.token))
    res = conn.execute(q.values(
        status="unknown", finished_at=now(),
        error="the sending worker stopped mid-request; not resent (at-most-once)"))
    return res.rowcount or 0


def unknown_ids(conn: Connection, as_of: dt.date, batch_id: int) -> list[str]:
    return list(conn.execute(select(L.c.message_id).where(
        L.c.as_of == as_of, L.c.batch_id == batch_id, L.c.status == "unknown")
        .order_by(L.c.message_id)).scalars())


def settle_unknown(conn: Connection, *, sent: Mapping[str, str | None] | None = None,
                   not_sent: Sequence[str] = (), how: str) -> tuple[int, int]:
    """Resolve 'unknown' rows: those that went out become 'sent' (with the provider id when
    known), those that certainly did not go back to 'claimed' for a resend. ``how`` says who
    decided, for ``tend why``. Returns (sent, released)."""
    stamp = now()
    done = 0
    if sent:
        res = conn.execute(
            update(L).where(L.c.message_id == bindparam("mid"), L.c.status == "unknown")
            .values(status="sent", provider_id=bindparam("pid"), finished_at=stamp,
                    error=f"was unknown; {how}: sent"),
            [{"mid": m, "pid": p} for m, p in sent.items()])
        done = res.rowcount or 0
    back = 0
    ids = list(not_sent)
    for i in range(0, len(ids), 500):
        res = conn.execute(
            update(L).where(L.c.message_id.in_(ids[i : i + 500]), L.c.status == "unknown")
            .values(status="claimed", sending_at=None, finished_at=None, lease_token=None,
                    error=None))
        back += res.rowcount or 0
    return done, back


def settle_from_events(conn: Connection, as_of: dt.date, batch_id: int | None = None) -> int:
    """'unknown' rows the provider has reported an event for (processed, delivered, bounce...)
    were accepted by it: they are 'sent'. SendGrid's Event Webhook fills ``message_events``."""
    reported = select(message_events.c.message_id).where(
        message_events.c.message_id == L.c.message_id).exists()
    q = update(L).where(L.c.as_of == as_of, L.c.status == "unknown", reported)
    if batch_id is not None:
        q = q.where(L.c.batch_id == batch_id)
    res = conn.execute(q.values(status="sent", finished_at=now(),
                                error="was unknown; the provider reported events for it: sent"))
    return res.rowcount or 0


def unknown_counts(conn: Connection, as_of: dt.date | None = None,
                   batch_id: int | None = None) -> list[tuple[dt.date, int, int]]:
    """(night, batch, messages) still 'unknown', oldest first."""
    q = (select(L.c.as_of, L.c.batch_id, func.count()).where(L.c.status == "unknown")
         .group_by(L.c.as_of, L.c.batch_id).order_by(L.c.as_of, L.c.batch_id))
    if as_of is not None:
        q = q.where(L.c.as_of == as_of)
    if batch_id is not None:
        q = q.where(L.c.batch_id == batch_id)
    return [(night, int(b), int(n)) for night, b, n in conn.execute(q)]


def unknown_warning_lines(as_of: dt.date, count: int, batch_id: int | None = None) -> list[str]:
    """The warning the send task and the night's summary print first while messages are
    'unknown': how many, why they matter, and the commands that settle them."""
    where = f"batch {batch_id} of {as_of}" if batch_id is not None else f"night {as_of}"
    scope = f"--as-of {as_of}" + (f" --batch {batch_id}" if batch_id is not None else "")
    return [
        f"WARNING: {count:,} message(s) of {where} are 'unknown': the request may or may not "
        "have reached the provider, so Tend will not resend them by itself.",
        "  Check the provider's activity log, then run one of:",
        f"    tend reconcile {scope} --mark-sent   # they went out",
        f"    tend reconcile {scope} --release     # they did not: the next `tend send` "
        "sends them (a second copy if one did go out)",
        f"    tend reconcile {scope} --not-sent    # they did not and will not be sent "
        "(no cooldown or cap held)",
    ]


#: What an operator may decide about 'unknown' messages (``tend reconcile``).
RECONCILE_ACTIONS = ("mark-sent", "release", "not-sent")


def reconcile(conn: Connection, as_of: dt.date, batch_id: int | None, action: str) -> int:
    """An operator's decision on a night's (or one batch's) 'unknown' messages.

    ``mark-sent``: they went out (the provider's activity shows them); ``release``: they did
    not, back to 'claimed' so the next ``tend send`` of the batch sends them (a customer whose
    message did go out gets a second copy); ``not-sent``: they did not and will not be sent,
    ``failed`` — so they hold no cooldown or cap.
    """
    if action not in RECONCILE_ACTIONS:
        raise LedgerError(f"unknown reconcile action {action!r}; use one of "
                          f"{', '.join(RECONCILE_ACTIONS)}")
    q = update(L).where(L.c.as_of == as_of, L.c.status == "unknown")
    if batch_id is not None:
        q = q.where(L.c.batch_id == batch_id)
    stamp = now()
    values: dict[str, Any] = {
        "mark-sent": {"status": "sent", "finished_at": stamp,
                      "error": "was unknown; marked sent by an operator (tend reconcile)"},
        "release": {"status": "claimed", "sending_at": None, "finished_at": None,
                    "lease_token": None, "error": None},
        "not-sent": {"status": "failed", "finished_at": stamp,
                     "error": "was unknown; an operator found it was not sent (tend reconcile)"},
    }[action]
    return conn.execute(q.values(**values)).rowcount or 0


class Claimed(NamedTuple):
    """A claimed message as the send stage needs it."""

    message_id: str
    customer_id: str
    program: str
    kind: str
    context: str
    run_id: str


def next_claimed(conn: Connection, as_of: dt.date, batch_id: int, limit: int,
                 cache: dict[tuple[dt.date, int], dict[str, str]] | None = None,
                 after: str | None = None) -> list[Claimed]:
    """The next ``limit`` claimed messages of a batch with their render contexts.

    ``cache`` (one dict per send of a batch) keeps the batch's decompressed contexts between
    chunks; they never change once written. ``after``: only message ids above it (a send walks
    the batch once, so rows a rehearsal put back to 'claimed' are not taken again).
    """
    q = (select(L.c.message_id, L.c.customer_id, L.c.program, L.c.kind, L.c.run_id)
         .where(L.c.as_of == as_of, L.c.batch_id == batch_id, L.c.status == "claimed")
         .order_by(L.c.message_id).limit(limit))
    if after is not None:
        q = q.where(L.c.message_id > after)
    rows = conn.execute(q).all()
    if not rows:
        return []
    key = (as_of, batch_id)
    contexts = cache.get(key) if cache is not None else None
    if contexts is None:
        contexts = batch_contexts(conn, as_of, batch_id)
        if cache is not None:
            cache[key] = contexts
    missing = [r.message_id for r in rows if r.message_id not in contexts]
    if missing:
        raise LedgerError(f"batch {batch_id} of {as_of}: no stored render context for "
                          f"{len(missing)} claimed message(s) (e.g. {missing[0]}); the store "
                          "was changed by hand — restore it, or release those rows")
    return [Claimed(r.message_id, r.customer_id, r.program, r.kind, contexts[r.message_id],
                    r.run_id) for r in rows]


#: Arrow's zstd: a night's JSON contexts compress several times over, smaller and faster than
#: with zlib.
CONTEXT_CODEC = "zstd"


def write_contexts(conn: Connection, as_of: dt.date, batch: np.ndarray,
                   message_ids: Sequence[str], contexts: Sequence[str]) -> None:
    """Store the render contexts of claimed messages, one compressed row per batch.

    ``batch`` gives each message's batch id; the messages of a batch must be contiguous (a
    claim numbers its batches in message-id order). Contexts are single-line JSON.
    """
    if not len(message_ids):
        return
    import pyarrow as pa

    if any("\n" in c for c in contexts):
        raise LedgerError("a render context contains a line break; contexts are single-line "
                          "JSON (json.dumps)")
    batch = np.asarray(batch)
    cut = np.flatnonzero(np.diff(batch)) + 1
    starts = np.concatenate([[0], cut])
    ends = np.concatenate([cut, [len(batch)]])
    rows = []
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        raw = "\n".join(f"{m}\t{c}" for m, c in zip(message_ids[start:end],
                                                     contexts[start:end], strict=True)).encode()
        rows.append({"as_of": as_of, "batch_id": int(batch[start]), "messages": end - start,
                     "codec": CONTEXT_CODEC, "raw_bytes": len(raw),
                     "payload": pa.compress(raw, codec=CONTEXT_CODEC, asbytes=True)})
    conn.execute(insert(CB), rows)


def claims_without_contexts(conn: Connection, as_of: dt.date,
                            program: str | None = None) -> pd.DataFrame:
    """Messages of night ``as_of`` still to send whose batch has no stored contexts yet, among
    those ``program`` owns (``owned_by``: a campaign claiming at the same time as the night
    must not take the night's for lost, nor the reverse).

    Normally none: the programs stage writes a night's contexts right after its claims commit.
    A stage stopped in between leaves these for its retry to complete (``tend.programs.plan``).
    """
    q = (select(L.c.message_id, L.c.batch_id)
         .where(L.c.as_of == as_of, L.c.status == "claimed", owned_by(program))
         .where(~select(CB.c.batch_id).where(CB.c.as_of == L.c.as_of,
                                             CB.c.batch_id == L.c.batch_id).exists())
         .order_by(L.c.batch_id, L.c.message_id))
    return pd.DataFrame(conn.execute(q).all(), columns=["message_id", "batch_id"])


def batch_contexts(conn: Connection, as_of: dt.date, batch_id: int) -> dict[str, str]:
    """Every stored render context of one batch, by message id."""
    row = conn.execute(select(CB.c.codec, CB.c.raw_bytes, CB.c.payload)
                       .where(CB.c.as_of == as_of, CB.c.batch_id == batch_id)).first()
    return {} if row is None else _unpack(row.codec, row.raw_bytes, row.payload)


def _unpack(codec: str, raw_bytes: int, payload: bytes) -> dict[str, str]:
    import pyarrow as pa

    raw = bytes(payload) if codec == "none" else pa.decompress(
        bytes(payload), decompressed_size=raw_bytes, codec=codec, asbytes=True)
    out: dict[str, str] = {}
    for line in raw.decode("utf-8").split("\n"):
        mid, _, ctx = line.partition("\t")
        out[mid] = ctx
    return out


def contexts_of(conn: Connection, message_ids: Sequence[str]) -> dict[str, str]:
    """The stored render context of each message (by message id)."""
    ids = list(message_ids)
    where: dict[tuple[dt.date, int], set[str]] = {}
    for i in range(0, len(ids), 500):
        for mid, night, batch_id in conn.execute(
                select(L.c.message_id, L.c.as_of, L.c.batch_id)
                .where(L.c.message_id.in_(ids[i : i + 500]))):
            where.setdefault((night, batch_id), set()).add(mid)
    out: dict[str, str] = {}
    for (night, batch_id), mids in where.items():
        found = batch_contexts(conn, night, batch_id)
        out.update({m: found[m] for m in mids if m in found})
    return out


def mark_sending(conn: Connection, message_ids: Sequence[str],
                 lease: Lease | None = None) -> None:
    """One statement for the whole chunk, committed before any request leaves; under a lease,
    refused (``LeaseLost``) once the lease was taken over, and each row keeps the token."""
    values: dict[str, Any] = {"status": "sending", "sending_at": now()}
    if lease is not None:
        _check_lease(conn, lease)
        values["lease_token"] = lease.token
    res = conn.execute(
        update(L).where(L.c.message_id.in_(list(message_ids)), L.c.status == "claimed")
        .values(**values)
    )
    if res.rowcount != len(message_ids):
        raise LedgerError(
            f"expected to mark {len(message_ids)} messages 'sending' but {res.rowcount} were "
            "still 'claimed': another worker is sending the same batch; check the Airflow pool"
        )


def release(conn: Connection, message_ids: Sequence[str], lease: Lease | None = None) -> None:
    """Back to 'claimed': only for requests known not to have been accepted (auth refused, a
    rehearsal); under a lease, only this holder's rows."""
    q = update(L).where(L.c.message_id.in_(list(message_ids)), L.c.status == "sending")
    if lease is not None:
        q = q.where(L.c.lease_token == lease.token)
    conn.execute(q.values(status="claimed", sending_at=None, lease_token=None))


def fail_unrenderable(conn: Connection, message_ids: Sequence[str], reason: str) -> None:
    """Claimed messages that can never be rendered end ``failed`` (never sent) with the reason."""
    ids = list(message_ids)
    for i in range(0, len(ids), 500):
        conn.execute(update(L).where(L.c.message_id.in_(ids[i : i + 500]),
                                     L.c.status == "claimed")
                     .values(status="failed", finished_at=now(), error=reason))


def record_results(conn: Connection, results: Sequence[Mapping[str, Any]],
                   lease: Lease | None = None) -> int:
    """results: dicts with message_id, status (sent|failed|unknown), provider_id, error.

    Under a lease, only rows this holder marked (its token) are written: a worker that lost its
    lease never overwrites the new holder's rows. Its own rows that the new holder found
    'sending' and marked 'unknown' still take its answer, which is the provider's word on them.
    Returns the rows written.
    """
    if not results:
        return 0
    stmt = update(L).where(L.c.message_id == bindparam("mid"))
    if lease is None:
        stmt = stmt.where(L.c.status == "sending")
    else:
        stmt = stmt.where((L.c.status == "sending") | (L.c.status == "unknown"),
                          L.c.lease_token == lease.token)
    stmt = stmt.values(status=bindparam("st"), provider_id=bindparam("pid"),
                       error=bindparam("err"), finished_at=bindparam("fin"))
    stamp = now()
    res = conn.execute(stmt, [
        {"mid": r["message_id"], "st": r["status"], "pid": r.get("provider_id"),
         "err": r.get("error"), "fin": stamp} for r in results
    ])
    return res.rowcount if res.rowcount is not None and res.rowcount >= 0 else len(results)


def status_counts(conn: Connection, as_of: dt.date) -> dict[str, int]:
    q = select(L.c.status, func.count()).where(L.c.as_of == as_of).group_by(L.c.status)
    return {s: int(n) for s, n in conn.execute(q)}



def nights_decided(conn: Connection, nights: Iterable[dt.date]) -> set[dt.date]:
    """Which of ``nights`` have decisions recorded (were planned)."""
    wanted = sorted(set(nights))
    if not wanted:
        return set()
    found = conn.execute(select(decision_log.c.as_of).where(
        decision_log.c.as_of.in_(wanted)).distinct()).scalars()
    return {v if isinstance(v, dt.date) else dt.date.fromisoformat(str(v)[:10]) for v in found}


def last_message(conn: Connection, customer_id: str, program: str,
                 as_of: dt.date | None = None) -> dict[str, Any] | None:
    """The newest message ``program`` claimed for the customer (on or before ``as_of``), with
    its stored render context (``context``, JSON, or None), or None. Found through the
    decision log's customer index: the ledger has none."""
    q = (select(decision_log.c.message_id)
         .where(decision_log.c.customer_id == customer_id, decision_log.c.program == program,
                decision_log.c.message_id.is_not(None)))
    if as_of is not None:
        q = q.where(decision_log.c.as_of <= as_of)
    message_id = conn.execute(q.order_by(decision_log.c.as_of.desc()).limit(1)).scalar()
    if message_id is None:
        return None
    row = conn.execute(select(L.c.message_id, L.c.as_of, L.c.status, L.c.kind)
                       .where(L.c.message_id == message_id)).mappings().first()
    if row is None:
        return None
    return {**row, "context": contexts_of(conn, [message_id]).get(message_id)}


def customer_and_program(conn: Connection, message_id: str) -> tuple[str, str] | None:
    """Who a message went to and which program sent it (by primary key), None if unknown."""
    row = conn.execute(select(L.c.customer_id, L.c.program)
                       .where(L.c.message_id == message_id)).first()
    return (row.customer_id, row.program) if row else None


# -- what the provider reports afterwards (tend serve's Event Webhook) ------------------------

def owners(conn: Connection, message_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``message_id -> (customer_id, status)`` for those of these messages the ledger knows."""
    ids = list(dict.fromkeys(message_ids))
    out: dict[str, tuple[str, str]] = {}
    if ids and conn.dialect.name == "postgresql":  # one array parameter, not 1,000 binds
        rows = conn.exec_driver_sql(
            "SELECT message_id::text, customer_id, status FROM contact_ledger "
            "WHERE message_id = ANY(%(ids)s::uuid[])", {"ids": ids})
        return {m.replace("-", ""): (str(c), str(s)) for m, c, s in rows}
    for i in range(0, len(ids), 1000):
        out.update({str(m): (str(c), str(s)) for m, c, s in conn.execute(
            select(L.c.message_id, L.c.customer_id, L.c.status)
            .where(L.c.message_id.in_(ids[i : i + 1000])))})
    return out


def settle_reported(conn: Connection, outcomes: Mapping[str, tuple[str, str]]) -> int:
    """``message_id -> (status, note)``: an ``unknown`` message (the sender could not tell
    whether the provider took it) whose fate the provider has since reported. Only
    ``unknown`` rows change, so a late or repeated report never rewrites a settled one."""
    if not outcomes:
        return 0
    stmt = (update(L).where(L.c.message_id == bindparam("mid"), L.c.status == "unknown")
            .values(status=bindparam("st"), error=bindparam("err"), finished_at=bindparam("fin")))
    stamp = now()
    res = conn.execute(stmt, [{"mid": m, "st": st, "err": note, "fin": stamp}
                              for m, (st, note) in outcomes.items()])
    return res.rowcount or 0


def exposures(conn: Connection, start: dt.date, end: dt.date) -> pd.DataFrame:
    """Who was exposed to a program on the nights ``start``..``end`` (tend.results): the
    messages ``sent`` (group ``contacted``) and the candidates logged ``held_out`` (group
    ``held_out``, no message). Columns customer_id, program, night, group, message_id."""
    sent = select(L.c.customer_id, L.c.program, L.c.as_of, L.c.message_id).where(
        L.c.status == "sent", L.c.as_of >= start, L.c.as_of <= end)
    held = select(decision_log.c.customer_id, decision_log.c.program, decision_log.c.as_of).where(
        decision_log.c.fate == "held_out", decision_log.c.as_of >= start,
        decision_log.c.as_of <= end)
    cols = ["customer_id", "program", "night", "message_id"]
    a = pd.DataFrame(conn.execute(sent).all(), columns=cols).assign(group="contacted")
    b = pd.DataFrame(conn.execute(held).all(), columns=cols[:3]).assign(
        group="held_out", message_id=None)
    out = pd.concat([a, b], ignore_index=True) if len(a) or len(b) else a.iloc[0:0]
    out["night"] = pd.to_datetime(out["night"]).dt.date
    out["customer_id"] = out["customer_id"].astype(str)
    return out[[*cols, "group"]]


def batch_ids(conn: Connection, as_of: dt.date) -> list[int]:
    """The batches night ``as_of`` claimed messages in (what ``tend send --batch`` takes)."""
    q = select(L.c.batch_id).where(L.c.as_of == as_of).distinct().order_by(L.c.batch_id)
    return [int(b) for (b,) in conn.execute(q)]
