"""A campaign through real Airflow (`airflow dags test tend_campaign -c ...`), with the nightly
run of the same day, in a temporary folder.

One module-scoped scenario:

1. a 300-customer demo shop; tend_ingest and tend_programs for 2026-11-20;
2. tend_campaign for that day as a dry run; then for real, with a proof address; then the
   same name again;
3. tend_ingest and tend_programs for the next night;
4. forms the campaign's first task refuses.
"""

from __future__ import annotations

import datetime as dt
import email
import json
import sqlite3
from collections import defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from _support import BIN, AirflowScenario, airflow_scenario

pytestmark = pytest.mark.slow

NIGHT = "2026-11-20"
NEXT_NIGHT = "2026-11-21"
NAME = "winter-news"
PROGRAM = f"campaign:{NAME}"
FORM = {
    "name": NAME, "audience": "all", "template": "newsletter",
    "subject_en": "{{ customer.first_name }}, our winter picks", "subject_fr": "Nos idées d'hiver",
    "headline_en": "Winter at the shop", "headline_fr": "L'hiver à la boutique",
    "text_en": "Warm evenings ahead.\n\nHere is what's new.", "text_fr": "Des soirées au chaud.",
    "offer": "percent", "offer_amount": 10, "holdout_pct": 10,
}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> AirflowScenario:
    s = airflow_scenario(tmp_path_factory.mktemp("campaign").resolve(), as_of=NIGHT)
    s.night(NIGHT)
    s.snaps["night"] = s.snapshot()
    s.dags_test("tend_campaign", NIGHT, FORM)
    s.snaps["dry"] = s.snapshot()
    s.dags_test("tend_campaign", NIGHT, FORM | {"dry_run": False,
                                                "proof_to": ["boss@shop.example"]})
    s.snaps["real"] = s.snapshot()
    s.dags_test("tend_campaign", NIGHT, FORM | {"dry_run": False})
    s.snaps["again"] = s.snapshot()
    s.night(NEXT_NIGHT)
    s.snaps["next"] = s.snapshot()
    return s


def campaign_row(s: AirflowScenario) -> dict[str, Any]:
    with sqlite3.connect(s.tmp / "store.db") as db:
        db.row_factory = sqlite3.Row
        row = dict(db.execute("SELECT * FROM campaigns WHERE name = ?", (NAME,)).fetchone())
    for key in ("params", "dry_run_report", "report"):
        row[key] = json.loads(row[key]) if row[key] else None
    return row


def test_dry_run_claims_and_sends_nothing_and_reports(scenario: AirflowScenario) -> None:
    night, dry = scenario.snaps["night"], scenario.snaps["dry"]
    assert dry.ledger == night.ledger and dry.outbox == night.outbox
    assert dry.decisions == night.decisions
    log = scenario.logs[f"tend_campaign {NIGHT} #1"]
    assert "DRY RUN (nothing claimed or sent)" in log
    report = campaign_row(scenario)["dry_run_report"]
    assert report["audience_size"] > 50 and report["claimed"] > 10
    for fate in ("held_out", "no_consent"):
        assert report["fates"].get(fate, 0) > 0, fate
    assert any(f.startswith(("lost_to:", "capped:")) for f in report["fates"]), (
        "the night's recipients are capped for the campaign")
    assert {s["locale"] for s in report["samples"]} == {"en", "fr"}
    for sample in report["samples"]:
        assert Path(sample["eml"]).is_file()
        assert sample["png"] is None or Path(sample["png"]).stat().st_size > 0
    assert report["estimated_seconds"] > 0


def test_real_run_sends_to_the_audience_through_the_outbox(scenario: AirflowScenario) -> None:
    dry = campaign_row(scenario)["dry_run_report"]
    before, real = scenario.snaps["dry"], scenario.snaps["real"]
    new = {m: r for m, r in real.ledger.items() if m not in before.ledger}
    assert new and {r["program"] for r in new.values()} == {PROGRAM}
    assert {r["status"] for r in new.values()} == {"sent"}
    assert len(new) == dry["claimed"], "the dry run foretold the real run"
    sent_files = {f.removesuffix(".eml") for f in set(real.outbox) - set(before.outbox)}
    proofs = {f for f in sent_files if f.startswith("proof-")}
    assert sent_files - proofs == set(new)
    assert len(proofs) == 2, "one [PROOF] per language"
    for name in proofs:
        msg = email.message_from_bytes((scenario.tmp / "outbox" / f"{name}.eml").read_bytes())
        assert msg["To"] == "boss@shop.example" and msg["Subject"].startswith("[PROOF] ")
    some = next(iter(new))
    msg = email.message_from_bytes((scenario.tmp / "outbox" / f"{some}.eml").read_bytes())
    assert "List-Unsubscribe" in msg
    row = campaign_row(scenario)
    assert row["status"] == "sent" and row["report"]["ledger"] == {"sent": len(new)}
    log = scenario.logs[f"tend_campaign {NIGHT} #2"]
    assert "starting task_id=send map_index=0" in log or "task_id=send, map_index=0" in log


def test_the_same_name_again_sends_nothing_new(scenario: AirflowScenario) -> None:
    real, again = scenario.snaps["real"], scenario.snaps["again"]
    assert again.ledger == real.ledger and again.outbox == real.outbox


def test_caps_hold_over_the_campaign_and_the_nights(scenario: AirflowScenario) -> None:
    snap = scenario.snaps["next"]
    by_customer: dict[str, list[dt.date]] = defaultdict(list)
    for r in snap.ledger.values():
        if r["kind"] == "marketing" and r["status"] != "failed":
            by_customer[r["customer_id"]].append(dt.date.fromisoformat(r["as_of"]))
    too_close = {c: sorted(ds) for c, ds in by_customer.items()
                 if any((b - a).days < 3 for a, b in pairwise(sorted(ds)))}
    assert too_close == {}
    campaign_customers = {r["customer_id"] for r in snap.ledger.values()
                          if r["program"] == PROGRAM}
    nightly = {r["customer_id"] for r in snap.ledger.values()
               if r["program"] != PROGRAM and r["as_of"] == NIGHT and r["kind"] == "marketing"}
    assert campaign_customers and not campaign_customers & nightly


def test_a_bad_form_is_refused_by_the_first_task(scenario: AirflowScenario) -> None:
    """What the schema cannot say (here: a send time in the quiet hours) fails ``check`` with
    the fix, before anything is read or claimed (the other refusals: tests/unit/campaigns)."""
    before = scenario.snapshot()
    out = scenario.dags_test("tend_campaign", NIGHT, FORM | {"name": "refused",
                                                             "send_at": "22:00"},
                             succeed=False)
    assert "campaign form, field 'send_at': 22:00 is in the customers' quiet hours" in out
    assert "starting task_id=plan" not in out
    after = scenario.snapshot()
    assert after.ledger == before.ledger and after.outbox == before.outbox


def test_a_form_the_schema_refuses_never_starts(scenario: AirflowScenario) -> None:
    out = scenario.run(str(BIN / "airflow"), "dags", "test", "tend_campaign", NIGHT, "-c",
                       json.dumps(FORM | {"name": "Not A Name!"}), label="schema", check=False)
    assert "DagRun Finished" not in out
    assert "name" in out and "does not match" in out
