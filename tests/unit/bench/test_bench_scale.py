"""The scaling benchmark's own arithmetic (bench/bench_scale.py): the check that every claimed
message was sent once, and the night's stages from Airflow's records. The benchmark itself
runs a whole Airflow cluster for minutes and is not part of the suite."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any

import pytest
from _support import PROJECT


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_scale",
                                                  PROJECT / "bench" / "bench_scale.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_night_sent_once_passes_the_check(bench: ModuleType) -> None:
    check = bench.delivery_check({"a": "sent", "b": "sent"}, {"a": 1, "b": 1})
    assert check.ok and check.problems() == []
    assert (check.claimed, check.sent, check.duplicates) == (2, 2, 0)


def test_the_check_names_every_way_a_night_can_go_wrong(bench: ModuleType) -> None:
    ledger = {"twice": "sent", "thrice": "sent", "lost": "sent", "waiting": "claimed",
              "unknown": "unknown", "fine": "sent"}
    accepted = {"twice": 2, "thrice": 3, "unknown": 1, "fine": 1, "stranger": 1}
    check = bench.delivery_check(ledger, accepted)
    assert not check.ok
    assert check.sent_twice == {"twice": 2, "thrice": 3}
    assert check.duplicates == 3  # copies beyond the first
    assert check.not_sent == {"waiting": "claimed", "unknown": "unknown"}
    assert check.sent_not_accepted == ["lost"]
    assert check.accepted_unknown == ["stranger"]
    assert len(check.problems()) == 4


def ti(task_id: str, start: str, end: str, map_index: int = -1,
       hostname: str = "worker1") -> dict[str, Any]:
    return {"task_id": task_id, "map_index": map_index, "hostname": hostname,
            "start_date": f"2026-12-06T10:{start}Z", "end_date": f"2026-12-06T10:{end}Z"}


def test_stage_times_follow_the_runs_and_tasks_airflow_recorded(bench: ModuleType) -> None:
    ingest_run = {"queued_at": "2026-12-06T10:00:00Z", "start_date": "2026-12-06T10:00:01Z",
                  "end_date": "2026-12-06T10:00:30Z"}
    programs_run = {"queued_at": "2026-12-06T10:00:31Z",
                    "start_date": "2026-12-06T10:00:32Z", "end_date": "2026-12-06T10:03:00Z"}
    ingest_tis = [ti("migrate_store", "00:02", "00:05"), ti("ingest_orders", "00:06", "00:28")]
    programs_tis = [
        ti("plan", "00:33", "01:10"),
        ti("send", "01:12", "02:00", 0, "worker1"),
        ti("send", "01:13", "02:40", 1, "worker2"),
        ti("send", "02:01", "02:30", 2, "worker1"),
        ti("summary", "02:42", "02:45"), ti("kpi", "02:42", "02:55"),
        ti("check", "02:46", "02:48"),
    ]
    stages = bench.stage_times(
        ingest_run, programs_run, ingest_tis, programs_tis,
        {"signals": 20.0, "claim": 8.0},
        [{"seconds": 40.0, "render": 10.0}, {"seconds": 80.0, "render": 30.0},
         {"seconds": 25.0, "render": 5.0}])
    assert stages.wall == 180
    assert stages.spans == {"ingest": 30, "handover": 3, "plan": 37, "expand": 2, "send": 88,
                            "finish": 20}
    assert sum(stages.spans.values()) == stages.wall  # the stages tile the night
    assert stages.task_seconds == {"ingest": 25, "plan": 37, "send": 48 + 87 + 29,
                                   "finish": 3 + 13 + 2}
    assert stages.send == {"seconds": 145.0, "render": 45.0}
    assert stages.plan == {"signals": 20.0, "claim": 8.0}
    assert stages.batches_by_host == {"worker1": 2, "worker2": 1}
    assert stages.send_tasks == 3
    # The plan step's own times are what plan's XCom said, not a share of its span.
    assert stages.plan["signals"] < stages.spans["plan"]


def test_a_night_without_sends_has_an_empty_send_stage(bench: ModuleType) -> None:
    run = {"queued_at": "2026-12-06T10:00:00Z", "start_date": None,
           "end_date": "2026-12-06T10:00:20Z"}
    programs = {"end_date": "2026-12-06T10:01:00Z"}
    stages = bench.stage_times(run, programs, [], [ti("plan", "00:30", "00:50"),
                                                   ti("summary", "00:52", "00:55")], {}, [])
    assert stages.spans["send"] == 0 and stages.send_tasks == 0
    assert stages.spans["finish"] == 10
