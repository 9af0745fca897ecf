"""Sending throughput end to end: render + ledger + HTTP to a SendGrid stand-in (make bench-send).

What it measures, side by side in one run, against the same stand-in:

1. **bare aiohttp**: the reference for what the wire allows: one pooled ``aiohttp`` session, 64
   requests in flight, each posting a pre-built copy of the document Tend sends (no render, no
   ledger);
2. **official client**: the ``sendgrid`` package (``SendGridAPIClient.send(Mail)``), one message
   after another, as its README shows: a new HTTPS/HTTP connection per request, no timeout;
3. **render only**: ``send_batch``'s own message building (Jinja + unsubscribe tokens) for
   messages from the ledger, no HTTP;
4. **HTTP only**: Tend's SendGrid backend sending pre-rendered messages through its sliding
   window (``submit``, 64 requests in flight, as in production);
5. **end to end, clean**: ``send_batch`` over every batch (5,000 messages each), exactly what the
   Airflow ``send`` tasks do: ledger -> render -> mark 'sending' -> HTTP -> record; with each
   number of worker processes in ``--workers`` (the ``tend_send`` pool runs several);
6. **end to end, faults**: the same on ``--fault-messages`` messages while the stand-in injects
   ``--fault-rate`` faults among ``--faults`` (default 10 % of 429 with ``Retry-After``, 500,
   503, slow and dropped replies), each fault independent of the others (the issue's model: a
   429 refuses that one request); the faults goal is measured on this run;
7. **end to end, account limit** (for information, not a goal): the first mix again with the
   stand-in's ``hold_429``: after an injected 429 every request is refused until its reset, as
   when the account itself is over its limit; one run, with the most worker processes of
   ``--workers`` (``--no-account-limit`` skips it).

Then it prints the ratios the send pipeline is held to: the clean night against bare aiohttp
(goal >= 80 %), the faulty night against the clean one (goal >= 50 %). Every end-to-end run is
checked against the stand-in's log: no message accepted twice; a clean run ends all 'sent'; a
faulty run leaves 'unknown' exactly the messages whose last answer was ambiguous (500, dropped)
and nothing 'claimed' or 'sending'.

The stand-in (``tend fake-sendgrid --latency-ms 20``) runs in its own process and answers every
request after 20 ms. It shares this machine's cores with the senders, so its CPU is reported too.
The ledger is filled from a real planned demo night (demo shop -> ingest -> plan), whose claimed
rows are cloned, with distinct ids and addresses, up to ``--messages``.

    .venv/bin/python bench/send_bench.py [--messages 100000] [--workers 1,2,4] [--store URL]
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
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy import delete, insert, select, update

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
                                      sending_at=None, finished_at=None, lease_token=None))


def statuses_of(store_url: str, batch_ids: list[int]) -> dict[str, str]:
    from tend.store.db import connect
    from tend.store.tables import contact_ledger as L

    with connect(store_url).connect() as conn:
        return dict(conn.execute(select(L.c.message_id, L.c.status)
                                 .where(L.c.batch_id.in_(batch_ids))).all())


def batches(store_url: str) -> list[int]:
    from tend.store.db import connect
    from tend.store.tables import contact_ledger as L

    with connect(store_url).connect() as conn:
        return sorted(b for (b,) in conn.execute(select(L.c.batch_id).distinct()))


# -- the stand-in -----------------------------------------------------------------------------

class StandIn:
    """``tend fake-sendgrid`` in a process of its own (its output to ``log``, else dropped),
    ready once it answers ``/_stats``. bench_scale.py starts its stand-in with this too."""

    def __init__(self, latency_ms: float, *, api_key: str | None = None,
                 log: Path | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [str(TEND), "fake-sendgrid", "--port", str(self.port), "--latency-ms",
               str(latency_ms), *(["--api-key", api_key] if api_key else [])]
        with (log.open("ab") if log else open(os.devnull, "wb")) as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"the SendGrid stand-in exited (rc={self.proc.returncode})"
                                 + (f"; see {log}" if log else ""))
            try:
                self.stats()
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise SystemExit("the SendGrid stand-in did not answer"
                                     + (f"; see {log}" if log else "")) from None
                time.sleep(0.2)
        _log(f"SendGrid stand-in on {self.url}, answering after {latency_ms:g} ms")
        self.ps = psutil.Process(self.proc.pid)

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def get(self, path: str) -> Any:
        return httpx.get(f"{self.url}/{path}", timeout=120).json()

    def reset(self) -> None:
        httpx.post(f"{self.url}/_reset", timeout=30)

    def stats(self) -> dict[str, Any]:
        return self.get("_stats")

    def faults(self, plan: dict[str, Any]) -> None:
        httpx.post(f"{self.url}/_faults", json=plan, timeout=30).raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        return self.get("_requests")["requests"]

    def counts(self) -> dict[str, int]:
        """How many times the stand-in accepted each Tend message id."""
        return self.get("_counts")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


# -- the measurements -------------------------------------------------------------------------

def sample_message(store_url: str) -> Any:
    """One message of the night as send_batch renders it (the documents every client sends)."""
    from tend import messages
    from tend.config import ShopSettings
    from tend.delivery import engine as send_engine
    from tend.store import ledger
    from tend.store.db import connect

    settings = ShopSettings.from_env({})
    with connect(store_url).connect() as conn:
        [row] = ledger.next_claimed(conn, NIGHT, 0, 1)
    return send_engine._message(row, messages.default_renderer(settings), settings)


def bare_aiohttp(store_url: str, url: str, n: int, in_flight: int = 64) -> dict[str, float]:
    """The wire's own rate: pre-built bodies (Tend's document for each message), one pooled
    session, ``in_flight`` requests at once, each answered 202. Same event loop as Tend's."""
    import asyncio

    import aiohttp

    from tend.delivery.sendgrid import _encode, _new_loop, mail_send_payload

    doc = mail_send_payload(sample_message(store_url))
    bodies = []
    for i in range(n + in_flight):
        doc["personalizations"] = [{"to": [{"email": f"bare{i}@example.com"}]}]
        doc["custom_args"] = {**doc["custom_args"], "tend_message_id": f"bare{i}"}
        bodies.append(_encode(doc))

    async def run(batch: list[bytes]) -> None:
        it = iter(batch)

        async def worker() -> None:
            for body in it:
                async with session.post(f"{url}/v3/mail/send", data=body) as resp:
                    await resp.read()
                    assert resp.status == 202, resp.status

        await asyncio.gather(*(worker() for _ in range(in_flight)))

    async def start() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=in_flight),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})

    loop = _new_loop()
    session = loop.run_until_complete(start())
    loop.run_until_complete(run(bodies[:in_flight]))  # connections opened: not timed
    t0, c0 = time.perf_counter(), time.process_time()
    loop.run_until_complete(run(bodies[in_flight:]))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    loop.run_until_complete(session.close())
    loop.close()
    return {"messages": n, "seconds": wall, "rate": n / wall, "cpu_us": cpu / n * 1e6}


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
    import queue
    from dataclasses import replace

    from tend.delivery.sendgrid import SendGridBackend, SendGridSettings

    base = sample_message(store_url)
    messages = [replace(base, message_id=f"http{i}", to_email=f"h{i}@example.com",
                        custom_args={**base.custom_args, "tend_message_id": f"http{i}"})
                for i in range(n + 64)]
    backend = SendGridBackend(SendGridSettings(api_key=KEY, base_url=url))
    backend.send(messages[:64])  # connections opened: not timed
    window = backend.chunk_size * backend.chunks_in_flight
    done: queue.SimpleQueue[Any] = queue.SimpleQueue()
    t0, c0 = time.perf_counter(), time.process_time()
    # As send_batch does: slices handed over while the window has room, outcomes as they come.
    out = handed = 0
    while out < n:
        while handed < n and handed - out < window:
            backend.submit(messages[64 + handed:64 + handed + backend.chunk_size], done.put)
            handed = min(n, handed + backend.chunk_size)
        outcomes = done.get()
        assert all(o.status == "sent" for o in outcomes)
        out += len(outcomes)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    backend.close()
    return {"messages": n, "seconds": wall, "rate": n / wall, "cpu_us": cpu / n * 1e6}


def end_to_end(store_url: str, url: str, workers: int, stand_in: StandIn,
               todo: list[int]) -> dict[str, Any]:
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
    counts: Counter[str] = Counter()
    for r in results:
        counts.update(r["counts"])
    return {"workers": workers, "messages": total, "seconds": wall, "rate": total / wall,
            "worker_cpu_us": sum(r["cpu"] for r in results) / total * 1e6,
            "stand_in_cpu_us": (stand_in.cpu() - c_before) / total * 1e6,
            "timings": dict(timings), "counts": dict(counts)}


AMBIGUOUS = {"500", "drop"}  # answers after which SendGrid may have the message: 'unknown'


def check_run(store_url: str, stand_in: StandIn, todo: list[int], faulty: bool
              ) -> dict[str, Any]:
    """The ledger against the stand-in's log: nothing twice, every message where it belongs."""
    stats, ledger_rows = stand_in.stats(), statuses_of(store_url, todo)
    assert stats["duplicates"] == 0, stats
    final = Counter(ledger_rows.values())
    if not faulty:
        assert final == {"sent": len(ledger_rows)}, final
        assert stats["distinct_messages"] == len(ledger_rows), stats
        return {"unknown": 0, "outcomes": stats["outcomes"], "while_limited": 0}
    last: dict[str, str] = {}
    for r in stand_in.requests():
        last[r["tend_message_id"]] = r["outcome"]
    assert set(final) <= {"sent", "unknown"}, final  # nothing claimed or sending is left
    unknown = {m for m, s in ledger_rows.items() if s == "unknown"}
    assert unknown == {m for m, o in last.items() if o in AMBIGUOUS}, "unknown != ambiguous"
    return {"unknown": len(unknown), "outcomes": stats["outcomes"],
            "while_limited": stats["while_limited"]}


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
    p.add_argument("--workers", default="1,2,4",
                   help="end-to-end runs with these process counts (4: the tend_send pool)")
    p.add_argument("--official", type=int, default=300, help="messages for the official client")
    p.add_argument("--render", type=int, default=3000, help="messages for render only")
    p.add_argument("--http", type=int, default=20_000, help="messages for HTTP only")
    p.add_argument("--bare", type=int, default=20_000, help="messages for bare aiohttp")
    p.add_argument("--fault-messages", type=int, default=20_000,
                   help="messages for the runs with faults (whole batches of 5,000)")
    p.add_argument("--fault-rate", type=float, default=0.1)
    p.add_argument("--faults", default="429,500,503,slow,drop",
                   help="fault kinds of the stand-in (see tend.dev.fake_sendgrid); several "
                        "mixes separated by ';' are measured one after the other, the goal "
                        "applies to the first")
    p.add_argument("--no-account-limit", action="store_true",
                   help="skip the run of the first mix with hold_429 (an account limit)")
    p.add_argument("--reset-ms", type=int, default=1000, help="429: Retry-After, in ms")
    p.add_argument("--slow-ms", type=int, default=5000, help="slow: how late the 202 comes")
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
    every = batches(store)
    faulty_batches = every[:max(1, -(-args.fault_messages // BATCH))]
    mixes = [tuple(k.strip() for k in mix.split(",") if k.strip())
             for mix in args.faults.split(";") if mix.strip()]
    kinds = mixes[0]
    # (kinds, hold_429): the independent mixes, then the first one as an account limit.
    plans = [(mix, False) for mix in mixes] + ([] if args.no_account_limit else [(kinds, True)])
    workers = [int(x) for x in args.workers.split(",")]
    try:
        bare = bare_aiohttp(store, stand_in.url, args.bare)
        _log(f"bare aiohttp: {bare['rate']:,.0f} msg/s")
        official = official_client(stand_in.url, args.official)
        _log(f"official sendgrid client: {official['rate']:,.0f} msg/s")
        rendered = render_only(store, args.render)
        _log(f"render only: {rendered['rate']:,.0f} msg/s")
        http = http_only(store, stand_in.url, args.http)
        _log(f"HTTP only: {http['rate']:,.0f} msg/s")
        clean: dict[int, dict[str, Any]] = {}
        faulty: dict[tuple[tuple[str, ...], bool], dict[int, dict[str, Any]]] = {
            plan: {} for plan in plans}
        for w in workers:
            for plan in [None, *plans]:
                if plan is not None and plan[1] and w != max(workers):
                    continue  # the account limit: one row, for information
                todo = every if plan is None else faulty_batches
                reset_store(store)
                stand_in.reset()
                if plan is not None:
                    stand_in.faults({"rate": args.fault_rate, "kinds": list(plan[0]), "seed": 7,
                                     "reset_ms": args.reset_ms, "slow_ms": args.slow_ms,
                                     "latency_ms": args.latency_ms, "hold_429": plan[1]})
                run = end_to_end(store, stand_in.url, w, stand_in, todo)
                run.update(check_run(store, stand_in, todo, faulty=plan is not None))
                (clean if plan is None else faulty[plan])[w] = run
                _log(f"end to end, {plan or 'clean'}, {w} worker(s): {run['rate']:,.0f} msg/s "
                     f"({run['counts']})")
    finally:
        stand_in.close()

    print(f"\n## make bench-send — {dt.date.today()} on {platform.node()} "
          f"({os.cpu_count()} cores, Python {platform.python_version()}), stand-in answering "
          f"after {args.latency_ms:g} ms; load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after (other work on the machine slows every figure)\n")
    print(f"Faults: {args.fault_rate:.0%} of requests, drawn evenly among the kinds of each mix "
          f"(429: Retry-After {args.reset_ms / 1000:g} s for that request, independent of the "
          f"others; account limit: every request refused until then; "
          f"slow: the 202 after {args.slow_ms / 1000:g} s; 500 and drop: accepted, the sender "
          f"cannot know).\n")
    print("| what | messages | msg/s | CPU µs/msg (sender) |")
    print("| --- | ---: | ---: | ---: |")
    for label, r in (("bare aiohttp, 64 requests in flight (reference)", bare),
                     ("official `sendgrid` client, sequential", official),
                     ("Tend render only (1 process)", rendered),
                     ("Tend SendGrid backend, HTTP only (window of 512, 64 on the wire)", http)):
        print(f"| {label} | {r['messages']:,} | {r['rate']:,.0f} | {r['cpu_us']:,.0f} |")
    def name(plan: tuple[tuple[str, ...], bool]) -> str:
        return ",".join(plan[0]) + (", account limit (hold_429)" if plan[1] else "")

    for label, runs in [("clean", clean), *(
            (f"{args.fault_rate:.0%} faults ({name(plan)})", faulty[plan]) for plan in plans)]:
        for w, r in runs.items():
            extra = (f"; unknown {r['unknown']:,}, 429 while limited {r['while_limited']:,}"
                     if runs is not clean else "")
            print(f"| **end to end, {label}**, {w} worker process(es){extra} | "
                  f"{r['messages']:,} | **{r['rate']:,.0f}** | {r['worker_cpu_us']:,.0f} "
                  f"(+ stand-in {r['stand_in_cpu_us']:,.0f}) |")
    print()
    def verdict(ratio: float, goal: float) -> str:
        return f"{ratio:.0%} (goal >= {goal:.0%}: {'met' if ratio >= goal else 'NOT met'})"

    for w in workers:
        c, f = clean[w], faulty[(kinds, False)][w]
        others = "; ".join(f"{name(plan)}: {faulty[plan][w]['rate'] / c['rate']:.0%}"
                           for plan in plans[1:] if w in faulty[plan])
        print(f"- {w} worker(s): clean night / bare aiohttp = "
              f"{verdict(c['rate'] / bare['rate'], 0.8)}; with faults / clean = "
              f"{verdict(f['rate'] / c['rate'], 0.5)}"
              f"{'; for information, ' + others if others else ''}; duplicates 0; unknown "
              f"{f['unknown']:,} = exactly the ambiguous answers (stand-in outcomes "
              f"{f['outcomes']})")
    for label, runs in [("clean", clean), *((name(plan), faulty[plan]) for plan in plans)]:
        for w, r in runs.items():
            t = r["timings"]
            print(f"- {label}, {w} worker(s), {r['seconds']:.0f} s: main threads spent "
                  f"ledger {t['ledger']:.0f} s, waiting {t['wait']:.0f} s; render thread "
                  f"{t['render']:.0f} s; HTTP window busy {t['backend']:.0f} s")


if __name__ == "__main__":
    main()
