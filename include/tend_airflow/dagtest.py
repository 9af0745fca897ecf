"""``airflow dags test`` whose tasks write their logs where the Airflow UI reads them.

``make run`` runs a night with ``airflow dags test``, which by default runs every task inside
its own process and prints the task logs to its output: no log file is written under
``[logging] base_log_folder``, so the UI that ``make airflow`` starts on the same metadata
database shows "Log file not found" for those runs.

``airflow dags test --use-executor`` hands the tasks to the configured executor instead, whose
task supervisor writes each try's log file at the path the api-server's ``FileTaskHandler``
reads (``dag_id=…/run_id=…/task_id=…/attempt=N.log``). On its own it hangs: the supervisor
talks to the Execution API over HTTP (``[core] execution_api_server_url``, by default the
api-server on localhost:8080), ``dags test`` starts none, and every task's first call is
refused ("Workload execution failed"), so its task instance stays queued and the test loop
waits for it forever.

So this runs, for the length of one DAG run, an api-server serving only the Execution API on a
free loopback port, points the executor at it, runs ``dags test --use-executor`` under a
timeout, and stops the api-server. The executor is the LocalExecutor (the tasks run on this
machine, as ``dags test`` would), and the two processes share a JWT secret made for the run so
the api-server accepts the executor's task tokens whatever ``airflow.cfg`` says.

    python -m tend_airflow.dagtest tend_ingest 2026-11-20 [--conf '{"as_of": "2026-11-20"}']

The output is ``dags test``'s (the run's ``DagRun Finished: … state=…`` line among it), then,
for each failed task, the end of its log file; the exit code is ``dags test``'s, 124 on the
timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

#: How long the Execution API may take to answer after its start (it imports Airflow).
START_TIMEOUT = 120.0
#: The default bound on one DAG run: a night of the demo shop takes well under a minute.
RUN_TIMEOUT = 1800.0
#: How long ``dags test`` may take to exit once the run has finished. Its LocalExecutor can hang
#: in shutdown (a worker process that never takes its stop, so ``executor.end()`` waits for it
#: forever) after every task is done: the run's result is known by then.
SHUTDOWN_GRACE = 60.0


def _airflow() -> str:
    """The ``airflow`` beside this interpreter (the project's venv), else the one on PATH."""
    here = Path(sys.executable).parent / "airflow"
    return str(here) if here.exists() else "airflow"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """SIGTERM the process's group (it was started in a session of its own), then SIGKILL."""
    if proc.poll() is not None:
        return
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _stop_late(proc: subprocess.Popen[bytes], late: list[bool]) -> None:
    late.append(True)
    _stop(proc)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


@contextmanager
def execution_api(env: Mapping[str, str], log: Path, *, timeout: float = START_TIMEOUT
                  ) -> Iterator[str]:
    """An api-server serving only the Execution API on a free loopback port; its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/execution/"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [_airflow(), "api-server", "--apps", "execution", "--host", "127.0.0.1",
             "--port", str(port)],
            env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the Execution API server exited (rc={proc.returncode}) "
                                   f"before it answered; its output:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(f"{url}health", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Execution API server did not answer on {url} within "
                                   f"{timeout:.0f} s; its output:\n{_tail(log)}")
            time.sleep(0.5)
        yield url
    finally:
        _stop(proc)


def run_env(base: Mapping[str, str]) -> dict[str, str]:
    """The environment both processes share: the LocalExecutor and a JWT secret of the run's."""
    return {**base, "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32)}


def dags_test(dag_id: str, logical_date: str | None, *, conf: str | None = None,
              timeout: float = RUN_TIMEOUT, env: Mapping[str, str] | None = None,
              api_log: Path | None = None) -> int:
    """Run one DAG run through the executor (see the module docstring); the exit code."""
    env = run_env(env if env is not None else os.environ)
    api_log = api_log or Path(tempfile.gettempdir()) / f"tend-execution-api-{os.getpid()}.log"
    cmd = [_airflow(), "dags", "test", dag_id, *([logical_date] if logical_date else []),
           "--use-executor", *(["-c", conf] if conf else [])]
    finished: list[str] = []
    late: list[bool] = []  # set when stopped in the executor's shutdown
    with execution_api(env, api_log) as url:
        proc = subprocess.Popen(cmd, env={**env, "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": url},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        timer = threading.Timer(timeout, _stop, (proc,))
        timer.start()
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                sys.stdout.buffer.write(raw)
                sys.stdout.buffer.flush()
                if b"DagRun Finished:" in raw:
                    finished.append(raw.decode(errors="replace"))
                    timer.cancel()
                    timer = threading.Timer(SHUTDOWN_GRACE, _stop_late, (proc, late))
                    timer.start()
            rc = proc.wait()
        finally:
            timer.cancel()
            _stop(proc)
    if not finished:
        print(f"airflow dags test {dag_id} did not finish (rc={rc}"
              + (f"; stopped after {timeout:.0f} s, raise --timeout for a larger shop"
                 if rc < 0 else "") + ")", file=sys.stderr)
        return 124 if rc < 0 else (rc or 1)
    failed_task_logs(finished[-1], env)
    if late:  # stopped in the executor's shutdown, after the run had finished: its state decides
        print(f"airflow dags test {dag_id} finished but did not exit within "
              f"{SHUTDOWN_GRACE:.0f} s (Airflow's executor shutdown); stopped", file=sys.stderr)
        return 0 if "state=success" in finished[-1] else 1
    return rc


def failed_task_logs(finished: str, env: Mapping[str, str]) -> None:
    """For a run that did not succeed, the end of each task log that recorded an error: the
    task logs are in their files now, not in ``dags test``'s output."""
    m = re.search(r"dag_id=([^,]+),.*run_id=([^,]+),.*state=(\w+)", finished)
    if m is None or m.group(3) == "success":
        return
    base = Path(env.get("AIRFLOW__LOGGING__BASE_LOG_FOLDER")
                or Path(env.get("AIRFLOW_HOME", Path.home() / "airflow")) / "logs")
    folder = base / f"dag_id={m.group(1)}" / f"run_id={m.group(2)}"
    for path in sorted(folder.rglob("attempt=*.log")):
        events = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            event = str(record.get("event", ""))
            # A failed task's exception is in the record's error_detail, not in its event.
            for detail in record.get("error_detail") or []:
                if isinstance(detail, dict) and detail.get("exc_type"):
                    event += f": {detail['exc_type']}: {detail.get('exc_value', '')}"
                    break
            events.append((record.get("level", ""), event))
        if any(level in ("error", "critical") for level, _ in events):
            print(f"\n--- {path.relative_to(base)} (end) ---", file=sys.stderr)
            for level, event in events[-15:]:
                print(f"{level:>8}  {event}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tend_airflow.dagtest",
        description="airflow dags test through the LocalExecutor, writing each task's log "
                    "file where the Airflow UI reads it")
    parser.add_argument("dag_id")
    parser.add_argument("logical_date", nargs="?")
    parser.add_argument("-c", "--conf", help="the run's conf, as JSON")
    parser.add_argument("--timeout", type=float, default=RUN_TIMEOUT,
                        help="seconds before the run is stopped (default %(default)s)")
    parser.add_argument("--api-log", type=Path,
                        help="where the Execution API server's output goes (default: a file "
                             "in the temporary directory)")
    args = parser.parse_args(argv)
    # Terminated itself (a `timeout`, Ctrl-C in make), it still stops what it started: both
    # children run in sessions of their own, so a signal to this process reaches neither, and
    # SystemExit runs the cleanup of ``dags_test`` and ``execution_api``.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    sys.stdout.flush()
    try:
        return dags_test(args.dag_id, args.logical_date, conf=args.conf, timeout=args.timeout,
                         api_log=args.api_log)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
