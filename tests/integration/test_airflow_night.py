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
import os
import re
import sqlite3
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from _support import PROJECT

from tend.programs.registry import load_registry

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
NIGHT = "2026-11-20"
NEXT_NIGHT = "2026-11-21"
CAP_DAYS = 3  # programs.yaml: at most 1 marketing message per customer in any 3 days
TIMEOUT = 240  # a task stuck in up_for_retry would otherwise wait out its retry_delay


@dataclass
class Snapshot:
    ledger: dict[str, dict[str, Any]]  # message_id -> row
    outbox: dict[str, int]  # file name -> mtime_ns
    decisions: list[dict[str, Any]]


@dataclass
class Scenario:
    tmp: Path
    env: dict[str, str]
    logs: dict[str, str] = field(default_factory=dict)  # "dag_id date #n" -> output
    snaps: dict[str, Snapshot] = field(default_factory=dict)

    def run(self, *args: str, label: str) -> str:
        proc = subprocess.run(
            [*args], env=self.env, cwd=self.tmp, capture_output=True, text=True, timeout=TIMEOUT,
        )
        out = proc.stdout + proc.stderr
        (self.tmp / "logs").mkdir(exist_ok=True)
        (self.tmp / "logs" / f"{label.replace(' ', '_')}.log").write_text(out)
        assert proc.returncode == 0, f"{label} failed (rc={proc.returncode}):\n{out[-6000:]}"
        return out

    def dags_test(self, dag_id: str, date: str) -> str:
        n = sum(1 for k in self.logs if k.startswith(f"{dag_id} {date}")) + 1
        label = f"{dag_id} {date} #{n}"
        out = self.run(str(BIN / "airflow"), "dags", "test", dag_id, date, label=label)
        assert "state=success" in out, f"{label}: no state=success\n{out[-6000:]}"
        assert re.search(rf"DagRun Finished: dag_id={dag_id},.*state=success", out), (
            f"{label}: the DAG run did not finish in success\n{out[-6000:]}")
        self.logs[label] = out
        return out

    def night(self, date: str) -> None:
        self.dags_test("tend_ingest", date)
        self.dags_test("tend_programs", date)

    def snapshot(self) -> Snapshot:
        with sqlite3.connect(self.tmp / "store.db") as db:
            db.row_factory = sqlite3.Row
            ledger = {r["message_id"]: dict(r) for r in db.execute(
                "SELECT message_id, customer_id, program, kind, status, as_of, batch_id, "
                "provider_id, finished_at, error FROM contact_ledger")}
            decisions = [dict(r) for r in db.execute(
                "SELECT as_of, customer_id, program, fate, message_id FROM decision_log")]
        outbox = {p.name: p.stat().st_mtime_ns for p in (self.tmp / "outbox").glob("*.eml")}
        return Snapshot(ledger, outbox, decisions)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    tmp = tmp_path_factory.mktemp("night").resolve()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "TEND_", "_AIRFLOW"))}
    decoy = tmp / "no-such-dir"
    env.update({
        "AIRFLOW_HOME": str(tmp / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # sqlite:/// + an absolute path = four slashes.
        "AIRFLOW_CONN_TEND_SHOP": f"sqlite:///{tmp / 'shop.db'}",
        "AIRFLOW_CONN_TEND_STORE": f"sqlite:///{tmp / 'store.db'}",
        "TEND_SHOP_URL": f"sqlite:///{decoy / 'shop.db'}",
        "TEND_STORE_URL": f"sqlite:///{decoy / 'store.db'}",
        "TEND_OUTBOX_DIR": str(tmp / "outbox"),
        "TEND_VAR_DIR": str(tmp),
    })
    assert env["AIRFLOW_CONN_TEND_SHOP"].startswith("sqlite:////")
    s = Scenario(tmp, env)
    s.run(str(BIN / "tend"), "demo-data", "--db", env["AIRFLOW_CONN_TEND_SHOP"],
          "--customers", "300", "--seed", "3", "--as-of", NIGHT, label="demo-data")
    s.run(str(BIN / "airflow"), "db", "migrate", label="airflow db migrate")

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

def test_first_night_sends_one_eml_per_sent_ledger_row(scenario: Scenario) -> None:
    snap = scenario.snaps["first"]
    sent = sent_on(snap, NIGHT)
    assert len(sent) > 10, "the demo shop should produce a real night of win-backs"
    assert len(snap.outbox) == len(sent)
    assert {name.removesuffix(".eml") for name in snap.outbox} == set(sent)
    stuck = {m: r["status"] for m, r in snap.ledger.items()
             if r["status"] in ("claimed", "sending", "unknown")}
    assert stuck == {}, "nothing may be left claimed/sending/unknown after a clean night"
    assert not (scenario.tmp / "no-such-dir").exists(), "fell back to TEND_*_URL"


def test_first_night_logs(scenario: Scenario) -> None:
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

def test_replay_same_night_is_a_no_op(scenario: Scenario) -> None:
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


def test_replay_keeps_the_first_story_of_the_night(scenario: Scenario) -> None:
    """The decision log keeps the first run's fates on a replay (ledger.record_decisions)."""
    assert scenario.snaps["replay"].decisions == scenario.snaps["first"].decisions
    assert any(d["fate"] == "claimed" for d in scenario.snaps["first"].decisions)


# -- the next night respects the contact cap ------------------------------------------------

def test_next_night_no_second_message_within_cap(scenario: Scenario) -> None:
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


def test_next_night_outbox_matches_ledger(scenario: Scenario) -> None:
    snap = scenario.snaps["next"]
    sent = {m for m, r in snap.ledger.items() if r["status"] == "sent"}
    assert {name.removesuffix(".eml") for name in snap.outbox} == sent
    first = scenario.snaps["first"].outbox
    assert {k: snap.outbox[k] for k in first} == first, "a previous night's message was rewritten"
    assert f"Tend night {NEXT_NIGHT}" in scenario.logs[f"tend_programs {NEXT_NIGHT} #1"]
    assert re.search(rf"ingest {NEXT_NIGHT} \(incremental\)",
                     scenario.logs[f"tend_ingest {NEXT_NIGHT} #1"])


# -- the kpi task ---------------------------------------------------------------------------

def test_kpi_task_stores_the_months_results(scenario: Scenario) -> None:
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
