"""The ledger protocol and the claim-within-caps transaction, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading

import pandas as pd
import pytest
from _support import exited_pid
from sqlalchemy import func, select

from tend.errors import LedgerError
from tend.programs.registry import Cap
from tend.store import ledger
from tend.store.db import connect
from tend.store.tables import contact_ledger, decision_log

NIGHT = dt.date(2026, 11, 20)
CAPS = (Cap(1, 3), Cap(2, 7), Cap(4, 30))


def winners(*rows: tuple[str, str, str], kind: str = "marketing", cooldown: int = 90,
            priority: int = 50) -> pd.DataFrame:
    return pd.DataFrame(
        [{"customer_id": c, "program": p, "occurrence": o, "kind": kind, "priority": priority,
          "score": 0.5, "cooldown_days": cooldown, "context": "{}"} for c, p, o in rows]
    )


def claim(url: str, w: pd.DataFrame, night: dt.date = NIGHT, batch_size: int = 100
          ) -> pd.DataFrame:
    with connect(url).begin() as conn:
        return ledger.claim(conn, w, as_of=night, run_id=f"run-{night}", caps=CAPS,
                            batch_size=batch_size).frame.set_index("customer_id")


def statuses(url: str) -> dict[str, str]:
    with connect(url).connect() as conn:
        rows = conn.execute(select(contact_ledger.c.message_id, contact_ledger.c.status)).all()
    return {m: s for m, s in rows}


def test_message_id_is_deterministic_per_key() -> None:
    a = ledger.message_id_for("C1", "winback", "lapsed:2026-01-01")
    assert a == ledger.message_id_for("C1", "winback", "lapsed:2026-01-01")
    assert a != ledger.message_id_for("C1", "winback", "lapsed:2026-02-01")
    assert len(a) == 32


def test_claim_then_rerun_claims_nothing_new(store_url: str) -> None:
    w = winners(("C1", "winback", "e1"), ("C2", "winback", "e1"))
    first = claim(store_url, w)
    assert list(first["fate"]) == ["claimed", "claimed"]
    again = claim(store_url, w)
    assert list(again["fate"]) == ["already_claimed", "already_claimed"]
    assert len(statuses(store_url)) == 2


@pytest.mark.parametrize(
    ("previous_night_offset", "expected"),
    [
        (-1, "capped:3d"),   # yesterday: inside 3 days
        (-2, "capped:3d"),
        (-3, "claimed"),     # 3 days ago: outside "any 3 days"
        (+2, "capped:3d"),   # a later night already sent (replay of the past)
    ],
)
def test_one_marketing_message_in_any_three_days(
    store_url: str, previous_night_offset: int, expected: str
) -> None:
    claim(store_url, winners(("C1", "newsletter", "n1")),
          night=NIGHT + dt.timedelta(days=previous_night_offset))
    out = claim(store_url, winners(("C1", "winback", "e1")))
    assert out.loc["C1", "fate"] == expected


def test_rolling_caps_over_seven_and_thirty_days(store_url: str) -> None:
    for i, offset in enumerate((-6, -3)):
        claim(store_url, winners(("C1", f"p{i}", "x")), night=NIGHT + dt.timedelta(days=offset))
    assert claim(store_url, winners(("C1", "winback", "e1"))).loc["C1", "fate"] == "capped:7d"


def test_cooldown_per_program(store_url: str) -> None:
    claim(store_url, winners(("C1", "winback", "episode-1")), night=NIGHT - dt.timedelta(days=40))
    out = claim(store_url, winners(("C1", "winback", "episode-2")))
    assert out.loc["C1", "fate"] == "cooldown:winback"
    later = claim(store_url, winners(("C1", "winback", "episode-2")),
                  night=NIGHT + dt.timedelta(days=60))
    assert later.loc["C1", "fate"] == "claimed"


def test_transactional_messages_are_not_capped(store_url: str) -> None:
    claim(store_url, winners(("C1", "winback", "e1")))
    out = claim(store_url, winners(("C1", "receipt", "o-9"), kind="transactional", cooldown=0))
    assert out.loc["C1", "fate"] == "claimed"


def test_failed_messages_do_not_count_against_caps(store_url: str) -> None:
    first = claim(store_url, winners(("C1", "newsletter", "n1")), night=NIGHT - dt.timedelta(1))
    mid = first.loc["C1", "message_id"]
    with connect(store_url).begin() as conn:
        ledger.mark_sending(conn, [mid])
        ledger.record_results(conn, [{"message_id": mid, "status": "failed", "error": "400"}])
    assert claim(store_url, winners(("C1", "winback", "e1"))).loc["C1", "fate"] == "claimed"


def test_arbitration_picks_one_message_per_customer_by_priority(store_url: str) -> None:
    cands = pd.concat([
        winners(("C1", "winback", "e"), priority=50),
        winners(("C1", "checkup", "boiler"), kind="service", priority=80),
        winners(("C2", "winback", "e"), priority=50),
    ])
    out = claim(store_url, cands).reset_index().set_index(["customer_id", "program"])
    assert out.loc[("C1", "checkup"), "fate"] == "claimed"
    assert out.loc[("C1", "winback"), "fate"] == "lost_to:checkup"
    assert out.loc[("C2", "winback"), "fate"] == "claimed"
    assert len(statuses(store_url)) == 2


def test_a_capped_best_message_lets_an_uncapped_one_through(store_url: str) -> None:
    claim(store_url, winners(("C1", "newsletter", "n1")), night=NIGHT - dt.timedelta(days=1))
    cands = pd.concat([
        winners(("C1", "winback", "e"), priority=90),
        winners(("C1", "checkup", "boiler"), kind="service", priority=10),
    ])
    out = claim(store_url, cands).reset_index().set_index("program")
    assert out.loc["winback", "fate"] == "capped:3d"
    assert out.loc["checkup", "fate"] == "claimed"


def test_batches_are_numbered_per_night(store_url: str) -> None:
    out = claim(store_url, winners(*[(f"C{i}", "winback", "e") for i in range(5)]), batch_size=2)
    assert sorted(out["batch_id"].astype(int)) == [0, 0, 1, 1, 2]
    more = claim(store_url, winners(("C9", "winback", "e")), batch_size=2)
    assert int(more.loc["C9", "batch_id"]) == 3
    with connect(store_url).connect() as conn:
        assert ledger.batches_to_send(conn, NIGHT) == [0, 1, 2, 3]


def test_protocol_walk_and_crash_recovery(store_url: str) -> None:
    out = claim(store_url, winners(("C1", "winback", "e"), ("C2", "winback", "e"),
                                   ("C3", "winback", "e")))
    m1, m2, m3 = (out.loc[c, "message_id"] for c in ("C1", "C2", "C3"))
    engine = connect(store_url)
    with engine.begin() as conn:
        ledger.mark_sending(conn, [m1, m2])
        ledger.record_results(conn, [{"message_id": m1, "status": "sent", "provider_id": "x1"}])
    # The worker died with m2 'sending': the next attempt must not resend it.
    with engine.begin() as conn:
        assert ledger.recover_interrupted(conn, NIGHT, 0) == 1
    with engine.connect() as conn:
        left = [r.message_id for r in ledger.next_claimed(conn, NIGHT, 0, 10)]
    assert left == [m3]
    assert statuses(store_url) == {m1: "sent", m2: "unknown", m3: "claimed"}


def test_mark_sending_refuses_rows_that_are_not_claimed(store_url: str) -> None:
    out = claim(store_url, winners(("C1", "winback", "e")))
    mid = out.loc["C1", "message_id"]
    with connect(store_url).begin() as conn:
        ledger.mark_sending(conn, [mid])
    with pytest.raises(LedgerError, match="another worker"), connect(store_url).begin() as conn:
        ledger.mark_sending(conn, [mid])


def test_release_returns_unsent_rows_to_claimed(store_url: str) -> None:
    mid = claim(store_url, winners(("C1", "winback", "e"))).loc["C1", "message_id"]
    with connect(store_url).begin() as conn:
        ledger.mark_sending(conn, [mid])
        ledger.release(conn, [mid])
    assert statuses(store_url) == {mid: "claimed"}


def test_record_decisions_keeps_the_first_story_of_a_night(store_url: str) -> None:
    d1 = pd.DataFrame([{"customer_id": "C1", "program": "winback", "fate": "claimed",
                        "why": "first", "message_id": "m"}])
    d2 = d1.assign(fate="already_claimed", why="second")
    for d in (d1, d2):
        with connect(store_url).begin() as conn:
            ledger.record_decisions(conn, d, as_of=NIGHT, run_id="r")
    with connect(store_url).connect() as conn:
        rows = conn.execute(select(decision_log.c.fate, decision_log.c.reason)).all()
    assert [tuple(r) for r in rows] == [("claimed", "first")]


@pytest.mark.postgres
def test_concurrent_claims_cannot_both_pass_a_cap(pg_schema_url: str) -> None:
    """Two runs (say the nightly programs and a campaign) claim the same customers at once."""
    from tend.store import migrate

    migrate(pg_schema_url)
    customers = [f"C{i:04d}" for i in range(300)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def worker(program: str) -> None:
        try:
            barrier.wait()
            claim(pg_schema_url, winners(*[(c, program, "x") for c in customers]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"program{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with connect(pg_schema_url).connect() as conn:
        per_customer = conn.execute(
            select(contact_ledger.c.customer_id, func.count())
            .group_by(contact_ledger.c.customer_id)).all()
    assert len(per_customer) == len(customers)
    assert max(n for _, n in per_customer) == 1


def test_one_message_per_customer_per_night_across_runs(store_url: str) -> None:
    claim(store_url, winners(("C1", "winback", "e")))
    # a later run the same night (a rerun, a campaign) offers a service message: not tonight
    out = claim(store_url, winners(("C1", "checkup", "boiler"), kind="service", cooldown=0))
    assert out.loc["C1", "fate"] == "lost_to:winback"
    assert "one message per night" in out.loc["C1", "why"]


def test_transactional_messages_do_not_compete(store_url: str) -> None:
    cands = pd.concat([
        winners(("C1", "thank_you", "o-1"), kind="transactional", cooldown=0, priority=100),
        winners(("C1", "winback", "e"), priority=50),
    ])
    out = claim(store_url, cands).reset_index().set_index("program")
    assert out.loc["thank_you", "fate"] == "claimed"
    assert out.loc["winback", "fate"] == "claimed"


def test_a_message_claimed_before_the_rules_window_is_caught_by_the_key(store_url: str) -> None:
    """The rules read only a window of the ledger; an older claim of the same message is
    caught when the winners are inserted, and the customer's next-best candidate wins."""
    claim(store_url, winners(("C1", "winback", "e"), cooldown=0),
          night=NIGHT - dt.timedelta(days=200))
    cands = pd.concat([
        winners(("C1", "winback", "e"), priority=90, cooldown=30),
        winners(("C1", "checkup", "boiler"), kind="service", priority=10, cooldown=30),
        winners(("C2", "winback", "e"), priority=90, cooldown=30),
    ])
    out = claim(store_url, cands).reset_index().set_index(["customer_id", "program"])
    assert out.loc[("C1", "winback"), "fate"] == "already_claimed"
    assert out.loc[("C1", "checkup"), "fate"] == "claimed"
    assert out.loc[("C2", "winback"), "fate"] == "claimed"
    assert len(statuses(store_url)) == 3


def test_claim_reports_its_phases(store_url: str) -> None:
    with connect(store_url).begin() as conn:
        outcome = ledger.claim(conn, winners(("C1", "winback", "e")), as_of=NIGHT,
                               run_id="r", caps=CAPS, batch_size=10)
    assert {"stage", "rules", "arbitrate", "contexts", "insert"} <= set(outcome.timings)


def test_exposures_are_sent_messages_and_held_out_decisions(store_url: str) -> None:
    out = claim(store_url, winners(("C1", "winback", "o1"), ("C2", "cross_sell", "o2"),
                                   ("C3", "winback", "o3")))
    sent = out.loc["C1", "message_id"]
    with connect(store_url).begin() as conn:
        conn.execute(contact_ledger.update().where(contact_ledger.c.message_id == sent)
                     .values(status="sent"))  # C2 and C3 stay claimed: not contacts (yet)
        ledger.record_decisions(conn, pd.DataFrame([
            {"customer_id": "C4", "program": "winback", "fate": "held_out", "why": "control",
             "message_id": None},
            {"customer_id": "C5", "program": "winback", "fate": "no_consent", "why": "none",
             "message_id": None}]), as_of=NIGHT, run_id="r")
    with connect(store_url).connect() as conn:
        rows = ledger.exposures(conn, NIGHT, NIGHT)
        before = ledger.exposures(conn, NIGHT - dt.timedelta(days=5), NIGHT - dt.timedelta(days=1))
    assert rows.sort_values("customer_id").to_dict("records") == [
        {"customer_id": "C1", "program": "winback", "night": NIGHT, "message_id": sent,
         "group": "contacted"},
        {"customer_id": "C4", "program": "winback", "night": NIGHT, "message_id": None,
         "group": "held_out"},
    ]
    assert before.empty


# -- send leases, fencing, resolving 'unknown' ------------------------------------------------

def lease(url: str, holder: str | None = None, ttl: float = 60) -> ledger.Lease:
    with connect(url).begin() as conn:
        return ledger.acquire_lease(conn, NIGHT, 0, ttl=ttl, holder=holder)


def dead_holder() -> str:
    """host:pid of a process of this host that has exited."""
    import socket

    return f"{socket.gethostname()}:{exited_pid()}"


def test_a_live_lease_refuses_a_second_worker_and_a_released_one_does_not(store_url: str) -> None:
    first = lease(store_url)
    with pytest.raises(ledger.LeaseHeld, match="is being sent by"):
        lease(store_url, holder="elsewhere:1")
    with connect(store_url).begin() as conn:
        ledger.release_lease(conn, first)
    assert lease(store_url, holder="elsewhere:1").token == first.token + 1


@pytest.mark.parametrize("how", ["expired", "holder gone"])
def test_a_lease_is_taken_over_when_expired_or_its_process_is_gone(store_url: str,
                                                                   how: str) -> None:
    if how == "expired":
        first = lease(store_url, holder="other-host:1", ttl=0.01)
        import time

        time.sleep(0.05)
    else:
        first = lease(store_url, holder=dead_holder())
    assert lease(store_url).token == first.token + 1


def test_a_stale_worker_can_neither_mark_nor_overwrite_the_new_holders_rows(
        store_url: str) -> None:
    out = claim(store_url, winners(("C1", "winback", "e"), ("C2", "winback", "e"),
                                   ("C3", "winback", "e")))
    m1, m2, m3 = (out.loc[c, "message_id"] for c in ("C1", "C2", "C3"))
    engine = connect(store_url)
    stale = lease(store_url, holder="other-host:1", ttl=0.01)
    with engine.begin() as conn:
        ledger.mark_sending(conn, [m1], stale)
    import time

    time.sleep(0.05)
    fresh = lease(store_url)
    with engine.begin() as conn:  # the new holder finds m1 in flight under the old token
        assert ledger.recover_interrupted(conn, NIGHT, 0, fresh) == 1
        ledger.mark_sending(conn, [m2], fresh)
    with pytest.raises(ledger.LeaseLost, match="taken over"), engine.begin() as conn:
        ledger.mark_sending(conn, [m3], stale)
    with engine.begin() as conn:  # the stale worker's late answers: only its own row moves
        written = ledger.record_results(conn, [
            {"message_id": m1, "status": "sent", "provider_id": "late"},
            {"message_id": m2, "status": "failed", "error": "stale"}], stale)
        ledger.release(conn, [m2], stale)
        assert ledger.recover_interrupted(conn, NIGHT, 0, fresh) == 0  # its own rows stay
    assert written == 1
    assert statuses(store_url) == {m1: "sent", m2: "sending", m3: "claimed"}


def test_unknown_settled_by_the_backend_and_by_provider_events(store_url: str) -> None:
    from tend.store.tables import message_events

    out = claim(store_url, winners(*((f"C{i}", "winback", "e") for i in range(4))))
    m = [out.loc[f"C{i}", "message_id"] for i in range(4)]
    engine = connect(store_url)
    with engine.begin() as conn:
        ledger.mark_sending(conn, m)
        ledger.recover_interrupted(conn, NIGHT, 0)
        now = ledger.now()
        conn.execute(message_events.insert(), [{
            "event_id": "ev1", "message_id": m[3], "customer_id": "C3", "event": "delivered",
            "occurred_at": now, "received_at": now}])
        assert ledger.settle_from_events(conn, NIGHT, 0) == 1
        assert ledger.settle_unknown(conn, sent={m[0]: "outbox:x"}, not_sent=[m[1]],
                                     how="test") == (1, 1)
        assert ledger.unknown_counts(conn, NIGHT) == [(NIGHT, 0, 1)]
    assert statuses(store_url) == {m[0]: "sent", m[1]: "claimed", m[2]: "unknown",
                                   m[3]: "sent"}


@pytest.mark.parametrize(("action", "status", "cooldown_held"), [
    ("mark-sent", "sent", True),
    ("release", "claimed", True),   # it will be sent again: it still counts
    ("not-sent", "failed", False),
])
def test_reconcile_and_the_cooldown_an_unknown_message_holds(
        store_url: str, action: str, status: str, cooldown_held: bool) -> None:
    earlier = NIGHT - dt.timedelta(days=10)
    mid = claim(store_url, winners(("C1", "winback", "episode-1")), night=earlier
                ).loc["C1", "message_id"]
    with connect(store_url).begin() as conn:
        ledger.mark_sending(conn, [mid])
        ledger.recover_interrupted(conn, earlier, 0)
    # While unknown, it may have gone out: it holds the 90-day cooldown.
    probe = winners(("C1", "winback", "episode-2"))
    with connect(store_url).connect() as conn, conn.begin():
        held = ledger.claim(conn, probe, as_of=NIGHT, run_id="probe", caps=CAPS,
                            batch_size=10).frame.set_index("customer_id")
        conn.rollback()
    assert held.loc["C1", "fate"] == "cooldown:winback"
    with connect(store_url).begin() as conn:
        assert ledger.reconcile(conn, earlier, None, action) == 1
    assert statuses(store_url) == {mid: status}
    fate = claim(store_url, probe).loc["C1", "fate"]
    assert (fate == "cooldown:winback") is cooldown_held
