"""A real Airflow cluster started by a test, as processes on this machine.

The same topology as docker-compose.yaml, without a container engine: Airflow with the
CeleryExecutor on the local PostgreSQL (a database of its own, created here and dropped on
exit) and Redis (its own db number and a key prefix of its own, deleted on exit), an
api-server, a scheduler, a dag-processor, a triggerer and N Celery workers, each with its own
host name (``cluster_node.hostname``), all on free ports, with Tend's DAGs and plugins.

    with airflow_cluster(tmp_path, env={"AIRFLOW_CONN_TEND_STORE": ...}) as cluster:
        run_id = cluster.trigger("tend_ingest", {"as_of": "2026-11-20"})
        assert cluster.wait_for_run("tend_ingest", run_id) == "success"

Any test can use it (``from airflow_cluster import airflow_cluster``: tests/ is on the path, as
for ``_support``); its module must be listed in ``ONE_WORKER_GROUPS["airflow-services"]``
(tests/conftest.py), so that under pytest-xdist two clusters never run at once. The scheduler
creates no scheduled or asset-triggered runs (``use_job_schedule`` off): a test triggers what
it wants, so the wall clock never adds a night; a test that wants them passes
``AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE=True`` in ``env``, which wins over every setting here.
The api-server lets every request in as admin (simple auth manager, ``all_admins``): it listens
on 127.0.0.1 only, for the test.
Each process writes its output to ``<tmp>/logs/<name>.out``; :meth:`AirflowCluster.diagnose`
gathers their tails for an assertion message, and ``logs/cluster.log`` has a timeline. Every
process starts in a session of its own (a Ctrl-C reaches pytest, which stops them in order),
and stopping or killing one takes its whole process tree.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from _support import PROJECT, free_port, pg_admin, require_postgres, require_redis
from sqlalchemy.engine import make_url

BIN = Path(sys.executable).parent
AIRFLOW = str(BIN / "airflow")
#: Where ``cluster_node`` (Airflow's hostname_callable in the cluster) lives.
NODE_MODULE_DIR = Path(__file__).resolve().parent / "integration"

#: The Redis db number the clusters use; each cluster also prefixes its keys with its own id.
REDIS_DB = 11

START_TIMEOUT = 180.0


@contextmanager
def private_pg_database(prefix: str) -> Iterator[str]:
    """A fresh PostgreSQL database on the test server, dropped (connections and all) on exit."""
    server = require_postgres()
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    pg_admin(server, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        pg_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _psycopg(url: str) -> str:
    """The URL with SQLAlchemy's psycopg 3 driver named, as Airflow and Celery need it."""
    return make_url(url).set(drivername="postgresql+psycopg").render_as_string(
        hide_password=False)


@dataclass
class AirflowCluster:
    tmp: Path
    env: dict[str, str]
    api_url: str
    redis_prefix: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    workers: list[str] = field(default_factory=list)
    killed: set[str] = field(default_factory=set)

    # -- processes --------------------------------------------------------------------------

    def note(self, what: str) -> None:
        """A timestamped line in ``logs/cluster.log``: where a slow or failed run spent time."""
        _note(self.tmp, what)

    def start(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> None:
        log = (self.tmp / "logs" / f"{name}.out").open("ab")
        self.procs[name] = subprocess.Popen(
            [AIRFLOW, *args], env={**self.env, **(env or {})}, cwd=self.tmp,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def airflow(self, *args: str, timeout: float = 180) -> str:
        """Run an ``airflow`` command to the end; its output (fails the test on an error)."""
        self.note(f"airflow {' '.join(args)}")
        proc = subprocess.run([AIRFLOW, *args], env=self.env, cwd=self.tmp, capture_output=True,
                              text=True, timeout=timeout)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"airflow {' '.join(args)} failed:\n{out[-4000:]}"
        return out

    def kill(self, name: str) -> None:
        """SIGKILL a process and everything it started, as a machine or container dying would.

        Not only its process group: Airflow runs each task in a process group of its own
        (so its supervisor can signal the task's children), which would survive a killpg of
        the worker and go on sending. The whole tree is stopped first, so nothing forks while
        it is collected, then killed."""
        proc = self.procs[name]
        self.killed.add(name)
        self.note(f"kill {name}")
        _signal(_tree(proc.pid), signal.SIGSTOP)
        doomed = _tree(proc.pid)  # again: nothing can have forked since the stop
        _signal(doomed, signal.SIGKILL)
        proc.wait(timeout=30)
        _, alive = psutil.wait_procs(doomed, timeout=10)
        running = [p for p in alive if _running(p)]
        assert not running, f"{name}: {running} survived SIGKILL"
        self.note(f"{name} is gone")

    def stop(self) -> None:
        """SIGTERM every process, then SIGKILL whatever is left of its tree after 20 s."""
        self.note("stop")
        trees = [_tree(proc.pid) for proc in self.procs.values() if proc.poll() is None]
        for proc in self.procs.values():
            if proc.poll() is None:  # its group (pgid = its pid, alive, so not reused)
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        for tree in trees:
            # A worker's pool and task processes may outlive it.
            _signal(tree, signal.SIGKILL)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.wait(timeout=10)
        self.note("stopped")

    def output(self, name: str) -> str:
        path = self.tmp / "logs" / f"{name}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def diagnose(self, chars: int = 2500) -> str:
        """The tail of every process's output, and which ones have exited, for a failure."""
        parts = []
        for name, proc in self.procs.items():
            state = "running" if proc.poll() is None else f"exited {proc.returncode}"
            parts.append(f"--- {name} ({state}) ---\n{self.output(name)[-chars:]}")
        return "\n".join(parts)

    def _wait(self, what: str, ready: Any, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n, p in self.procs.items()
                    if p.poll() is not None and n not in self.killed]
            if dead:
                raise AssertionError(f"{', '.join(dead)} exited while waiting for {what}\n"
                                     f"{self.diagnose()}")
            if ready():
                return
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}\n{self.diagnose()}")

    # -- the REST API -----------------------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.api_url}/api/v2/{path.lstrip('/')}", data=data, method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def _answers(self, path: str) -> bool:
        try:
            self.api("GET", path)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
        return True

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        """Trigger a run as the UI's Trigger button does; its run id."""
        run = self.api("POST", f"dags/{dag_id}/dagRuns",
                       {"logical_date": None, "conf": dict(conf or {})})
        self.note(f"triggered {dag_id}: {run['dag_run_id']}")
        return str(run["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.api("GET", f"dags/{dag_id}/dagRuns/{run_id}")["state"])

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300) -> str:
        """Wait until the run has finished; its final state."""
        state = ""

        def finished() -> bool:
            nonlocal state
            state = self.run_state(dag_id, run_id)
            return state in ("success", "failed")

        self._wait(f"{dag_id} run {run_id} to finish (last state {state!r})", finished, timeout)
        self.note(f"{dag_id} {run_id}: {state}")
        return state

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of a run, page by page (the REST API gives at most 100 at a
        time, and a large night has a send task per batch)."""
        out: list[dict[str, Any]] = []
        while True:
            page = self.api("GET", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances"
                                   f"?limit=100&offset={len(out)}")
            out += page["task_instances"]
            if not page["task_instances"] or len(out) >= page["total_entries"]:
                return out

    def tries(self, dag_id: str, run_id: str, task_id: str, map_index: int) -> list[dict[str, Any]]:
        """Every attempt of one (mapped) task instance, oldest first, with its host name."""
        path = f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/tries"
        tries = self.api("GET", path)["task_instances"]
        return sorted(tries, key=lambda t: t["try_number"])

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value",
             map_index: int | None = None) -> Any:
        """One XCom value (of one mapped task instance with ``map_index``); HTTPError 404
        when the task never pushed it."""
        path = f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        mapped = "" if map_index is None else f"map_index={map_index}&"
        return self.api("GET", f"{path}?{mapped}deserialize=true")["value"]


def _note(tmp: Path, what: str) -> None:
    with (tmp / "logs" / "cluster.log").open("a") as log:
        log.write(f"{time.strftime('%H:%M:%S')} {what}\n")


def _tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (empty once it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _signal(procs: list[psutil.Process], sig: signal.Signals) -> None:
    """Signal each process still running; psutil checks each is the one it was (no pid reuse)."""
    for p in procs:
        with suppress(psutil.NoSuchProcess):
            p.send_signal(sig)


def _running(p: psutil.Process) -> bool:
    """Whether a process still runs (a zombie waiting for its reaper does not)."""
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _redis_delete_prefix(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _fernet_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


@contextmanager
def airflow_cluster(tmp: Path, *, workers: int = 2, concurrency: int = 2, pool: int = 4,
                    env: Mapping[str, str] | None = None) -> Iterator[AirflowCluster]:
    """Start the cluster in ``tmp`` and yield it once every component is up; stop everything
    and drop its database and Redis keys on exit. ``env`` adds to (and wins over) the
    cluster's environment: connections, Variables, TEND_* settings. Workers are named
    ``worker1``..``workerN``; Airflow records those names as the task instances' host names.
    ``pool`` is the size of the ``tend_send`` pool, as airflow-init creates it."""
    redis_base = require_redis()
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "logs").mkdir(exist_ok=True)
    with ExitStack() as stack:
        stack.callback(_note, tmp, "database dropped")
        db_url = _psycopg(stack.enter_context(private_pg_database("tend_airflow")))
        stack.callback(_note, tmp, "Redis keys deleted; dropping the database")
        prefix = f"tend-cluster-{uuid.uuid4().hex[:8]}:"
        broker = f"{redis_base}/{REDIS_DB}"
        stack.callback(_redis_delete_prefix, broker, prefix)
        api_port = free_port()
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("AIRFLOW", "TEND_", "_AIRFLOW"))}
        base["TEND_TODAY"] = os.environ.get("TEND_TODAY", "")  # the suite's pinned day (conftest)
        cluster_env = {
            **base,
            "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(NODE_MODULE_DIR), base.get("PYTHONPATH")) if p),
            "AIRFLOW_HOME": str(tmp / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__FERNET_KEY": _fernet_key(),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "cluster_node.hostname",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
            # psycopg 3 for the async engine too (Airflow would otherwise pick asyncpg).
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": db_url,
            "AIRFLOW__CELERY__BROKER_URL": broker,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{db_url}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(concurrency),
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": prefix,
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(tmp / "task-logs"),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            # A worker that dies is noticed in seconds, not the default five minutes (its
            # running tasks fail and are retried), and a task it had taken from the queue but
            # not started is queued again after 20 s, not ten minutes.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "3",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "20",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "600",
            **(env or {}),
        }
        cluster = AirflowCluster(tmp, cluster_env, f"http://127.0.0.1:{api_port}", prefix)
        stack.callback(cluster.stop)

        cluster.airflow("db", "migrate", timeout=300)
        cluster.airflow("pools", "set", "tend_send", str(pool), "Tend senders")
        cluster.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(api_port))
        cluster.start("scheduler", "scheduler")
        cluster.start("dag-processor", "dag-processor")
        cluster.start("triggerer", "triggerer")
        for n in range(1, workers + 1):
            name = f"worker{n}"
            cluster.workers.append(name)
            cluster.start(name, "celery", "worker", "--celery-hostname", f"{name}@{prefix[:-1]}",
                          "--concurrency", str(concurrency), "--without-gossip", env={
                              "CLUSTER_NODE_NAME": name,
                              "AIRFLOW__CELERY__WORKER_LOG_SERVER_PORT": str(free_port()),
                          })

        cluster._wait("the api-server", lambda: cluster._answers("version"))
        for name in cluster.workers:
            cluster._wait(f"{name} to be ready",
                          lambda name=name: f"{name}@{prefix[:-1]} ready." in cluster.output(name))

        def healthy() -> bool:
            health = cluster.api("GET", "monitor/health")
            return all(health.get(part, {}).get("status") == "healthy"
                       for part in ("metadatabase", "scheduler", "triggerer", "dag_processor"))

        cluster._wait("the scheduler, triggerer and dag-processor to be healthy", healthy)
        cluster.note("up")
        yield cluster
