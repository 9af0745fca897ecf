"""``forget``: after it, no table, context, outbox file or spool record names the customer,
and the next planning run skips them. A real demo night (plan, send to the outbox) on SQLite and
PostgreSQL, with every kind of data ``tend serve`` records added for the customer."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
from collections import Counter
from pathlib import Path

import pytest
from _support import shop_settings
from sqlalchemy import select

from tend import messages
from tend.delivery import OutboxBackend, engine
from tend.features import ingest
from tend.programs import plan
from tend.programs.caps import SendWindow
from tend.shop.read import read_customers
from tend.store import ledger
from tend.store.db import connect, migrate
from tend.store.erasure import forget
from tend.store.tables import (
    complaints,
    contact_ledger,
    context_batches,
    decision_log,
    message_events,
    metadata,
    preferences,
    quarantine,
    suppressions,
    survey_answers,
)

NIGHT = dt.date(2026, 11, 20)
SECRET = "erasure-test-secret"
ALWAYS_OPEN = SendWindow(dt.time(0, 0), dt.time(23, 59, 59))

pytestmark = pytest.mark.demo_shop(customers=300, seed=31, as_of=NIGHT)


def plan_night(shop: str, store_url: str) -> plan.PlanResult:
    settings = shop_settings()
    return plan.plan_night(shop, store_url, NIGHT, "r1", settings=settings,
                           renderer=messages.default_renderer(settings), secret=SECRET,
                           batch_size=50)


def texts_of(store_url: str) -> list[str]:
    """Every text value of every table, render contexts decompressed."""
    out: list[str] = []
    with connect(store_url).connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)).mappings():
                if table is context_batches:
                    out.extend(ledger.batch_contexts(conn, row["as_of"],
                                                     row["batch_id"]).values())
                    continue
                out.extend(str(v) for v in row.values() if isinstance(v, str))
    return out


def test_forget_erases_everywhere_and_the_next_plan_skips_them(
        demo_shop: str, store_url: str, tmp_path: Path) -> None:
    ingest.run_ingest(demo_shop, store_url, NIGHT, "r1")
    planned = plan_night(demo_shop, store_url)
    outbox = OutboxBackend(tmp_path / "outbox")
    settings = shop_settings()
    # Half the batches sent, half still claimed: both kinds of row must be erased.
    for b in planned.batches[::2]:
        engine.send_batch(store_url, NIGHT, b, backend=outbox, send_window=ALWAYS_OPEN,
                          renderer=messages.default_renderer(settings), settings=settings)
    with connect(store_url).connect() as conn:
        rows = conn.execute(select(contact_ledger.c.customer_id, contact_ledger.c.message_id,
                                   contact_ledger.c.status)).all()
    shop = read_customers(demo_shop, [r.customer_id for r in rows])
    shop["name"] = shop["first_name"] + " " + shop["last_name"]
    unique = shop[~shop["name"].duplicated(keep=False)].set_index("customer_id")
    sent = [r for r in rows if r.status == "sent" and r.customer_id in unique.index]
    waiting = [r for r in rows if r.status == "claimed" and r.customer_id in unique.index]
    assert sent and waiting
    people = [sent[0].customer_id, waiting[0].customer_id]
    other = next(r.customer_id for r in rows if r.customer_id not in people)
    who: dict[str, tuple[str, str]] = {c: (unique.loc[c, "email"], unique.loc[c, "name"])
                                       for c in people}
    mid = sent[0].message_id
    now = ledger.now()
    spool = tmp_path / "spool"
    spool.mkdir()
    records = [{"action": "event", "payload": {"email": who[people[0]][0], "sg_event_id": "e1"}},
               {"action": "unsubscribe", "payload": {"customer_id": people[1]}},
               {"action": "unsubscribe", "payload": {"customer_id": other}}]
    (spool / "pending-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with connect(store_url).begin() as conn:  # what tend serve records about them
        c = people[0]
        conn.execute(preferences.insert().values(customer_id=c, fewer_emails=True,
                                                 updated_at=now))
        conn.execute(survey_answers.insert().values(
            message_id=mid, customer_id=c, program="p", rating=1, answered_at=now,
            updated_at=now, comment=f"I am {who[c][1]}, write to {who[c][0]}"))
        conn.execute(complaints.insert().values(customer_id=c, message_id=mid, source="survey",
                                                rating=1, opened_at=now, comment=who[c][1]))
        conn.execute(message_events.insert().values(
            event_id="e1", message_id=mid, customer_id=c, event="delivered", occurred_at=now,
            received_at=now, detail=json.dumps({"email": who[c][0]})))
        conn.execute(suppressions.insert().values(customer_id=c, email=who[c][0],
                                                  reason="spam_report", source="webhook",
                                                  created_at=now))
        conn.execute(quarantine.insert().values(
            as_of=NIGHT, run_id="r1", source="customers", record_key=c, reason="bad",
            payload=json.dumps({"email": who[c][0]}), created_at=now))
    before = texts_of(store_url)
    assert any(who[people[0]][0] in t for t in before)

    erased = forget(store_url, people, secret=SECRET, shop_url=demo_shop,
                    outbox_dir=outbox.directory, spool_dir=spool)

    by = {e.customer_id: e for e in erased}
    assert by[people[0]].counts["outbox files"] == 1
    assert by[people[1]].counts["unsent messages cancelled"] >= 1
    assert all(e.addresses == 1 and e.counts["render contexts"] >= 1 for e in erased)
    assert "kept only as a keyed hash" in by[people[0]].lines()[0]
    texts = texts_of(store_url)
    files = [p.read_bytes().decode("utf-8", "replace").lower()
             for p in [*outbox.directory.glob("*.eml"), *spool.glob("*")]]
    for email, name in who.values():
        assert not [t for t in texts if email.lower() in t.lower() or name in t]
        assert not [f for f in files if email.lower() in f or name.lower() in f]
    assert not [t for t in texts if t in people]  # not even their id
    assert len(texts) > len(before) // 2  # everyone else's data is still there
    left = [json.loads(x)["payload"].get("customer_id") for f in spool.glob("*.jsonl")
            for x in f.read_text().splitlines()]
    assert left == [other]

    # Erasing twice finds nothing more and says so.
    twice = forget(store_url, people, secret=SECRET, outbox_dir=outbox.directory,
                   spool_dir=spool)
    assert all(not any(e.counts.values()) for e in twice)

    # The next night skips them, even when the shop still has them and their features are
    # rebuilt (a full ingest): every candidate of theirs is suppressed by the address's hash.
    ingest.run_ingest(demo_shop, store_url, NIGHT, "r2", full=True)
    again = plan_night(demo_shop, store_url)
    assert again.claimed() == 0  # a rerun: nothing new for anyone
    with connect(store_url).connect() as conn:
        fates = Counter(conn.execute(select(decision_log.c.fate).where(
            decision_log.c.customer_id.in_(people))).scalars())
        theirs = conn.execute(select(contact_ledger.c.status).where(
            contact_ledger.c.customer_id.in_(people))).all()
    assert fates and set(fates) == {"suppressed:erased"}, fates
    assert theirs == []



def test_every_address_the_shop_holds_is_kept_as_a_keyed_hash(
        demo_shop: str, store_url: str, tmp_path: Path) -> None:
    """A customer whose rows in the shop's view disagree on the email (the planner mails
    neither): both addresses are kept as keyed hashes, so neither is mailed again under
    another id."""
    import pandas as pd
    from _support import shop_with_second_address

    from tend.store import suppressions

    shop = shop_with_second_address(demo_shop, tmp_path / "shop.db", "C000001",
                                    "second@x.example")
    assert len(forget(store_url, ["C000001"], secret=SECRET, shop_url=shop)) == 1
    first = read_customers(demo_shop, ["C000001"])["email"].iloc[0]
    later = pd.DataFrame({"customer_id": ["NEW-1", "NEW-2"],
                          "email": [first, "Second@X.example"]})
    with connect(store_url).connect() as conn:
        caught = set(suppressions.erased(conn, later, SECRET)["customer_id"])
    assert caught == {"NEW-1", "NEW-2"}


def test_a_spool_file_a_replay_renames_under_forget_is_still_erased(tmp_path: Path) -> None:
    """A replay renames a pending file without its lock (then locks it). Were ``forget`` to
    lock the file it opened and rewrite whatever the name holds by then, a replay renaming it
    in between would keep their records in the renamed file (and a rewrite by name would
    replace the writer's fresh file instead). A stand-in ``flock`` plays that replay and a
    writer at the worst moment: just before the erasure's lock is taken."""
    from types import SimpleNamespace

    from tend.listen.spool import Spool
    from tend.store import erasure

    store = f"sqlite:///{tmp_path / 'store.db'}"
    migrate(store)
    spool_dir = tmp_path / "spool"
    writer = Spool(spool_dir)
    writer.append({"action": "unsubscribe", "payload": {"customer_id": "gone"}})
    writer.append({"action": "unsubscribe", "payload": {"customer_id": "stays"}})
    pending = next(spool_dir.glob("pending-*.jsonl"))
    real = fcntl.flock
    interleaved = []

    def flock(fd: int, op: int) -> None:
        if not interleaved:
            interleaved.append(True)
            if pending.exists():  # the replay takes the file the erasure has opened
                pending.rename(spool_dir / f"replaying-1-{pending.name[8:]}")
            writer.append({"action": "unsubscribe", "payload": {"customer_id": "later"}})
        real(fd, op)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(erasure, "fcntl", SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX))
        erased = forget(store, ["gone"], secret=SECRET, spool_dir=spool_dir)

    assert interleaved
    assert erased[0].counts["spool records"] == 1
    left = sorted(json.loads(x)["payload"]["customer_id"] for f in spool_dir.glob("*.jsonl")
                  for x in f.read_text().splitlines())
    assert left == ["later", "stays"]
