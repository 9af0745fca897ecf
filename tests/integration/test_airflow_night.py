"""Whole nights through real Airflow (`airflow dags test`), as `make run` does, in a tmp dir.

One module-scoped scenario (Airflow's DB is migrated once, ~80 s in all):

1. a 300-customer demo shop as of 2026-11-20;
2. tend_ingest then tend_programs for 2026-11-20;
3. both again for 2026-11-20 (a replay of the same night);
4. both for 2026-11-21 (the next night).

The tests then read the snapshots taken after each step. The databases are found only through
the Airflow connections ``tend_shop``/``tend_store``: TEND_SHOP_URL/TEND_STORE_URL point into a
directory that does not exist, so a task that fell back to them would fail the run.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
from collections import defaultdict
from itertools import pairwise
from typing import Any

import pytest
from _support import AirflowScenario, Snapshot, airflow_scenario

from tend.programs.registry import load_registry

pytestmark = pytest.mark.slow

NIGHT = "2026-11-20"
NEXT_NIGHT = "2026-11-21"
CAP_DAYS = 3  # programs.yaml: at most 1 marketing message per customer in any 3 days


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> AirflowScenario:
    s = airflow_scenario(tmp_path_factory.mktemp("night").resolve(), as_of=NIGHT)
    s.night(NIGHT)
    s.snaps["first"] = s.snapshot()
    s.night(NIGHT)
    s.snaps["replay"] = s.snapshot()
    s.night(NEXT_NIGHT)
    s.snaps["next"] = s.snapshot()
    return s


def sent_on(snap: Snapshot, date: str) -> dict[str, dict[str, Any]]:
    return {m: r for m, r in snap.ledger.items() if r["status"] == "sent" and r["as_of"] == date}


# -- the first night --------------------------------------------------------------------------

def test_first_night_sends_one_eml_per_sent_ledger_row(scenario: AirflowScenario) -> None:
    snap = scenario.snaps["first"]
    sent = sent_on(snap, NIGHT)
    assert len(sent) > 10, "the demo shop should produce a real night of win-backs"
    assert len(snap.outbox) == len(sent)
    assert {name.removesuffix(".eml") for name in snap.outbox} == set(sent)
    stuck = {m: r["status"] for m, r in snap.ledger.items()
             if r["status"] in ("claimed", "sending", "unknown")}
    assert stuck == {}, "nothing may be left claimed/sending/unknown after a clean night"
    assert not (scenario.tmp / "no-such-dir").exists(), "fell back to TEND_*_URL"


def test_first_night_logs(scenario: AirflowScenario) -> None:
    ingest = scenario.logs[f"tend_ingest {NIGHT} #1"]
    assert re.search(rf"ingest {NIGHT} \(full\): [\d,]+ orders read", ingest)
    programs = scenario.logs[f"tend_programs {NIGHT} #1"]
    assert re.search(r"starting task_id=send map_index=0\b", programs), "send is a mapped task"
    assert f"Tend night {NIGHT}" in programs, "the summary task logs the night's totals"
    summary_sent = re.search(rf"Tend night {NIGHT}.*?\bsent\s+([\d,]+)", programs, re.S)
    assert summary_sent, programs[-3000:]
    assert int(summary_sent.group(1).replace(",", "")) == len(sent_on(scenario.snaps["first"],
                                                                      NIGHT))


# -- replaying the same night sends nothing new ---------------------------------------------

def test_replay_same_night_is_a_no_op(scenario: AirflowScenario) -> None:
    first, replay = scenario.snaps["first"], scenario.snaps["replay"]
    assert replay.outbox == first.outbox, "no new .eml and no message rewritten"
    assert replay.ledger.keys() == first.ledger.keys(), "ledger row count/ids changed"
    changed = {m: (first.ledger[m]["status"], replay.ledger[m]["status"])
               for m in first.ledger if first.ledger[m] != replay.ledger[m]}
    assert changed == {}, f"rows changed on replay: {changed}"
    programs = scenario.logs[f"tend_programs {NIGHT} #2"]
    assert f"Tend night {NIGHT}" in programs
    assert not re.search(r"starting task_id=send map_index=\d", programs), (
        "a replay should find no batch left to send")


def test_replay_keeps_the_first_story_of_the_night(scenario: AirflowScenario) -> None:
    """The decision log keeps the first run's fates on a replay (ledger.record_decisions)."""
    assert scenario.snaps["replay"].decisions == scenario.snaps["first"].decisions
    assert any(d["fate"] == "claimed" for d in scenario.snaps["first"].decisions)


# -- the next night respects the contact cap ------------------------------------------------

def test_next_night_no_second_message_within_cap(scenario: AirflowScenario) -> None:
    snap = scenario.snaps["next"]
    first_recipients = {r["customer_id"] for r in sent_on(scenario.snaps["first"], NIGHT).values()
                        if r["kind"] == "marketing"}
    # Service messages (a check-up, a survey) are not capped; marketing ones are.
    again = [r for r in snap.ledger.values()
             if r["as_of"] == NEXT_NIGHT and r["customer_id"] in first_recipients
             and r["kind"] == "marketing"]
    assert again == []

    # Non-vacuous: yesterday's recipients were candidates again tonight and were turned down.
    reconsidered = [d for d in snap.decisions
                    if d["as_of"] == NEXT_NIGHT and d["customer_id"] in first_recipients]
    assert reconsidered, "the next night should have seen yesterday's recipients again"
    marketing = {p.name for p in load_registry().programs if p.kind == "marketing"}
    assert all(d["fate"] != "claimed" for d in reconsidered if d["program"] in marketing)

    # The cap over the whole ledger: no customer has two messages within CAP_DAYS.
    by_customer: dict[str, list[dt.date]] = defaultdict(list)
    for r in snap.ledger.values():
        if r["kind"] == "marketing" and r["status"] != "failed":
            by_customer[r["customer_id"]].append(dt.date.fromisoformat(r["as_of"]))
    too_close = {c: sorted(ds) for c, ds in by_customer.items()
                 if any((b - a).days < CAP_DAYS for a, b in pairwise(sorted(ds)))}
    assert too_close == {}


def test_next_night_outbox_matches_ledger(scenario: AirflowScenario) -> None:
    snap = scenario.snaps["next"]
    sent = {m for m, r in snap.ledger.items() if r["status"] == "sent"}
    assert {name.removesuffix(".eml") for name in snap.outbox} == sent
    first = scenario.snaps["first"].outbox
    assert {k: snap.outbox[k] for k in first} == first, "a previous night's message was rewritten"
    assert f"Tend night {NEXT_NIGHT}" in scenario.logs[f"tend_programs {NEXT_NIGHT} #1"]
    assert re.search(rf"ingest {NEXT_NIGHT} \(incremental\)",
                     scenario.logs[f"tend_ingest {NEXT_NIGHT} #1"])


# -- the kpi task ---------------------------------------------------------------------------

def test_kpi_task_stores_the_months_results(scenario: AirflowScenario) -> None:
    """After the next night, the kpi table holds November's figures computed that night, one
    row per program exposed plus every program together, with the win-back's holdout."""
    with sqlite3.connect(scenario.tmp / "store.db") as db:
        db.row_factory = sqlite3.Row
        rows = {r["program"]: dict(r) for r in db.execute("SELECT * FROM kpi")}
    assert {r["month"] for r in rows.values()} == {"2026-11"}
    assert {r["as_of"] for r in rows.values()} == {NEXT_NIGHT}
    sent = sent_on(scenario.snaps["next"], NIGHT) | sent_on(scenario.snaps["next"], NEXT_NIGHT)
    assert rows["(all)"]["messages"] == len(sent)
    assert rows["winback"]["held_out"] > 0
    assert "starting task_id=kpi" in scenario.logs[f"tend_programs {NEXT_NIGHT} #1"]


# -- a night that cannot be planned ---------------------------------------------------------

def test_a_night_that_cannot_be_planned_turns_red_at_once(scenario: AirflowScenario) -> None:
    """A night no ingest brought the features to: plan fails with Tend's one line, and the
    tasks after it (trigger rule all_done) end at once instead of failing on plan's missing
    night and waiting out their retries: summary says why, kpi skips, check turns the run red.
    """
    before = scenario.snapshot()
    night = "2026-11-24"
    out = scenario.dags_test("tend_programs", night, {"as_of": night}, succeed=False)
    assert "plan did not finish, so nothing was planned or sent by this run" in out
    for task in ("summary", "kpi", "check"):
        assert len(re.findall(rf"starting task_id={task}\b", out)) <= 1, f"{task} was retried"
    assert "up_for_retry" not in out.lower().replace(" ", "_")
    after = scenario.snapshot()
    assert after.ledger == before.ledger and after.outbox == before.outbox
