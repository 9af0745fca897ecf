"""Sending throughput end to end: render + ledger + HTTP to a SendGrid stand-in (make bench-send).

What it measures, in one run on this machine:

1. **official client**: the ``sendgrid`` package (``SendGridAPIClient.send(Mail)``), one message
   after another, as its README shows: a new HTTPS/HTTP connection per request, no timeout;
2. **render only**: ``send_batch``'s own message building (Jinja + unsubscribe tokens) for
   messages from the ledger, no HTTP;
3. **HTTP only**: Tend's SendGrid backend sending pre-rendered messages (chunks of 250, two
   handed over at once, 64 requests in flight, as in production);
4. **end to end**: ``send_batch`` over every batch (5,000 messages each), exactly what the
   Airflow ``send`` tasks do: ledger claim -> render -> mark 'sending' -> HTTP -> record; with 1
   worker process, then with N worker processes at once (the ``tend_send`` pool).

The stand-in (``tend fake-sendgrid --latency-ms 20``) runs in its own process and answers every
request after 20 ms, so the latency SendGrid adds is there. It shares this machine's cores with
the senders, so its CPU is reported too. Every end-to-end run is checked: every message sent,
accepted once, none twice.

The ledger is filled from a real planned demo night (demo shop -> ingest -> plan), whose claimed
rows are cloned, with distinct ids and addresses, up to ``--messages``.

    .venv/bin/python bench/send_bench.py [--messages 100000] [--workers 1,2] [--store URL]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy import delete, func, insert, select, update

ROOT = Path(__file__).resolve().parents[1]
NIGHT = dt.date(2026, 11, 20)
KEY = "SG.bench"
BATCH = 5000
TEND = Path(sys.executable).parent / "tend"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the ledger -------------------------------------------------------------------------------

def prepare_store(store_url: str, messages: int, workdir: Path) -> None:
    """A planned demo night, its claimed rows cloned up to ``messages`` in batches of 5,000."""
    from tend.config import ShopSettings
    from tend.dev.demo import generate_demo_shop
    from tend.features import ingest
    from tend.messages import default_renderer
    from tend.programs import plan
    from tend.store import ledger, migrate
    from tend.store.db import connect
    from tend.store.tables import contact_ledger as L
    from tend.store.tables import context_batches as CB

    shop = f"sqlite:///{workdir / 'shop.db'}"
    generate_demo_shop(shop, customers=3000, seed=7, as_of=NIGHT)
    migrate(store_url)
    settings = ShopSettings.from_env({})
    ingest.run_ingest(shop, store_url, NIGHT, "bench")
    plan.plan_night(shop, store_url, NIGHT, "bench", settings=settings,
                    renderer=default_renderer(settings),
                    secret="bench", batch_size=10**9)
    engine = connect(store_url)
    with engine.begin() as conn:
        seeds = [dict(r) for r in conn.execute(select(L)).mappings()]
        seed_ctx = ledger.contexts_of(conn, [r["message_id"] for r in seeds])
        conn.execute(delete(L))
        conn.execute(delete(CB))
        rows, ids, ctxs = [], [], []
        for i in range(messages):
            seed = seeds[i % len(seeds)]
            ctx = json.loads(seed_ctx[seed["message_id"]])
            ctx["customer"]["email"] = f"customer{i}@example.com"
            ctx["customer"]["customer_id"] = f"B{i:07d}"
            mid = f"{i:032x}"  # a message id is 32 hex digits (a uuid on PostgreSQL)
            rows.append({**seed, "message_id": mid, "customer_id": f"B{i:07d}",
                         "occurrence": f"bench:{i}", "batch_id": i // BATCH, "status": "claimed",
                         "provider_id": None, "error": None,
                         "sending_at": None, "finished_at": None})
            ids.append(mid)
            ctxs.append(json.dumps(ctx))
            if len(rows) == BATCH or i == messages - 1:
                conn.execute(insert(L), rows)
                ledger.write_contexts(conn, seed["as_of"], [i // BATCH] * len(rows), ids, ctxs)
                rows, ids, ctxs = [], [], []
    _log(f"ledger: {messages:,} claimed messages in {(messages + BATCH - 1) // BATCH} batches "
         f"(cloned from {len(seeds)} planned demo messages)")


def reset_store(store_url: str) -> None:
    from tend.store.db import connect
    from tend.store.tables import contact_ledger as L

    with connect(store_url).begin() as conn:
        conn.execute(update(L).values(status="claimed", provider_id=None, error=None,
                                      sending_at=None, finished_at=None))


def statuses(store_url: str) -> Counter[str]:
    from tend.store.db import connect
    from tend.store.tables import contact_ledger as L

    with connect(store_url).connect() as conn:
        return Counter({s: n for s, n in conn.execute(
            select(L.c.status, func.count()).group_by(L.c.status))})


def batches(store_url: str) -> list[int]:
    from tend.store.db import connect
    from tend.store.tables import contact_ledger as L

    with connect(store_url).connect() as conn:
        return sorted(b for (b,) in conn.execute(select(L.c.batch_id).distinct()))


# -- the stand-in -----------------------------------------------------------------------------

class StandIn:
    def __init__(self, latency_ms: float) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(TEND), "fake-sendgrid", "--port", str(self.port), "--latency-ms",
             str(latency_ms)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        _log(self.proc.stdout.readline().strip())
        self.ps = psutil.Process(self.proc.pid)

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def reset(self) -> None:
        httpx.post(f"{self.url}/_reset", timeout=30)

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/_stats", timeout=60).json()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


# -- the measurements -------------------------------------------------------------------------

def official_client(url: str, n: int) -> dict[str, float]:
    from sendgrid import SendGridAPIClient
    from sendgrid.helpers.mail import Content, CustomArg, Mail

    client = SendGridAPIClient(api_key=KEY, host=url)
    mail_html = "<p>" + "Bonjour Marie, " * 400 + "</p>"
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        mail = Mail(from_email="bonjour@maisonverte.example", to_emails=f"o{i}@example.com",
                    subject="Marie, un rabais de 10 $ vous attend")
        mail.content = [Content("text/plain", "Bonjour Marie\n" * 40),
                        Content("text/html", mail_html)]
        mail.custom_arg = CustomArg("tend_message_id", f"official{i}")
        response = client.send(mail)
        assert response.status_code == 202
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"messages": n, "seconds": wall, "rate": n / wall, "cpu_us": cpu / n * 1e6}


def render_only(store_url: str, n: int) -> dict[str, float]:
    from tend import messages
    from tend.config import ShopSettings
    from tend.delivery import engine as send_engine
    from tend.programs.caps import SendWindow
    from tend.store import ledger
    from tend.store.db import connect

    settings = ShopSettings.from_env({})
    renderer = messages.default_renderer(settings)
    with connect(store_url).connect() as conn:
        rows = ledger.next_claimed(conn, NIGHT, 0, n)
    window, now = SendWindow(), dt.datetime.now(dt.UTC)
    send_engine._message(rows[0], renderer, settings, window, now)  # templates loaded: not timed
    t0, c0 = time.perf_counter(), time.process_time()
    for r in rows:
        send_engine._message(r, renderer, settings, window, now)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"messages": len(rows), "seconds": wall, "rate": len(rows) / wall,
            "cpu_us": cpu / len(rows) * 1e6}


def http_only(store_url: str, url: str, n: int) -> dict[str, float]:
    from dataclasses import replace

    from tend import messages
    from tend.config import ShopSettings
    from tend.delivery import engine as send_engine
    from tend.delivery.sendgrid import SendGridBackend, SendGridSettings
    from tend.store import ledger
    from tend.store.db import connect

    settings = ShopSettings.from_env({})
    with connect(store_url).connect() as conn:
        [row] = ledger.next_claimed(conn, NIGHT, 0, 1)
    base = send_engine._message(row, messages.default_renderer(settings), settings)
    messages = [replace(base, message_id=f"http{i}", to_email=f"h{i}@example.com",
                        custom_args={**base.custom_args, "tend_message_id": f"http{i}"})
                for i in range(n)]
    backend = SendGridBackend(SendGridSettings(api_key=KEY, base_url=url))
    backend.send(messages[:64])  # connections opened: not timed
    size = backend.chunk_size
    chunks = [messages[i:i + size] for i in range(0, n, size)]
    t0, c0 = time.perf_counter(), time.process_time()
    # As send_batch does: chunks_in_flight chunks handed over at once.
    with ThreadPoolExecutor(max_workers=backend.chunks_in_flight) as pool:
        for results in pool.map(backend.send, chunks):
            assert all(r.status == "sent" for r in results)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    backend.close()
    return {"messages": n, "seconds": wall, "rate": n / wall, "cpu_us": cpu / n * 1e6}


def end_to_end(store_url: str, url: str, workers: int, stand_in: StandIn) -> dict[str, Any]:
    todo = batches(store_url)
    shares = [todo[i::workers] for i in range(workers)]
    env = {**os.environ, "TEND_SENDGRID_API_KEY": KEY, "TEND_SENDGRID_URL": url}
    out_dir = Path(tempfile.mkdtemp(prefix="tend-bench-"))
    c_before = stand_in.cpu()
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", "--store", store_url,
                               "--batches", ",".join(map(str, share)),
                               "--out", str(out_dir / f"w{k}.json")], env=env)
             for k, share in enumerate(shares) if share]
    for p in procs:
        assert p.wait() == 0, "a bench worker failed"
    wall = time.perf_counter() - t0
    results = [json.loads(p.read_text()) for p in sorted(out_dir.glob("w*.json"))]
    total = sum(r["messages"] for r in results)
    timings: Counter[str] = Counter()
    for r in results:
        timings.update(r["timings"])
    return {"workers": workers, "messages": total, "seconds": wall, "rate": total / wall,
            "worker_cpu_us": sum(r["cpu"] for r in results) / total * 1e6,
            "stand_in_cpu_us": (stand_in.cpu() - c_before) / total * 1e6,
            "timings": dict(timings)}


def worker_main(store_url: str, batch_ids: list[int], out: Path) -> None:
    """One sending process: send_batch over its batches, as an Airflow send task would."""
    from tend import messages
    from tend.config import ShopSettings
    from tend.delivery import engine as send_engine
    from tend.delivery.sendgrid import SendGridBackend, SendGridSettings

    settings = ShopSettings.from_env({})
    renderer = messages.default_renderer(settings)
    backend = SendGridBackend(SendGridSettings.from_env())
    counts: Counter[str] = Counter()
    timings: Counter[str] = Counter()
    c0 = time.process_time()
    for b in batch_ids:
        result = send_engine.send_batch(store_url, NIGHT, b, backend=backend, renderer=renderer,
                                    settings=settings)
        counts.update(result.counts)
        timings.update(result.timings)
    backend.close()
    cpu = time.process_time() - c0
    out.write_text(json.dumps({"messages": sum(counts.values()), "counts": counts, "cpu": cpu,
                               "timings": timings}))


# -- the report -------------------------------------------------------------------------------

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--workers", default="1,2", help="end-to-end runs with these process counts")
    p.add_argument("--official", type=int, default=300, help="messages for the official client")
    p.add_argument("--render", type=int, default=3000, help="messages for render only")
    p.add_argument("--http", type=int, default=20_000, help="messages for HTTP only")
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--store", help="contact store URL (default: a fresh SQLite file)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batches", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker_main(args.store, [int(b) for b in args.batches.split(",")], args.out)
        return

    load_before = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="tend-bench-send-"))
    store = args.store or f"sqlite:///{workdir / 'store.db'}"
    _log(f"preparing {args.messages:,} messages in {store}")
    prepare_store(store, args.messages, workdir)
    stand_in = StandIn(args.latency_ms)
    rows: list[tuple[str, ...]] = []
    try:
        official = official_client(stand_in.url, args.official)
        _log(f"official sendgrid client: {official['rate']:,.0f} msg/s")
        rendered = render_only(store, args.render)
        _log(f"render only: {rendered['rate']:,.0f} msg/s")
        http = http_only(store, stand_in.url, args.http)
        _log(f"HTTP only: {http['rate']:,.0f} msg/s")
        e2e = []
        for w in [int(x) for x in args.workers.split(",")]:
            reset_store(store)
            stand_in.reset()
            run = end_to_end(store, stand_in.url, w, stand_in)
            stats, final = stand_in.stats(), statuses(store)
            assert final == {"sent": args.messages}, final
            assert stats["distinct_messages"] == args.messages and stats["duplicates"] == 0
            e2e.append(run)
            _log(f"end to end, {w} worker(s): {run['rate']:,.0f} msg/s")
    finally:
        stand_in.close()

    print(f"\n## make bench-send — {dt.date.today()} on {platform.node()} "
          f"({os.cpu_count()} cores, Python {platform.python_version()}), stand-in answering "
          f"after {args.latency_ms:g} ms; load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after (other work on the machine slows every figure)\n")
    print("| what | messages | msg/s | CPU µs/msg (sender) |")
    print("| --- | ---: | ---: | ---: |")
    rows = [
        ("official `sendgrid` client, sequential", official),
        ("Tend render only (1 process)", rendered),
        ("Tend SendGrid backend, HTTP only (64 requests in flight)", http),
    ]
    for label, r in rows:
        print(f"| {label} | {r['messages']:,} | {r['rate']:,.0f} | {r['cpu_us']:,.0f} |")
    for r in e2e:
        t = r["timings"]
        print(f"| **end to end** render + ledger + HTTP, {r['workers']} worker process(es) | "
              f"{r['messages']:,} | **{r['rate']:,.0f}** | {r['worker_cpu_us']:,.0f} "
              f"(+ stand-in {r['stand_in_cpu_us']:,.0f}) |")
    print()
    for r in e2e:
        t = r["timings"]
        print(f"- {r['workers']} worker(s), {r['seconds']:.0f} s: main threads spent render "
              f"{t['render']:.0f} s, ledger {t['ledger']:.0f} s, waiting for HTTP "
              f"{t['wait']:.0f} s; the HTTP side was busy {t['backend']:.0f} s "
              "(it overlaps rendering)")


if __name__ == "__main__":
    main()
