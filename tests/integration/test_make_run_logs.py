"""The runs `make run` makes show their task logs in the Airflow UI.

`make run` runs each DAG through ``python -m tend_airflow.dagtest`` (``airflow dags test
--use-executor`` beside a short-lived Execution API server). After a night run that way in a
temporary Airflow home, every task instance of both runs has its log file where the
api-server's FileTaskHandler reads it, and an api-server started on that home serves the
``plan`` task's log through the same endpoint the UI calls.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from _support import BIN, AirflowScenario, airflow_scenario, free_port

pytestmark = pytest.mark.slow

NIGHT = "2026-11-20"


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> AirflowScenario:
    s = airflow_scenario(tmp_path_factory.mktemp("make-run-logs").resolve(), as_of=NIGHT)
    for dag_id in ("tend_ingest", "tend_programs"):
        out = s.run(sys.executable, "-m", "tend_airflow.dagtest", dag_id, NIGHT,
                    "--api-log", str(s.tmp / "logs" / "execution-api.log"), label=dag_id)
        assert f"DagRun Finished: dag_id={dag_id}," in out and "state=success" in out, out[-4000:]
    return s


def task_instances(s: AirflowScenario) -> list[tuple[str, str, str, int, int]]:
    with sqlite3.connect(s.tmp / "airflow" / "airflow.db") as db:
        return db.execute("SELECT dag_id, run_id, task_id, map_index, try_number "
                          "FROM task_instance ORDER BY dag_id, task_id, map_index").fetchall()


def log_path(s: AirflowScenario, dag_id: str, run_id: str, task_id: str, map_index: int,
             try_number: int) -> Path:
    """Where Airflow's default ``[logging] log_filename_template`` puts a try's log."""
    mapped = f"map_index={map_index}/" if map_index >= 0 else ""
    return (s.tmp / "airflow" / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
            / f"task_id={task_id}" / f"{mapped}attempt={try_number}.log")


def test_every_task_instance_has_its_log_file(scenario: AirflowScenario) -> None:
    tis = task_instances(scenario)
    assert {t[2] for t in tis} >= {"migrate_store", "ingest_orders", "plan", "send", "summary",
                                   "check"}
    missing = [t for t in tis if not log_path(scenario, *t).is_file()]
    assert not missing, f"task instances without a log file: {missing}"
    plan = next(t for t in tis if t[2] == "plan")
    assert f"plan {NIGHT}:" in log_path(scenario, *plan).read_text()


def test_the_api_server_serves_a_task_log(scenario: AirflowScenario) -> None:
    dag_id, run_id, task_id, _, try_number = next(
        t for t in task_instances(scenario) if t[2] == "plan")
    port = free_port()
    env = {**scenario.env, "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True"}
    out = (scenario.tmp / "logs" / "api-server.out").open("ab")
    proc = subprocess.Popen([str(BIN / "airflow"), "api-server", "--apps", "core", "--host",
                             "127.0.0.1", "--port", str(port)], env=env, cwd=scenario.tmp,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    url = (f"http://127.0.0.1:{port}/api/v2/dags/{dag_id}/dagRuns/"
           f"{urllib.parse.quote(run_id, safe='')}/taskInstances/{task_id}/logs/{try_number}")
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (scenario.tmp / "logs" / "api-server.out").read_text()
            try:
                request = urllib.request.Request(url, headers={"Accept": "application/json"})
                with urllib.request.urlopen(request, timeout=10) as response:
                    body = json.loads(response.read())
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                assert time.monotonic() < deadline, "the api-server did not answer in 120 s"
                time.sleep(1)
    finally:
        proc.terminate()
        proc.wait(30)
    events = [str(e.get("event", "")) for e in body["content"] if isinstance(e, dict)]
    assert not any("Log file not found" in e or "Could not read served logs" in e
                   for e in events), events[:5]
    assert any(e.startswith(f"plan {NIGHT}:") for e in events), events[:20]
