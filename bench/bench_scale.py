"""A demo night end to end through Airflow's CeleryExecutor, with 1 then N workers
(``make bench-scale``).

For each worker count, on a fresh contact store:

1. the demo shop of ``--customers`` customers (generated once and cached under var/bench/ by
   bench_signals.py's ``cached_shop``: 1M customers is 6.0M orders and 12.0M order lines) is the
   ``tend_shop`` connection; a fresh PostgreSQL database is the ``tend_store`` connection, as in
   production;
2. the Airflow cluster the Celery integration test uses (tests/airflow_cluster.py: PostgreSQL
   metadata database, Redis broker, api-server, scheduler, dag-processor, triggerer and the
   workers, each running ``--concurrency`` tasks at once) is started;
3. ``tend_ingest`` then ``tend_programs`` are triggered for the night through the REST API, as
   the asset schedule would run them one after the other, with delivery through SendGrid
   against ``tend fake-sendgrid --latency-ms 20`` (a strict stand-in answering each request
   after 20 ms);
4. when ``tend_programs`` has finished, the figures are read from what Airflow and the tasks
   recorded: the runs' and task instances' start and end times and host names (REST API), the
   plan's and each send batch's seconds per step (XCom ``timings``), the ledger's statuses,
   the stand-in's count of every message it accepted. Nothing is estimated.

It checks that every message the night claimed was sent, once: the ledger says ``sent`` for
each, the stand-in accepted each exactly once, and it accepted nothing else. It samples the CPU
time of every process of the cluster every half second (the workers with the tasks they run,
the stand-in, the scheduler and the other Airflow services, PostgreSQL, Redis) to show what the
machine spent its cores on, and so what limits a second worker on this machine.

Then the store's size: rows and bytes per table with their indexes (PostgreSQL's
``pg_total_relation_size``), for the capacity plan in docs/capacity.md.

    .venv/bin/python bench/bench_scale.py [--customers 1000000] [--workers 1,2]
        [--concurrency 2] [--pool 4] [--batch-size 5000] [--json out.json]
    .venv/bin/python bench/bench_scale.py --report out.json   # the report again

The cluster runs the DAGs and ``tend`` from this checkout: leave them alone while it runs (a
DAG file edited mid-night is parsed again by a dag-processor that holds the older modules, and
the run stops).

PostgreSQL: ``BENCH_DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``), on
whose server the store's and Airflow's databases are created and dropped after each run; Redis:
``TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import sys
import tempfile
import threading
import time
import urllib.error
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
NIGHT = dt.date(2026, 11, 20)  # the night the cached demo shops end on (bench_signals.NIGHT)
KEY = "SG.bench-scale"
DEFAULT_DATABASE = "postgresql://postgres@127.0.0.1:5432/test"


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


# -- pure parts: the duplicate check and the stage times (tests/unit/bench) ------------------


@dataclass
class DeliveryCheck:
    """Every message the night claimed, sent once: the ledger against the stand-in's record."""

    claimed: int
    """Messages of the night in the ledger (whatever their status)."""
    sent: int
    not_sent: dict[str, str] = field(default_factory=dict)
    """message id -> status, for each claimed message the ledger does not say sent."""
    sent_twice: dict[str, int] = field(default_factory=dict)
    """message id -> times the stand-in accepted it, where more than once."""
    sent_not_accepted: list[str] = field(default_factory=list)
    """'sent' in the ledger, yet the stand-in never accepted it."""
    accepted_unknown: list[str] = field(default_factory=list)
    """Accepted by the stand-in, but no message of the night's ledger."""

    @property
    def duplicates(self) -> int:
        """Extra copies: a message accepted three times is two duplicates."""
        return sum(n - 1 for n in self.sent_twice.values())

    @property
    def ok(self) -> bool:
        return not (self.not_sent or self.sent_twice or self.sent_not_accepted
                    or self.accepted_unknown)

    def problems(self) -> list[str]:
        out = []
        if self.not_sent:
            out.append(f"{len(self.not_sent):,} claimed message(s) not sent: "
                       f"{dict(Counter(self.not_sent.values()))}")
        if self.sent_twice:
            out.append(f"{len(self.sent_twice):,} message(s) accepted more than once "
                       f"({self.duplicates:,} duplicates)")
        if self.sent_not_accepted:
            out.append(f"{len(self.sent_not_accepted):,} message(s) 'sent' in the ledger that "
                       "the stand-in never accepted")
        if self.accepted_unknown:
            out.append(f"{len(self.accepted_unknown):,} accepted message(s) the ledger does "
                       "not have")
        return out


def delivery_check(ledger: Mapping[str, str], accepted: Mapping[str, int]) -> DeliveryCheck:
    """Compare the night's ledger (message id -> status) with what the stand-in accepted
    (message id -> times accepted)."""
    return DeliveryCheck(
        claimed=len(ledger),
        sent=sum(1 for s in ledger.values() if s == "sent"),
        not_sent={m: s for m, s in ledger.items() if s != "sent"},
        sent_twice={m: n for m, n in accepted.items() if n > 1},
        sent_not_accepted=sorted(m for m, s in ledger.items()
                                 if s == "sent" and accepted.get(m, 0) == 0),
        accepted_unknown=sorted(m for m in accepted if m not in ledger),
    )


def _when(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def _seconds(a: dt.datetime | None, b: dt.datetime | None) -> float:
    return (b - a).total_seconds() if a and b else 0.0


@dataclass
class Stages:
    """Where one night's time went, from the runs' and task instances' records."""

    wall: float
    """From the ingest run's queueing to the end of the programs run."""
    spans: dict[str, float]
    """Wall seconds of each stage on the night's timeline (``STAGE_ORDER``)."""
    task_seconds: dict[str, float]
    """Seconds the tasks of each stage ran, summed over task instances (sends overlap)."""
    plan: dict[str, float]
    """The plan task's own seconds per step (its XCom ``timings``)."""
    send: dict[str, float]
    """The send batches' seconds per step, summed over batches (their XCom ``timings``)."""
    batches_by_host: dict[str, int]
    send_tasks: int


#: The night's stages in order. ``ingest``: the ingest run from its queueing to its end (the
#: store's migration and the ingest task, and Airflow starting them); ``handover``: from there
#: to the plan task's start (the programs run queued, scheduled, its first task started);
#: ``plan``: the plan task; ``expand``: from its end to the first send batch's start (Airflow
#: expanding the mapped task and starting it); ``send``: the first send batch's start to the
#: last one's end; ``finish``: from there to the run's end (summary, kpi, complaints digest,
#: check). They tile the night: their sum is ``wall``.
STAGE_ORDER = ("ingest", "handover", "plan", "expand", "send", "finish")


def stage_times(ingest_run: Mapping[str, Any], programs_run: Mapping[str, Any],
                ingest_tis: Sequence[Mapping[str, Any]], programs_tis: Sequence[Mapping[str, Any]],
                plan_timings: Mapping[str, float],
                send_timings: Iterable[Mapping[str, float]]) -> Stages:
    """The night's stages from the REST API's run and task-instance records (their ISO
    ``queued_at`` / ``start_date`` / ``end_date``, ``task_id``, ``map_index``, ``hostname``)
    and the tasks' XCom timings. Mapped sends count once each (their latest try)."""
    run_start = _when(ingest_run.get("queued_at")) or _when(ingest_run["start_date"])
    ingest_end = _when(ingest_run["end_date"])
    run_end = _when(programs_run["end_date"])
    plan = [t for t in programs_tis if t["task_id"] == "plan"]
    sends = [t for t in programs_tis if t["task_id"] == "send" and t.get("map_index", -1) >= 0]
    plan_start = _when(plan[0]["start_date"]) if plan else None
    plan_end = _when(plan[0]["end_date"]) if plan else None
    starts = [w for t in sends if (w := _when(t.get("start_date")))]
    ends = [w for t in sends if (w := _when(t.get("end_date")))]
    send_start = min(starts) if starts else plan_end
    send_end = max(ends) if ends else plan_end
    spans = {
        "ingest": _seconds(run_start, ingest_end),
        "handover": _seconds(ingest_end, plan_start),
        "plan": _seconds(plan_start, plan_end),
        "expand": _seconds(plan_end, send_start),
        "send": _seconds(send_start, send_end),
        "finish": _seconds(send_end, run_end),
    }
    task_seconds: Counter[str] = Counter()
    for t in ingest_tis:
        task_seconds["ingest"] += _seconds(_when(t.get("start_date")), _when(t.get("end_date")))
    for t in programs_tis:
        stage = t["task_id"] if t["task_id"] in ("plan", "send") else "finish"
        task_seconds[stage] += _seconds(_when(t.get("start_date")), _when(t.get("end_date")))
    send: Counter[str] = Counter()
    for timings in send_timings:
        send.update({k: float(v) for k, v in timings.items()})
    return Stages(
        wall=_seconds(run_start, run_end), spans=spans, task_seconds=dict(task_seconds),
        plan={k: float(v) for k, v in plan_timings.items()}, send=dict(send),
        batches_by_host=dict(Counter(str(t.get("hostname")) for t in sends)),
        send_tasks=len(sends))


# -- CPU: what the machine spent its cores on --------------------------------------------------


class CpuSampler:
    """CPU seconds per group of processes, sampled every ``every`` seconds on a thread.

    A group is its root processes and all their descendants (a worker and the task processes
    it starts), or every process with a given name (PostgreSQL's). Each process's own user +
    system time is kept as last seen, so a short-lived process loses at most one interval;
    ``machine`` is the whole machine's busy time (psutil.cpu_times), which includes everything
    else running on it."""

    def __init__(self, roots: Mapping[str, Sequence[int]], names: Mapping[str, Sequence[str]],
                 alone: Mapping[str, int], every: float = 0.5) -> None:
        self.roots, self.names, self.alone, self.every = roots, names, alone, every
        self.seen: dict[tuple[int, float], tuple[str, float]] = {}
        self.peak_rss: Counter[str] = Counter()
        """The largest resident memory of one process of each group, in bytes."""
        self._stop = threading.Event()
        self._start_machine = self._machine()
        self._start_time = time.monotonic()
        self._baseline: dict[tuple[int, float], float] = {}
        self._sample(baseline=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _machine() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    def _members(self) -> Iterator[tuple[str, psutil.Process]]:
        from airflow_cluster import _tree

        for group, pids in self.roots.items():
            for pid in pids:
                for p in _tree(pid):
                    yield group, p
        for group, pid in self.alone.items():  # without its children (the cluster's parent)
            try:
                yield group, psutil.Process(pid)
            except psutil.NoSuchProcess:
                continue
        if self.names:
            for p in psutil.process_iter(["name"]):
                for group, names in self.names.items():
                    if p.info["name"] in names:
                        yield group, p

    def _sample(self, baseline: bool = False) -> None:
        for group, p in self._members():
            try:
                key = (p.pid, p.create_time())
                t = p.cpu_times()
                rss = p.memory_info().rss
            except psutil.NoSuchProcess:
                continue
            self.peak_rss[group] = max(self.peak_rss[group], rss)
            own = t.user + t.system
            if baseline:
                self._baseline[key] = own
            if self.seen.get(key, (group,))[0] == group:  # a process counts in one group
                self.seen[key] = (group, own)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def stop(self) -> dict[str, float]:
        """CPU seconds per group since the sampler started, ``machine`` and ``wall``."""
        self._stop.set()
        self._thread.join(timeout=10)
        self._sample()
        out: Counter[str] = Counter()
        for key, (group, own) in self.seen.items():
            out[group] += own - self._baseline.get(key, 0.0)
        result = dict(out)
        result["machine"] = self._machine() - self._start_machine
        result["wall"] = time.monotonic() - self._start_time
        return result

    def peak_memory(self) -> dict[str, float]:
        """GiB: the largest process of each group."""
        return {g: round(b / 2**30, 2) for g, b in self.peak_rss.items()}


class ConnectionSampler:
    """The most connections each database had at once (PostgreSQL's ``pg_stat_activity``,
    every ``every`` seconds): the contact store's and Airflow's, for the capacity plan."""

    def __init__(self, server_url: str, databases: Mapping[str, str], every: float = 1.0
                 ) -> None:
        from sqlalchemy import create_engine

        self.engine = create_engine(server_url, pool_size=1)
        self.databases, self.every = databases, every
        self.peak: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from sqlalchemy import text

        names = {db: label for label, db in self.databases.items()}
        while not self._stop.wait(self.every):
            with self.engine.connect() as conn:
                counts = conn.execute(text(
                    "SELECT datname, count(*) FROM pg_stat_activity WHERE datname = ANY(:d) "
                    "GROUP BY datname"), {"d": list(names)}).all()
            for db, n in counts:
                label = names[db]
                self.peak[label] = max(self.peak[label], int(n))

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join(timeout=10)
        self.engine.dispose()
        return dict(self.peak)


# -- the store -------------------------------------------------------------------------------------


def ledger_of_night(store: str) -> dict[str, str]:
    from sqlalchemy import select

    from tend.store.db import connect
    from tend.store.tables import contact_ledger as L

    with connect(store).connect() as conn:
        return {str(m): s for m, s in conn.execute(
            select(L.c.message_id, L.c.status).where(L.c.as_of == NIGHT))}


def store_size(store: str) -> list[dict[str, Any]]:
    """Each table of the store: rows, bytes with its indexes and TOAST, bytes per row."""
    from sqlalchemy import text

    from tend.store.db import connect

    with connect(store).connect() as conn:
        tables = [r[0] for r in conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"))]
        out = []
        for name in sorted(tables):
            rows = conn.execute(text(f'SELECT count(*) FROM "{name}"')).scalar_one()
            total, heap, indexes = conn.execute(text(
                "SELECT pg_total_relation_size(:t), pg_table_size(:t), pg_indexes_size(:t)"),
                {"t": name}).one()
            out.append({"table": name, "rows": int(rows), "bytes": int(total),
                        "table_bytes": int(heap), "index_bytes": int(indexes),
                        "bytes_per_row": round(total / rows) if rows else None})
    return sorted(out, key=lambda r: -r["bytes"])


# -- one night ----------------------------------------------------------------------------


def _timings(cluster: Any, run_id: str, task_id: str, map_index: int | None = None
             ) -> dict[str, float]:
    """A ``tend_programs`` task's ``timings`` XCom (empty when it failed before leaving it)."""
    try:
        return dict(cluster.xcom("tend_programs", run_id, task_id, "timings", map_index))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return {}
        raise


def _database_of(url: str) -> str:
    from sqlalchemy.engine import make_url

    return str(make_url(url).database)


#: The machine's own services the night uses, sampled by process name.
SERVICES = {"postgres": ["postgres"], "redis": ["redis-server"]}


def one_night(*, shop: Path, workers: int, concurrency: int, pool: int, batch_size: int,
              latency_ms: float, workdir: Path, timeout: float, measure_store: bool
              ) -> dict[str, Any]:
    from airflow_cluster import airflow_cluster, private_pg_database
    from send_bench import StandIn

    workdir.mkdir(parents=True, exist_ok=True)
    shop_url = f"sqlite:///{shop}"
    with private_pg_database("tend_bench_store") as store:
        stand_in = StandIn(latency_ms, api_key=KEY, log=workdir / "fake-sendgrid.log")
        try:
            sendgrid = {"conn_type": "http", "host": stand_in.url, "password": KEY}
            env = {
                "AIRFLOW_CONN_TEND_SHOP": shop_url,
                "AIRFLOW_CONN_TEND_STORE": store,
                "AIRFLOW_CONN_SENDGRID_DEFAULT": json.dumps(sendgrid),
                "AIRFLOW_VAR_TEND_DELIVERY": "sendgrid",
                "TEND_STORE_URL": store,
                "TEND_SHOP_URL": shop_url,
                "TEND_CLAIM_BATCH_SIZE": str(batch_size),
                "TEND_SEND_TASKS_PER_RUN": str(pool),  # one night may use the whole pool
                "TEND_SECRET_KEY": "bench-scale",
                "TEND_VAR_DIR": str(workdir / "var"),
                # The night as when it runs on time (the next day): implied consent counts back
                # from the day a message is sent, so a later run would refuse more customers
                # and the nights measured on different days would not compare.
                "TEND_TODAY": (NIGHT + dt.timedelta(days=1)).isoformat(),
                # Airflow's own defaults, not the integration test's seconds (which that test
                # needs to see a killed worker quickly): a task waiting its turn in the Celery
                # queue, or a busy machine delaying a heartbeat, is not a failure here.
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "300",
                "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "600",
                "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "120",
            }
            with airflow_cluster(workdir / "cluster", workers=workers, concurrency=concurrency,
                                 pool=pool, env=env) as cluster:
                roots = {name: [cluster.procs[name].pid] for name in cluster.workers}
                roots["stand-in"] = [stand_in.proc.pid]
                roots["airflow services"] = [cluster.procs[name].pid for name in
                                             ("api-server", "scheduler", "dag-processor",
                                              "triggerer")]
                load_before = os.getloadavg()
                _log(f"{workers} worker(s): cluster up; triggering the night "
                     f"(load average {load_before[0]:.2f})")
                sampler = CpuSampler(roots, SERVICES, {"bench": os.getpid()})
                connections = ConnectionSampler(
                    os.environ["TEST_DATABASE_URL"],
                    {"store": _database_of(store),
                     "airflow": _database_of(cluster.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])})
                t0 = time.monotonic()
                ingest = cluster.trigger("tend_ingest", {"as_of": NIGHT.isoformat()})
                state = cluster.wait_for_run("tend_ingest", ingest, timeout=timeout)
                if state != "success":
                    raise SystemExit(f"tend_ingest: {state}\n{cluster.diagnose()}")
                _log(f"tend_ingest done in {time.monotonic() - t0:.0f}s")
                programs = cluster.trigger("tend_programs", {"as_of": NIGHT.isoformat()})
                state = cluster.wait_for_run("tend_programs", programs, timeout=timeout)
                cpu = sampler.stop()
                peak_gib = sampler.peak_memory()
                peak_connections = connections.stop()
                polled = time.monotonic() - t0
                load_after = os.getloadavg()
                _log(f"tend_programs {state} after {polled:.0f}s in all")
                runs = {dag: cluster.api("GET", f"dags/{dag}/dagRuns/{run}")
                        for dag, run in (("tend_ingest", ingest), ("tend_programs", programs))}
                ingest_tis = cluster.task_instances("tend_ingest", ingest)
                programs_tis = cluster.task_instances("tend_programs", programs)
                plan_timings = _timings(cluster, programs, "plan")
                send_timings = [_timings(cluster, programs, "send", ti["map_index"])
                                for ti in programs_tis
                                if ti["task_id"] == "send" and ti["map_index"] >= 0]
                failed = [f"{t['task_id']}[{t['map_index']}]: {t['state']}"
                          for t in programs_tis if t["state"] != "success"]
        finally:
            stand_in_stats = stand_in.stats()
            accepted = stand_in.counts()
            stand_in.close()
        ledger = ledger_of_night(store)
        check = delivery_check(ledger, accepted)
        sizes = store_size(store) if measure_store else []
    # What the figures were computed from, to recompute them (``--report``).
    raw = {"runs": runs, "ingest_tis": ingest_tis, "programs_tis": programs_tis,
           "plan_timings": plan_timings, "send_timings": send_timings}
    return {
        "workers": workers, "concurrency": concurrency, "pool": pool, "batch_size": batch_size,
        "state": state, "failed_tasks": failed, "polled_seconds": polled,
        "messages": check.sent, "claimed": check.claimed, **timed(raw, check.sent),
        "check": {"ok": check.ok, "duplicates": check.duplicates, "problems": check.problems()},
        "stand_in": stand_in_stats, "cpu": cpu,
        "load": {"before": load_before, "after": load_after}, "store": sizes,
        "peak_connections": peak_connections, "peak_gib": peak_gib, "raw": raw,
    }


def timed(raw: Mapping[str, Any], messages: int) -> dict[str, Any]:
    """The stage times of a night and the rates they give, from what Airflow and the tasks
    recorded (``raw``): one computation for a run and for ``--report`` of a saved one."""
    stages = stage_times(raw["runs"]["tend_ingest"], raw["runs"]["tend_programs"],
                         raw["ingest_tis"], raw["programs_tis"], raw["plan_timings"],
                         raw["send_timings"])
    return {"stages": stages.__dict__,
            "rate": messages / stages.wall if stages.wall else 0.0,
            "send_rate": messages / stages.spans["send"] if stages.spans["send"] else 0.0}


# -- the report -----------------------------------------------------------------------------


def report(results: Sequence[Mapping[str, Any]], customers: int) -> str:
    lines = [f"bench-scale: {customers:,} customers, night {NIGHT}, "
             f"{platform.machine()} x {psutil.cpu_count()} cores, "
             f"stand-in latency {results[0].get('latency_ms', 20):g} ms"]
    head = "| | " + " | ".join(f"{r['workers']} worker(s)" for r in results) + " |"
    lines += ["", head, "|---" * (len(results) + 1) + "|"]

    def row(label: str, values: Iterable[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(values) + " |")

    row("end to end (ingest queued -> programs done)",
        (f"**{r['stages']['wall']:.0f} s**" for r in results))
    row("messages sent (= claimed)", (f"{r['messages']:,} / {r['claimed']:,}" for r in results))
    row("msg/s end to end", (f"**{r['rate']:,.0f}**" for r in results))
    row("msg/s in the send stage", (f"{r['send_rate']:,.0f}" for r in results))
    for stage in STAGE_ORDER:
        row(f"{stage} (wall)", (f"{r['stages']['spans'][stage]:.1f} s" for r in results))
    steps = sorted({k for r in results for k in r["stages"]["plan"]},
                   key=lambda k: list(results[0]["stages"]["plan"]).index(k)
                   if k in results[0]["stages"]["plan"] else 99)
    for step in steps:
        row(f"plan: {step}", (f"{r['stages']['plan'].get(step, 0):.1f} s" for r in results))
    keys = sorted({k for r in results for k in r["stages"]["send"]})
    for key in keys:
        row(f"send batches, summed: {key}",
            (f"{r['stages']['send'].get(key, 0):.1f} s" for r in results))

    def by_host(r: Mapping[str, Any]) -> str:
        hosts = sorted(r["stages"]["batches_by_host"].items())
        return f"{r['stages']['send_tasks']} ({', '.join(f'{h} {n}' for h, n in hosts)})"

    row("send tasks (by host)", (by_host(r) for r in results))

    def airflow_per_task(r: Mapping[str, Any]) -> str:
        st = r["stages"]
        extra = st["task_seconds"].get("send", 0) - st["send"].get("seconds", 0)
        return f"{extra / max(st['send_tasks'], 1):.1f} s"

    row("send tasks: Airflow's time per task (task duration - send_batch's own seconds)",
        (airflow_per_task(r) for r in results))
    groups = sorted({k for r in results for k in r["cpu"] if k not in ("machine", "wall")})
    for group in groups:
        row(f"CPU s: {group}", (f"{r['cpu'].get(group, 0):.0f}" for r in results))

    def worker_cpu_per_message(r: Mapping[str, Any]) -> str:
        cpu = sum(v for k, v in r["cpu"].items() if k.startswith("worker"))
        return f"{cpu / max(r['messages'], 1) * 1e3:.2f} ms"

    row("worker CPU per message sent (all stages)", (worker_cpu_per_message(r) for r in results))
    row("largest process, GiB (" + ", ".join(groups) + ")",
        (" / ".join(f"{r.get('peak_gib', {}).get(g, 0):.1f}" for g in groups) for r in results))
    row("CPU s: whole machine (of 2 x wall)",
        (f"{r['cpu']['machine']:.0f} of {psutil.cpu_count() * r['cpu']['wall']:.0f}"
         for r in results))
    row("most connections at once: store / Airflow",
        (f"{r.get('peak_connections', {}).get('store', 0)} / "
         f"{r.get('peak_connections', {}).get('airflow', 0)}" for r in results))
    row("duplicates at the stand-in", (str(r["check"]["duplicates"]) for r in results))
    row("check", ("ok" if r["check"]["ok"] and r["state"] == "success"
                  else f"{r['state']}; {'; '.join(r['check']['problems'] + r['failed_tasks'])}"
                  for r in results))
    row("load average before / after", (f"{r['load']['before'][0]:.2f} / "
                                       f"{r['load']['after'][0]:.2f}" for r in results))
    store = next((r["store"] for r in results if r["store"]), [])
    if store:
        lines += ["", "| store table | rows | MiB (table + indexes) | bytes per row |",
                  "|---|---:|---:|---:|"]
        for t in store:
            lines.append(f"| {t['table']} | {t['rows']:,} | {t['bytes'] / 2**20:,.1f} "
                         f"({t['table_bytes'] / 2**20:,.1f} + {t['index_bytes'] / 2**20:,.1f})"
                         f" | {t['bytes_per_row'] or '-'} |")
    return "\n".join(lines)


def _use_test_helpers(database: str) -> None:
    """tests/ on the import path, for the Airflow cluster the Celery integration test starts
    (tests/airflow_cluster.py) and its helpers, pointed at ``database``'s server; bench/ for
    the cached demo shop (bench_signals.py)."""
    os.environ["TEST_DATABASE_URL"] = database  # read by tests/_support.py when imported
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--workers", default="1,2", help="worker counts, one night each")
    ap.add_argument("--concurrency", type=int, default=2, help="tasks each worker runs at once")
    ap.add_argument("--pool", type=int, default=4, help="slots of the tend_send pool")
    ap.add_argument("--batch-size", type=int, default=5000, help="TEND_CLAIM_BATCH_SIZE")
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per DAG run")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    ap.add_argument("--report", type=Path, metavar="JSON",
                    help="print the report of an earlier run's --json file, and stop")
    args = ap.parse_args()
    # A stop (SIGTERM, as `kill` sends) unwinds like Ctrl-C: the cluster's processes are
    # stopped and its databases dropped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.report:
        saved = json.loads(args.report.read_text())
        for r in saved["results"]:
            if "raw" in r:  # recomputed, so a report follows the current stage definitions
                r.update(timed(r["raw"], r["messages"]))
        print(report(saved["results"], saved["customers"]))
        return 0
    try:
        counts = [int(w) for w in args.workers.split(",")]
    except ValueError:
        ap.error(f"--workers {args.workers!r}: give worker counts like 1,2")
    if any(n < 1 for n in counts):
        ap.error("--workers: each count must be at least 1")
    database = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE)
    _use_test_helpers(database)
    from bench_signals import cached_shop

    shop = cached_shop(args.customers)
    results = []
    for n in counts:
        with tempfile.TemporaryDirectory(prefix="tend-bench-scale-") as tmp:
            result = one_night(
                shop=shop, workers=n, concurrency=args.concurrency, pool=args.pool,
                batch_size=args.batch_size, latency_ms=args.latency_ms,
                workdir=Path(tmp), timeout=args.timeout,
                measure_store=n == counts[-1])
        result["latency_ms"] = args.latency_ms
        results.append(result)
        if args.json:  # after each night: a later one that fails keeps the earlier figures
            args.json.write_text(json.dumps({"customers": args.customers, "results": results},
                                            indent=1, default=str))
        _log(f"{n} worker(s): {result['messages']:,} messages in "
             f"{result['stages']['wall']:.0f}s ({result['rate']:,.0f} msg/s end to end); "
             f"check {'ok' if result['check']['ok'] else result['check']['problems']}")
    print(report(results, args.customers))
    bad = [r for r in results if not r["check"]["ok"] or r["state"] != "success"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
