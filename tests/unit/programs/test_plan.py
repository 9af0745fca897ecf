"""The programs stage over several nights: arbitration, deferral, expiry, holdouts, consent."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest
from _support import make_program as program
from _support import make_registry as registry
from _support import night_decisions as decisions
from _support import plan_test_night as night
from sqlalchemy import select

from tend import messages
from tend.config import ShopSettings
from tend.errors import LedgerError
from tend.features import ingest
from tend.programs import plan
from tend.programs.caps import held_out
from tend.programs.registry import Registry
from tend.signals import SIGNAL_COLUMNS
from tend.store import ledger
from tend.store.db import connect
from tend.store.tables import (
    contact_ledger,
    context_batches,
    decision_log,
    deferred,
    suppressions,
)

MONDAY = dt.date(2026, 11, 16)
SETTINGS = ShopSettings.from_env({})

pytestmark = pytest.mark.demo_shop(customers=250, seed=21, as_of=MONDAY)


def test_a_loser_is_deferred_then_sent_when_the_cap_allows(shop_url: str,
                                                         store_url: str) -> None:
    reg = registry(program("first", priority=60), program("second", priority=50))
    night(shop_url, store_url, MONDAY, reg)
    d = decisions(store_url, MONDAY).set_index(["customer_id", "program"])
    who = d.xs("first", level="program").query("fate == 'claimed'").index[0]
    assert d.loc[(who, "second"), "fate"] == "deferred"
    assert d.loc[(who, "second"), "reason"].startswith("lost_to:first")

    night(shop_url, store_url, MONDAY + dt.timedelta(days=1), reg)
    d1 = decisions(store_url, MONDAY + dt.timedelta(days=1)).set_index(["customer_id",
                                                                        "program"])
    assert d1.loc[(who, "second"), "fate"] == "deferred"
    assert d1.loc[(who, "second"), "reason"].startswith("capped:3d")

    thursday = MONDAY + dt.timedelta(days=3)
    night(shop_url, store_url, MONDAY + dt.timedelta(days=2), reg)
    night(shop_url, store_url, thursday, reg)
    d3 = decisions(store_url, thursday).set_index(["customer_id", "program"])
    assert d3.loc[(who, "second"), "fate"] == "claimed"
    with connect(store_url).connect() as conn:
        left = conn.execute(select(deferred).where(deferred.c.customer_id == who)).all()
    assert left == []


def test_a_deferred_message_expires_when_its_window_closes(shop_url: str,
                                                          store_url: str) -> None:
    reg = registry(
        program("winback", priority=60),
        program("newsletter", signal="newsletter", schedule={"weekly_on": "monday"},
                priority=10, validity_days=2),
    )
    night(shop_url, store_url, MONDAY, reg)
    mon = decisions(store_url, MONDAY)
    lost = mon.loc[(mon["program"] == "newsletter") & (mon["fate"] == "deferred"),
                   "customer_id"]
    sent_nl = mon.loc[(mon["program"] == "newsletter") & (mon["fate"] == "claimed")]
    assert len(lost) > 0 and len(sent_nl) > 0
    who = lost.iloc[0]
    for offset in (1, 2, 3):
        night(shop_url, store_url, MONDAY + dt.timedelta(days=offset), reg)
    everything = decisions(store_url)
    story = everything.loc[(everything["customer_id"] == who)
                           & (everything["program"] == "newsletter")]
    fates = dict(zip(story["as_of"], story["fate"], strict=True))
    assert fates[MONDAY + dt.timedelta(days=1)] == "deferred"  # capped:3d, still valid
    assert fates[MONDAY + dt.timedelta(days=2)] == "deferred"
    assert fates[MONDAY + dt.timedelta(days=3)] == "expired"
    with connect(store_url).connect() as conn:
        assert conn.execute(select(deferred).where(deferred.c.program == "newsletter")
                            ).all() == []


def test_newsletter_only_fires_on_its_day(shop_url: str, store_url: str) -> None:
    reg = registry(program("newsletter", signal="newsletter", schedule={"monthly_on_day": 17},
                           priority=10, validity_days=1))
    assert night(shop_url, store_url, MONDAY, reg).candidates == 0
    tuesday = night(shop_url, store_url, MONDAY + dt.timedelta(days=1), reg)
    assert tuesday.claimed() > 0
    with connect(store_url).connect() as conn:
        occurrences = set(conn.execute(select(contact_ledger.c.occurrence)).scalars())
    assert occurrences == {"newsletter::2026-11-17"}


def test_holdout_customers_are_recorded_and_receive_nothing(shop_url: str,
                                                            store_url: str) -> None:
    reg = registry(program("winback", holdout_share=0.5), caps=[])
    night(shop_url, store_url, MONDAY, reg)
    d = decisions(store_url, MONDAY)
    held = set(d.loc[d["fate"] == "held_out", "customer_id"])
    claimed = set(d.loc[d["fate"] == "claimed", "customer_id"])
    assert held and claimed and not held & claimed
    assert d.loc[d["fate"] == "held_out", "reason"].str.contains("control group").all()
    # a customer eligible on both nights is held out on both or on neither (same quarter)
    night(shop_url, store_url, MONDAY + dt.timedelta(days=1), reg)
    d1 = decisions(store_url, MONDAY + dt.timedelta(days=1))
    both = set(d1["customer_id"]) & set(d["customer_id"])
    assert both
    assert set(d1.loc[d1["fate"] == "held_out", "customer_id"]) & both == held & both


def test_the_holdout_is_drawn_among_customers_the_program_could_contact(
        shop_url: str, store_url: str) -> None:
    """A customer the program contacted last night (in its cooldown, or the same message) is
    not held out tonight even when the draw picks them: the control group must not fill up
    with recent recipients while their contacted twins are deferred."""
    night(shop_url, store_url, MONDAY, registry(program("winback", cooldown_days=30), caps=[]))
    contacted = set(decisions(store_url, MONDAY).query("fate == 'claimed'")["customer_id"])
    tuesday = MONDAY + dt.timedelta(days=1)
    night(shop_url, store_url, tuesday, registry(program("winback", cooldown_days=30,
                                                         holdout_share=0.5),
                                                 caps=[]))
    d = decisions(store_url, tuesday).query("program == 'winback'")
    ids = d["customer_id"].reset_index(drop=True)
    drawn = set(ids[held_out(ids, "winback", tuesday, 0.5)])
    again = contacted & drawn
    assert again, "the draw should pick some of Monday's recipients"
    fates = d.set_index("customer_id")
    assert set(fates.loc[sorted(again), "fate"]) <= {"already_claimed", "deferred"}
    assert not fates.loc[sorted(again), "reason"].str.contains("control group").any()


def test_an_open_complaint_pauses_marketing_but_not_service(shop_url: str,
                                                            store_url: str) -> None:
    reg = registry(program("winback", priority=60),
                   program("care", kind="service", priority=10), caps=[])
    ingest.run_ingest(shop_url, store_url, MONDAY, "i")
    # find a customer both programs want, then file a complaint for them
    night(shop_url, f"{store_url}", MONDAY, reg)
    d = decisions(store_url, MONDAY)
    who = d.loc[(d["program"] == "winback") & (d["fate"] == "claimed"), "customer_id"].iloc[0]
    with connect(store_url).begin() as conn:
        conn.execute(suppressions.insert().values(
            customer_id=who, reason="complaint", source="support", created_at=ledger.now()))
    later = MONDAY + dt.timedelta(days=200)  # past every cooldown; still lapsed
    night(shop_url, store_url, later, reg)
    d2 = decisions(store_url, later).set_index(["customer_id", "program"])
    assert d2.loc[(who, "winback"), "fate"] == "suppressed:complaint"
    assert d2.loc[(who, "care"), "fate"] in ("claimed", "already_claimed")


def test_a_suppression_holds_for_every_record_with_the_same_address(shop_url: str,
                                                                   store_url: str) -> None:
    """One person, two customer records (a guest checkout and an account): an unsubscribe
    recorded for one stops marketing and service mail to the other, whose address matches but
    for case, and `tend why` says through whom."""
    import sqlite3

    reg = registry(program("winback", priority=60),
                   program("care", kind="service", priority=10), caps=[])
    ingest.run_ingest(shop_url, store_url, MONDAY, "i")
    night(shop_url, store_url, MONDAY, reg)
    d = decisions(store_url, MONDAY)
    both = set(d.loc[d["program"] == "winback", "customer_id"]) & set(
        d.loc[d["program"] == "care", "customer_id"])
    who, bystander = sorted(set(d.loc[(d["program"] == "winback")
                                      & (d["fate"] == "claimed"), "customer_id"]) & both)[:2]
    with sqlite3.connect(shop_url.removeprefix("sqlite:///")) as db:
        other, email = db.execute("SELECT customer_id, email FROM customers WHERE customer_id "
                                  "NOT IN (?, ?) ORDER BY customer_id LIMIT 1",
                                  (who, bystander)).fetchone()
        db.execute("UPDATE customers SET email = ? WHERE customer_id = ?",
                   (email.upper(), who))
    with connect(store_url).begin() as conn:
        conn.execute(suppressions.insert().values(
            customer_id=other, reason="unsubscribed", source="one_click",
            created_at=ledger.now()))
    later = MONDAY + dt.timedelta(days=200)  # past every cooldown; still lapsed
    night(shop_url, store_url, later, reg)
    d2 = decisions(store_url, later).set_index(["customer_id", "program"])
    assert d2.loc[(who, "winback"), "fate"] == "suppressed:unsubscribed"
    assert d2.loc[(who, "winback"), "reason"] == (
        f"on the suppression list (unsubscribed) through customer {other}, who has the same "
        "email address")
    assert d2.loc[(who, "care"), "fate"] == "suppressed:unsubscribed"  # service too, as for them
    assert d2.loc[(bystander, "winback"), "fate"] in ("claimed", "already_claimed")


def test_a_bounce_travels_with_the_address_it_was_recorded_for(shop_url: str,
                                                               store_url: str) -> None:
    """A record that bounced at its old address, and whose shop address is now another
    record's, blocks nobody else: the bounce was the old address's. A bounce recorded for the
    address two records share blocks both."""
    import sqlite3

    reg = registry(program("winback", priority=60), caps=[])
    ingest.run_ingest(shop_url, store_url, MONDAY, "i")
    night(shop_url, store_url, MONDAY, reg)
    d = decisions(store_url, MONDAY)
    who = sorted(d.loc[(d["program"] == "winback") & (d["fate"] == "claimed"),
                       "customer_id"])[0]
    with sqlite3.connect(shop_url.removeprefix("sqlite:///")) as db:
        other, email = db.execute("SELECT c.customer_id, w.email FROM customers c, customers w "
                                  "WHERE w.customer_id = ? AND c.customer_id != ? "
                                  "ORDER BY c.customer_id LIMIT 1", (who, who)).fetchone()
        db.execute("UPDATE customers SET email = ? WHERE customer_id = ?", (email, other))

    def again(bounced_at: str) -> str:
        with connect(store_url).begin() as conn:
            for table in (contact_ledger, context_batches, decision_log, deferred,
                          suppressions):
                conn.execute(table.delete())
            conn.execute(suppressions.insert().values(
                customer_id=other, email=bounced_at, reason="hard_bounce", source="webhook",
                created_at=ledger.now()))
        night(shop_url, store_url, MONDAY, reg)
        return str(decisions(store_url, MONDAY).set_index(["customer_id", "program"])
                   .loc[(who, "winback"), "fate"])

    assert again("old.address@example.com") == "claimed"
    assert again(f" {email.upper()}") == "suppressed:hard_bounce"


def test_a_night_replayed_late_checks_implied_consent_on_the_day_it_runs(
        shop_url: str, store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same night planned on time and replayed three years later: every customer whose
    marketing rested on implied consent (a purchase within two years of the send) is refused
    on the replay, with the day it counted back from; express consent still goes."""
    import sqlite3

    reg = registry(program("winback", priority=60), caps=[])
    ingest.run_ingest(shop_url, store_url, MONDAY, "i")
    night(shop_url, store_url, MONDAY, reg)
    d = decisions(store_url, MONDAY)
    claimed = set(d.loc[d["fate"] == "claimed", "customer_id"])
    with sqlite3.connect(shop_url.removeprefix("sqlite:///")) as db:
        implied = {c for (c,) in db.execute(
            "SELECT customer_id FROM customers WHERE lower(marketing_consent) = 'implied'")}
    assert claimed & implied and claimed - implied
    with connect(store_url).begin() as conn:
        for table in (contact_ledger, context_batches, decision_log, deferred):
            conn.execute(table.delete())
    later = MONDAY + dt.timedelta(days=3 * 365)
    monkeypatch.setenv("TEND_TODAY", later.isoformat())
    night(shop_url, store_url, MONDAY, reg)
    d2 = decisions(store_url, MONDAY).set_index("customer_id")
    for c in claimed & implied:
        assert d2.loc[c, "fate"] == "no_consent"
        assert d2.loc[c, "reason"] == (
            "implied consent expired: last purchase more than 730 days before "
            f"{later}, the day the message would be sent")
    assert (d2.loc[sorted(claimed - implied), "fate"] == "claimed").all()


def test_one_record_per_address_gets_marketing_on_a_night(shop_url: str,
                                                         store_url: str) -> None:
    """Two customer records with one address, both due a win-back: one is contacted, the other
    waits (deferred), and its service mail still goes."""
    import sqlite3

    reg = registry(program("winback", priority=60),
                   program("care", kind="service", priority=10), caps=[])
    ingest.run_ingest(shop_url, store_url, MONDAY, "i")
    night(shop_url, store_url, MONDAY, reg)
    d = decisions(store_url, MONDAY)
    both = set(d.loc[d["program"] == "care", "customer_id"])
    first, second = sorted(set(d.loc[(d["program"] == "winback")
                                     & (d["fate"] == "claimed"), "customer_id"]) & both)[:2]
    with sqlite3.connect(shop_url.removeprefix("sqlite:///")) as db:
        db.execute("UPDATE customers SET email = (SELECT upper(email) FROM customers WHERE "
                   "customer_id = ?) WHERE customer_id = ?", (first, second))
    with connect(store_url).begin() as conn:  # the same night again, from scratch
        for table in (contact_ledger, context_batches, decision_log, deferred):
            conn.execute(table.delete())
    night(shop_url, store_url, MONDAY, reg)
    d2 = decisions(store_url, MONDAY).set_index(["customer_id", "program"])
    assert d2.loc[(first, "winback"), "fate"] == "claimed"
    assert d2.loc[(second, "winback"), "fate"] == "deferred"
    assert d2.loc[(second, "winback"), "reason"].startswith(
        f"capped:same_address: customer {first}, who has the same email address, is the one "
        "contacted tonight; deferred: still valid until")
    with connect(store_url).connect() as conn:
        waiting = set(conn.execute(select(deferred.c.customer_id)).scalars())
    assert second in waiting
    assert d2.loc[(second, "care"), "fate"] == "claimed"  # its service mail is its own


def test_disabling_a_program_expires_its_waiting_messages(shop_url: str,
                                                         store_url: str) -> None:
    both = registry(program("first", priority=60), program("second", priority=50))
    night(shop_url, store_url, MONDAY, both)
    only_first = registry(program("first", priority=60))
    night(shop_url, store_url, MONDAY + dt.timedelta(days=1), only_first)
    d = decisions(store_url, MONDAY + dt.timedelta(days=1))
    expired = d.loc[d["program"] == "second"]
    assert len(expired) and (expired["fate"] == "expired").all()
    assert expired["reason"].str.contains("disabled").all()


def _plan(shop_url: str, store_url: str, day: dt.date, reg: Registry, run: str
          ) -> plan.PlanResult:
    return plan.plan_night(shop_url, store_url, day, run, settings=SETTINGS,
                              renderer=messages.default_renderer(SETTINGS),
                              secret="s", registry=reg)


def _contexts(store_url: str, day: dt.date) -> dict[str, str]:
    with connect(store_url).connect() as conn:
        ids = list(conn.execute(select(contact_ledger.c.message_id).where(
            contact_ledger.c.as_of == day)).scalars())
        return ledger.contexts_of(conn, ids)


def test_contexts_are_stored_after_the_claim_and_a_rerun_completes_them(
        shop_url: str, store_url: str) -> None:
    """The claim commits keys only; the contexts follow. A stage stopped in between leaves
    claims without contexts, which its rerun builds from the same candidates."""
    reg = registry(program("first", priority=60), program("second", priority=50))
    ingest.run_ingest(shop_url, store_url, MONDAY, "i")
    first = _plan(shop_url, store_url, MONDAY, reg, "p1")
    stored = _contexts(store_url, MONDAY)
    assert first.claimed() > 0 and len(stored) == first.claimed()
    with connect(store_url).begin() as conn:  # as if the stage had stopped after its claim
        conn.execute(context_batches.delete())
        assert len(ledger.claims_without_contexts(conn, MONDAY)) == first.claimed()
        with pytest.raises(LedgerError, match="no stored render context"):
            ledger.next_claimed(conn, MONDAY, first.batches[0], 10)
    again = _plan(shop_url, store_url, MONDAY, reg, "p2")
    assert again.claimed() == 0  # nothing new claimed ...
    assert _contexts(store_url, MONDAY) == stored  # ... and the same contexts rebuilt


def test_a_claim_whose_candidate_is_gone_is_failed_not_sent(shop_url: str,
                                                            store_url: str) -> None:
    ingest.run_ingest(shop_url, store_url, MONDAY, "i")
    _plan(shop_url, store_url, MONDAY, registry(program("first")), "p1")
    with connect(store_url).begin() as conn:
        conn.execute(context_batches.delete())
    # the rerun's registry no longer has the program: its messages cannot be rebuilt
    _plan(shop_url, store_url, MONDAY, registry(program("other", signal="first_purchase",
                                                        template="thank_you")), "p2")
    with connect(store_url).connect() as conn:
        rows = conn.execute(select(contact_ledger.c.program, contact_ledger.c.status,
                                   contact_ledger.c.error)).all()
    gone = [r for r in rows if r.program == "first"]
    assert gone and all(r.status == "failed" and "no render context" in r.error for r in gone)


def test_the_nightly_plan_honours_every_choice_of_the_preferences_page(
        shop_url: str, store_url: str) -> None:
    from tend.store import preferences as chosen
    from tend.store.preferences import Preferences

    night(shop_url, store_url, MONDAY, registry(program("winback", cooldown_days=30), caps=[]))
    claimed = decisions(store_url, MONDAY).query("fate == 'claimed'")["customer_id"].tolist()
    paused, no_offers, fewer, french, pause_over = claimed[:5]
    tuesday = MONDAY + dt.timedelta(days=1)
    with connect(store_url).begin() as conn:
        for who, prefs in ((paused, Preferences(paused_until=tuesday + dt.timedelta(days=30))),
                           (no_offers, Preferences(offers_opt_out=True)),
                           (fewer, Preferences(fewer_emails=True)),
                           (french, Preferences(locale="fr")),
                           (pause_over, Preferences(paused_until=tuesday))):
            chosen.save(conn, who, prefs, now=ledger.now())
    # another marketing program on the same signal: a fresh message for each of them
    night(shop_url, store_url, tuesday, registry(program("second"), caps=[]))
    d = decisions(store_url, tuesday).set_index("customer_id")
    assert d.loc[paused, "fate"] == "preference:paused"
    assert d.loc[no_offers, "fate"] == "preference:no_offers"
    assert d.loc[fewer, "fate"] == "deferred"
    assert d.loc[fewer, "reason"].startswith("capped:fewer_emails")
    assert d.loc[pause_over, "fate"] == "claimed"
    assert d.loc[french, "fate"] == "claimed"
    assert "the language the customer chose" in d.loc[french, "reason"]
    with connect(store_url).connect() as conn:
        context = ledger.contexts_of(conn, [d.loc[french, "message_id"]])
    assert json.loads(next(iter(context.values())))["locale"] == "fr"

    from tend.reports import why_lines

    story = "\n".join(why_lines(store_url, paused))
    assert "preference:paused" in story and "paused marketing until" in story


def test_a_deferred_winner_keeps_its_row_until_its_context_is_stored(
        shop_url: str, store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deferred candidate that wins on a night whose signals no longer produce it exists only
    in the deferred table. A stage stopped between the claim and the contexts (here twice: a
    retry can stop too) must leave that row to the retry, which builds the context from it and
    only then removes it; otherwise the claimed message ends failed and is never sent."""
    both = [program("first", priority=60), program("second", priority=50)]
    night(shop_url, store_url, MONDAY, registry(*both))
    mon = decisions(store_url, MONDAY)
    waiting = set(mon.loc[(mon["program"] == "second") & (mon["fate"] == "deferred"),
                          "customer_id"])
    assert waiting

    tuesday = MONDAY + dt.timedelta(days=1)
    ingest.run_ingest(shop_url, store_url, tuesday, "i")
    store_contexts = plan._store_contexts
    stops = iter((True, True))

    def stopping(*args: object, **kwargs: object) -> None:
        if next(stops, False):
            raise RuntimeError("the stage stopped between the claim and the contexts")
        store_contexts(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(plan, "_store_contexts", stopping)

    def run(run_id: str) -> plan.PlanResult:
        # No signal tonight: the deferred candidates are the only ones, and no cap stops them.
        return plan.plan_night(shop_url, store_url, tuesday, run_id, settings=SETTINGS,
                               renderer=messages.default_renderer(SETTINGS), secret="s",
                               registry=registry(*both, caps=[]),
                               detector=lambda *_: pd.DataFrame(columns=SIGNAL_COLUMNS))

    for run_id in ("p1", "p2"):
        with pytest.raises(RuntimeError, match="stopped"):
            run(run_id)
    again = run("p3")

    assert again.claimed() == 0  # the first run's claims stand, nothing claimed twice
    with connect(store_url).connect() as conn:
        rows = conn.execute(select(contact_ledger.c.message_id, contact_ledger.c.customer_id,
                                   contact_ledger.c.program, contact_ledger.c.status,
                                   contact_ledger.c.batch_id)
                            .where(contact_ledger.c.as_of == tuesday)).all()
        assert {r.customer_id for r in rows} == waiting
        assert {(r.program, r.status) for r in rows} == {("second", "claimed")}
        assert ledger.claims_without_contexts(conn, tuesday).empty
        sendable = [c.message_id for b in sorted({r.batch_id for r in rows})
                    for c in ledger.next_claimed(conn, tuesday, b, len(rows))]
        assert sorted(sendable) == sorted(r.message_id for r in rows)
        left = conn.execute(select(deferred.c.customer_id)
                            .where(deferred.c.program == "second")).scalars().all()
    assert not set(left) & waiting  # stored with its context, the row is gone
    contexts = _contexts(store_url, tuesday)
    assert {json.loads(c)["signal"]["name"] for c in contexts.values()} == {"lapsed"}
