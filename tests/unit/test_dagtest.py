"""tend_airflow.dagtest's own logic: the environment it runs a DAG in, and what it prints of a
failed run (the run itself is tests/integration/test_make_run_logs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tend_airflow import dagtest

RUN = "manual__2026-11-20T00:00:00+00:00"


def finished(state: str) -> str:
    return (f"[info] DagRun Finished: dag_id=tend_programs, logical_date=2026-11-20, "
            f"run_id={RUN}, run_start_date=2026-11-20, state={state}, run_type=manual")


def write_log(base: Path, task: str, records: list[dict[str, object]]) -> None:
    path = base / "dag_id=tend_programs" / f"run_id={RUN}" / f"task_id={task}" / "attempt=1.log"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "not json\n")


def test_a_failed_run_prints_the_end_of_each_task_log_with_an_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_log(tmp_path, "plan", [
        {"level": "info", "event": "starting"},
        {"level": "error", "event": "Task failed with exception", "error_detail": [
            {"exc_type": "AirflowFailException", "exc_value": "ingest 2026-11-20 first"}]}])
    write_log(tmp_path, "summary", [{"level": "info", "event": "Tend night 2026-11-20"}])
    env = {"AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(tmp_path)}
    dagtest.failed_task_logs(finished("failed"), env)
    err = capsys.readouterr().err
    assert "task_id=plan/attempt=1.log" in err and "task_id=summary" not in err
    assert "Task failed with exception: AirflowFailException: ingest 2026-11-20 first" in err
    dagtest.failed_task_logs(finished("success"), env)
    assert capsys.readouterr().err == ""


def test_the_run_uses_the_local_executor_and_a_secret_of_its_own() -> None:
    one = dagtest.run_env({"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor", "KEEP": "1"})
    two = dagtest.run_env({})
    assert one["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor" and one["KEEP"] == "1"
    assert one["AIRFLOW__API_AUTH__JWT_SECRET"] != two["AIRFLOW__API_AUTH__JWT_SECRET"]


def test_an_execution_api_that_dies_is_reported_with_its_output(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The api-server exiting at start (a bad AIRFLOW_HOME, a broken install) ends the wait at
    once with its output, instead of a DAG run whose tasks can never report."""
    fake = tmp_path / "airflow"
    fake.write_text("#!/bin/sh\necho 'no such database' >&2\nexit 3\n")
    fake.chmod(0o755)
    log = tmp_path / "api.log"
    monkeypatch.setattr(dagtest, "_airflow", lambda: str(fake))
    with pytest.raises(RuntimeError, match=r"(?s)exited \(rc=3\).*no such database"), \
            dagtest.execution_api({}, log, timeout=30):
        pass


@pytest.mark.parametrize(("state", "rc"), [("success", 0), ("failed", 1)])
def test_a_run_that_finished_is_not_held_by_a_hung_executor_shutdown(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        state: str, rc: int) -> None:
    """``dags test`` printed the run's end, then hangs in its executor's shutdown: stopped
    after the grace period, the exit code is the run's own state's, not the run's timeout."""
    import contextlib
    import time

    fake = tmp_path / "airflow"
    fake.write_text("#!/bin/sh\n"
                    f"echo 'DagRun Finished: dag_id=d, logical_date=x, run_id=r, state={state}'\n"
                    "exec sleep 600\n")
    fake.chmod(0o755)
    monkeypatch.setattr(dagtest, "_airflow", lambda: str(fake))
    monkeypatch.setattr(dagtest, "execution_api",
                        lambda env, log: contextlib.nullcontext("http://127.0.0.1:9"))
    monkeypatch.setattr(dagtest, "SHUTDOWN_GRACE", 0.5)
    monkeypatch.setattr(dagtest, "failed_task_logs", lambda finished, env: None)
    start = time.monotonic()
    assert dagtest.dags_test("d", None, env={}, timeout=300) == rc
    assert time.monotonic() - start < 30
    assert "finished but did not exit within 0 s" in capsys.readouterr().err
