"""Erasure: forget a customer's personal data, keeping only what stops Tend mailing them again.

The answer to an erasure request (Québec's Law 25, PIPEDA, the GDPR): ``tend forget``
(``tend.cli.forget``) calls :func:`forget`, which in one store transaction

* removes the customer's lines from the compressed render contexts (``context_batches``: each
  batch that held one is rewritten without it) — names, addresses, products, vouchers;
* keeps the ledger's rows (a night's totals stay true) under a pseudonym instead of the
  customer id, with their error text cleared; a message not yet sent ends ``failed``;
* deletes their decision log, deferred candidates, preferences, survey answers, complaints,
  provider events, features and quarantined rows;
* replaces their suppressions by one row per known address holding only a keyed hash of it
  (HMAC-SHA256 with ``TEND_SECRET_KEY``; reason ``erased``), which planning checks
  (:func:`tend.store.suppressions.erased`) so they are never mailed again;

then deletes their messages from the outbox and their records from the ``tend serve`` spool.
Addresses come from the stored contexts and suppressions, and from the shop when it
still has the customer.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, delete, or_, select, update

from tend.logs import log
from tend.store import ledger
from tend.store import suppressions as suppressed
from tend.store.db import connect
from tend.store.tables import (
    complaints,
    contact_ledger,
    context_batches,
    customer_features,
    decision_log,
    deferred,
    message_events,
    preferences,
    quarantine,
    suppressions,
    survey_answers,
)

__all__ = ["Erased", "forget"]


@dataclass
class Erased:
    """What :func:`forget` erased for one customer, by place."""

    customer_id: str
    counts: Counter[str] = field(default_factory=Counter)
    addresses: int = 0
    """Addresses now suppressed by their keyed hash only."""

    def lines(self) -> list[str]:
        done = ", ".join(f"{what} {n:,}" for what, n in sorted(self.counts.items()) if n)
        return [f"customer {self.customer_id}: erased {done or 'nothing (no data held)'}; "
                f"{self.addresses} address(es) kept only as a keyed hash, never mailed again"]


@dataclass
class _Person:
    customer_id: str
    emails: set[str] = field(default_factory=set)
    message_ids: set[str] = field(default_factory=set)
    batches: set[tuple[Any, int]] = field(default_factory=set)


def forget(store_url: str, customer_ids: Iterable[str], *, secret: str,
           shop_url: str | None = None, outbox_dir: Path | None = None,
           spool_dir: Path | None = None) -> list[Erased]:
    """Erase each customer (see the module docstring); safe to run twice."""
    ids = list(dict.fromkeys(str(c).strip() for c in customer_ids if str(c).strip()))
    people = {c: _Person(c) for c in ids}
    if shop_url is not None and ids:
        _from_shop(shop_url, people)
    out = {c: Erased(c) for c in ids}
    engine = connect(store_url)
    with engine.begin() as conn:
        ledger.lock_ledger(conn)  # no claim or send of theirs may interleave
        _find(conn, people)
        for person in people.values():
            _erase_rows(conn, person, out[person.customer_id], secret)
        _rewrite_contexts(conn, people, out)
    for person in people.values():
        if outbox_dir is not None:
            out[person.customer_id].counts["outbox files"] += _erase_outbox(outbox_dir, person)
        if spool_dir is not None:
            out[person.customer_id].counts["spool records"] += _erase_spool(spool_dir, person)
    return list(out.values())


def _from_shop(shop_url: str, people: dict[str, _Person]) -> None:
    from tend.errors import TendError
    from tend.shop.read import customer_emails

    try:
        found = customer_emails(shop_url, list(people))
    except (TendError, OSError, ValueError) as exc:  # the shop already deleted them, or is away
        log.info("forget: the shop could not be read (%s); using the store's own records", exc)
        return
    for customer_id, emails in found.items():
        if customer_id in people:
            people[customer_id].emails.update(emails)


def _find(conn: Connection, people: dict[str, _Person]) -> None:
    """Their messages, batches and addresses, from the store itself."""
    L = contact_ledger
    ids = list(people)
    for i in range(0, len(ids), 500):
        for mid, cid, night, batch in conn.execute(
                select(L.c.message_id, L.c.customer_id, L.c.as_of, L.c.batch_id)
                .where(L.c.customer_id.in_(ids[i : i + 500]))):
            people[cid].message_ids.add(mid)
            people[cid].batches.add((night, int(batch)))
        for cid, email in conn.execute(select(suppressions.c.customer_id, suppressions.c.email)
                                       .where(suppressions.c.customer_id.in_(ids[i : i + 500]))):
            if email and not email.startswith(suppressed.ERASED_PREFIX):
                people[cid].emails.add(email)
        for cid, ctx in conn.execute(select(deferred.c.customer_id, deferred.c.context)
                                     .where(deferred.c.customer_id.in_(ids[i : i + 500]))):
            _learn(people[cid], ctx)
    for person in people.values():
        for night, batch in person.batches:
            contexts = ledger.batch_contexts(conn, night, batch)
            for mid in person.message_ids & contexts.keys():
                _learn(person, contexts[mid])


def _learn(person: _Person, context: str) -> None:
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        customer = json.loads(context).get("customer") or {}
        if customer.get("email"):
            person.emails.add(str(customer["email"]))


def _erase_rows(conn: Connection, person: _Person, erased: Erased, secret: str) -> None:
    cid = person.customer_id
    L = contact_ledger
    pseudonym = suppressed.pseudonym(cid, secret)
    mine = L.c.customer_id == cid
    note = "erased on request (tend forget)"
    n = conn.execute(update(L).where(mine, L.c.status.in_(("claimed", "sending")))
                     .values(status="failed", finished_at=ledger.now(),
                             error=f"{note}: never sent")).rowcount
    erased.counts["unsent messages cancelled"] += n or 0
    # Provider errors can quote the address: only the note stays.
    conn.execute(update(L).where(mine, L.c.status == "failed", L.c.error.is_not(None),
                                 L.c.error != f"{note}: never sent").values(error=note))
    conn.execute(update(L).where(mine, L.c.status != "failed").values(error=None))
    erased.counts["ledger rows pseudonymised"] += conn.execute(
        update(L).where(mine).values(customer_id=pseudonym)).rowcount or 0
    mids = sorted(person.message_ids)
    events = [message_events.c.customer_id == cid]
    if mids:
        events.append(message_events.c.message_id.in_(mids))
    for label, stmt in (
        ("decisions", delete(decision_log).where(decision_log.c.customer_id == cid)),
        ("deferred", delete(deferred).where(deferred.c.customer_id == cid)),
        ("preferences", delete(preferences).where(preferences.c.customer_id == cid)),
        ("survey answers", delete(survey_answers).where(survey_answers.c.customer_id == cid)),
        ("complaints", delete(complaints).where(complaints.c.customer_id == cid)),
        ("events", delete(message_events).where(or_(*events))),
        ("features", delete(customer_features).where(customer_features.c.customer_id == cid)),
        ("suppressions", delete(suppressions).where(suppressions.c.customer_id == cid)),
    ):
        erased.counts[label] += conn.execute(stmt).rowcount or 0
    needles = [cid, *person.emails]
    q = quarantine.c
    erased.counts["quarantined rows"] += conn.execute(delete(quarantine).where(or_(
        q.record_key == cid, *(q.payload.contains(x, autoescape=True) for x in needles)
    ))).rowcount or 0
    erased.addresses = suppressed.add_erased(conn, person.emails, secret=secret,
                                             created_at=ledger.now())


def _rewrite_contexts(conn: Connection, people: dict[str, _Person],
                      out: dict[str, Erased]) -> None:
    """Each batch that held one of their contexts, compressed again without it."""
    import pyarrow as pa

    gone = {m: p.customer_id for p in people.values() for m in p.message_ids}
    batches = {b for p in people.values() for b in p.batches}
    CB = context_batches
    for night, batch in sorted(batches):
        contexts = ledger.batch_contexts(conn, night, batch)
        keep = {m: c for m, c in contexts.items() if m not in gone}
        for m in contexts.keys() - keep.keys():
            out[gone[m]].counts["render contexts"] += 1
        where = (CB.c.as_of == night, CB.c.batch_id == batch)
        if len(keep) == len(contexts):
            continue
        if not keep:
            conn.execute(delete(CB).where(*where))
            continue
        raw = "\n".join(f"{m}\t{c}" for m, c in keep.items()).encode()
        conn.execute(update(CB).where(*where).values(
            messages=len(keep), codec=ledger.CONTEXT_CODEC, raw_bytes=len(raw),
            payload=pa.compress(raw, codec=ledger.CONTEXT_CODEC, asbytes=True)))


def _mentions(data: bytes, person: _Person) -> bool:
    """Whether ``data`` names one of their addresses (names are not unique: another customer
    may share one, so a name alone never removes a file or a record)."""
    low = data.lower()
    return any(e.lower().encode() in low for e in person.emails)


def _erase_outbox(directory: Path, person: _Person) -> int:
    """Their .eml files: by message id, and any other file that names their address."""
    if not directory.is_dir():
        return 0
    removed = 0
    for path in directory.glob("*.eml"):
        if path.stem in person.message_ids or _mentions(path.read_bytes(), person):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _erase_spool(directory: Path, person: _Person) -> int:
    """Their records in ``tend serve``'s spool (JSON lines), rewritten under the spool's own
    lock protocol (``tend.listen.spool``): a writer that opened the old file sees it replaced
    and writes to a fresh one."""
    if not directory.is_dir():
        return 0
    token = json.dumps(person.customer_id).encode()
    removed = 0
    # A replay renames a pending file before it locks it, so a file may move between the
    # listing and the lock; look again until a pass finds every file where it was listed.
    for _ in range(_SPOOL_PASSES):
        moved = False
        for path in sorted(directory.glob("*.jsonl")):
            n = _erase_spool_file(path, token, person)
            moved |= n is None
            removed += n or 0
        if not moved:
            break
    else:
        log.warning("forget %s: tend serve's spool in %s kept changing under %s passes; run "
                    "tend forget again for this customer once it is quiet", person.customer_id,
                    directory, _SPOOL_PASSES)
    return removed


#: Passes over the spool folder before ``forget`` settles for what it found: each extra pass
#: is only taken when a replay moved a file during the previous one.
_SPOOL_PASSES = 10


def _erase_spool_file(path: Path, token: bytes, person: _Person) -> int | None:
    """How many of their records ``path`` held (now removed), or None when the file moved
    or was replaced before it could be locked: a replay renames a pending file without its
    lock, so a file that names them is taken (renamed) first, as the replay does, and is
    rewritten only while its name is still the locked file."""
    from tend.listen.spool import replace_lines, same_file, take  # the spool's own protocol

    try:
        if not _mentions(data := path.read_bytes(), person) and token not in data:
            return 0
    except FileNotFoundError:
        return None
    taken = take(path)
    if taken is None:
        return None
    try:
        fd = os.open(taken, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not same_file(fd, taken):
            return None
        lines = taken.read_bytes().splitlines(keepends=True)
        keep = [x for x in lines if token not in x and not _mentions(x, person)]
        if len(keep) < len(lines):
            replace_lines(taken, keep)
        return len(lines) - len(keep)
    finally:
        os.close(fd)


def forget_ids_from_file(path: Path) -> Sequence[str]:
    """One customer id a line; blank lines and ``#`` comments skipped."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
