"""Benchmark: one ``tend serve`` process taking SendGrid's signed Event Webhook, and one-click
unsubscribes under 200 concurrent clients.

    make bench-events                       # SQLite and PostgreSQL (BENCH_DATABASE_URL)
    .venv/bin/python bench/bench_events.py --events 50000 --backends sqlite

For each store backend: a fresh store with a ledger of ``--messages`` sent messages, one
``tend serve`` process started as a user would (``tend serve --store URL --port P``), then
``--events`` events posted as signed batches of ``--batch`` (1,000, as SendGrid sends them;
``--posters`` requests in flight, as SendGrid delivers in parallel) — a realistic mix of
processed/delivered/open/click with some bounces, spam reports and unsubscribes. The figure is
events stored per second of wall time, checked against the store afterwards (every event
stored, nothing left in the spool). Then ``--clients`` concurrent clients each post one-click
unsubscribes (RFC 8058 ``List-Unsubscribe=One-Click``) with real tokens from
``tend.messages.tokens``; the figure is the latency percentiles seen by the clients. The
unsubscribe part is skipped, and says so, when the build has no unsubscribe route.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from tend.messages.tokens import make_token
from tend.store import migrate
from tend.store.db import connect
from tend.store.tables import contact_ledger, message_events

SCHEMA = "tend_bench_events"
SECRET = "bench-events-secret"
NIGHT = dt.date(2026, 11, 20)
MIX = [("processed", 40), ("delivered", 40), ("open", 10), ("click", 5), ("deferred", 3),
       ("bounce", 1), ("spamreport", 0.5), ("unsubscribe", 0.5)]


def signer() -> tuple[Any, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, "".join(pem.decode().strip().splitlines()[1:-1])


def sign(key: Any, body: bytes) -> dict[str, str]:
    import base64

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    stamp = str(int(time.time()))
    sig = base64.b64encode(key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
    return {"Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": sig,
            "X-Twilio-Email-Event-Webhook-Timestamp": stamp}


def store_for(backend: str, folder: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{folder / 'store.db'}"
    base = os.environ.get("BENCH_DATABASE_URL", os.environ.get(
        "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {SCHEMA}"))
    admin.dispose()
    url = make_url(base).update_query_dict({"options": f"-csearch_path={SCHEMA}"})
    return url.render_as_string(hide_password=False)


def seed(url: str, messages: int) -> list[tuple[str, str]]:
    """A night of sent messages: (message_id, customer_id)."""
    migrate(url)
    rng = random.Random(7)
    rows = [(f"{rng.getrandbits(128):032x}", f"C{i:07d}") for i in range(messages)]
    stamp = dt.datetime.now(dt.UTC)
    with connect(url).begin() as conn:
        for i in range(0, len(rows), 10_000):
            conn.execute(contact_ledger.insert(), [{
                "message_id": m, "customer_id": c, "program": "winback", "occurrence": "o",
                "kind": "marketing", "status": "sent", "as_of": NIGHT, "run_id": "bench",
                "batch_id": 0, "claimed_at": stamp} for m, c in rows[i : i + 10_000]])
    connect(url).dispose()
    return rows


def bodies(rows: list[tuple[str, str]], events: int, batch: int) -> list[bytes]:
    rng = random.Random(11)
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    out = []
    n = 0
    while n < events:
        doc = []
        for _ in range(min(batch, events - n)):
            mid, _cid = rows[rng.randrange(len(rows))]
            kind = rng.choices(kinds, weights)[0]
            e: dict[str, Any] = {"email": f"c{n}@example.com", "timestamp": 1_790_000_000 + n,
                                 "event": kind, "sg_event_id": f"bench-{n:09d}",
                                 "sg_message_id": f"sg{n}.filter0001", "tend_message_id": mid,
                                 "program": "winback", "kind": "marketing",
                                 "category": ["winback", "marketing"],
                                 "smtp-id": f"<{n}@ismtpd>"}
            if kind == "bounce":
                e.update(type="bounce", reason="550 5.1.1 user unknown", status="5.1.1")
            elif kind == "click":
                e["url"] = "https://shop.example/products/1?utm_source=tend"
            elif kind == "deferred":
                e.update(response="450 try later", attempt="1")
            doc.append(e)
            n += 1
        out.append(json.dumps(doc).encode())
    return out


def start_serve(url: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    tend = Path(sys.executable).with_name("tend")
    proc = subprocess.Popen([str(tend), "serve", "--store", url, "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError(f"tend serve exited: {proc.stderr.read().decode()[-2000:]}")
    raise RuntimeError("tend serve did not start within 60 s")


async def post_events(base: str, key: Any, docs: list[bytes], posters: int) -> float:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for d in docs:
        queue.put_nowait(d)

    async def poster(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            r = await client.post("/sendgrid/events", content=body, headers=sign(key, body))
            if r.status_code != 200:
                raise RuntimeError(f"webhook answered {r.status_code}: {r.text[:200]}")

    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(poster(client) for _ in range(posters)))
        return time.perf_counter() - t0


#: How the clients click (``--unsubscribe-modes``): ``paced``, each client once every
#: ``--pace`` seconds, starting at random offsets (200 people clicking, the server keeping up);
#: ``burst``, rounds of one request per client sent at once, each round after the last is
#: answered (a crowd clicking together); ``flood``, each client back to back (a sustained
#: overload: latency is then mostly queueing).
MODES = ("paced", "burst", "flood")


async def unsubscribe(base: str, customers: list[str], clients: int, *, mode: str,
                      pace: float) -> list[float] | None:
    """One-click unsubscribes from ``clients`` connections; the latency of every request as
    its client saw it (None: the build has no unsubscribe route). aiohttp: a light client, so
    that the figures are the server's rather than the client's event loop (both share this
    machine)."""
    import aiohttp

    paths = [f"/unsubscribe/{make_token(SECRET, c)}" for c in customers]
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    body = b"List-Unsubscribe=One-Click"
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=120)
    rng = random.Random(3)
    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as session:
        async with session.post(paths[0], data=body, headers=form) as r:
            if r.status in (404, 405):
                return None
        per = (len(paths) - 1) // clients

        async def client_task(mine: list[str], paced: bool = False) -> None:
            due = time.perf_counter() + (rng.random() * pace if paced else 0.0)
            for path in mine:
                if paced:
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                    due += pace
                t0 = time.perf_counter()
                async with session.post(path, data=body, headers=form) as r:
                    await r.read()
                    status = r.status
                latencies.append(time.perf_counter() - t0)
                if status >= 300:
                    raise RuntimeError(f"one-click unsubscribe answered {status}")

        shares = [paths[1 + i * per : 1 + (i + 1) * per] for i in range(clients)]
        if mode == "burst":
            for start in range(1, len(paths) - clients + 1, clients):
                await asyncio.gather(*(client_task([p])
                                       for p in paths[start : start + clients]))
        else:
            await asyncio.gather(*(client_task(mine, paced=mode == "paced")
                                   for mine in shares))
    return latencies


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=1000)[int(p * 10) - 1] if len(values) > 1 else 0.0


def ingest_figures(backend: str, base: str, url: str, key: Any, docs: list[bytes],
                   args: argparse.Namespace) -> None:
    seconds = asyncio.run(post_events(base, key, docs, args.posters))
    health = httpx.get(f"{base}/healthz").json()
    with connect(url).connect() as conn:
        stored = conn.execute(select(func.count()).select_from(message_events)).scalar()
    if stored != args.events or health["spooled"]:
        raise RuntimeError(f"{stored} events stored of {args.events}, "
                           f"{health['spooled']} spooled")
    print(f"{backend}: {args.events:,} events in {len(docs)} signed batches of "
          f"{args.batch:,}, {args.posters} in flight: {seconds:.2f} s, "
          f"{args.events / seconds:,.0f} events/s")


def run(backend: str, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        folder = Path(tmp)
        url = store_for(backend, folder)
        rows = seed(url, args.messages)
        key, public = signer()
        docs = bodies(rows, args.events, args.batch)
        port = args.port
        env = {**os.environ, "TEND_SENDGRID_WEBHOOK_KEY": public, "TEND_SECRET_KEY": SECRET,
               "TEND_SPOOL_DIR": str(folder / "spool"),
               "TEND_BASE_URL": f"http://localhost:{port}"}
        env.pop("AIRFLOW_CONN_SENDGRID_DEFAULT", None)
        proc = start_serve(url, port, env)
        base = f"http://127.0.0.1:{port}"
        try:
            if args.events:
                ingest_figures(backend, base, url, key, docs, args)
            modes = [m.strip() for m in args.unsubscribe_modes.split(",") if m.strip()]
            share = args.unsubscribes // max(len(modes), 1)
            for i, mode in enumerate(modes):
                customers = [c for _, c in rows[i * (share + 1) : (i + 1) * (share + 1)]]
                t0 = time.perf_counter()
                lat = asyncio.run(unsubscribe(base, customers, args.clients, mode=mode,
                                              pace=args.pace))
                seconds = time.perf_counter() - t0
                if lat is None:
                    print(f"{backend}: one-click unsubscribe skipped: this build has no "
                          "/unsubscribe route")
                    break
                ms = [x * 1000 for x in lat]
                print(f"{backend}: {len(ms):,} one-click unsubscribes, {args.clients} clients, "
                      f"{mode}: p50 {pct(ms, 50):.1f} ms, p99 {pct(ms, 99):.1f} ms, "
                      f"max {max(ms):.1f} ms ({len(ms) / seconds:,.0f} requests/s)")
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            connect(url).dispose()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--events", type=int, default=50_000, help="0: the unsubscribes only")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--posters", type=int, default=4)
    p.add_argument("--messages", type=int, default=20_000, help="sent messages in the ledger")
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--unsubscribes", type=int, default=6000,
                   help="one-click unsubscribes in all, shared between the modes")
    p.add_argument("--unsubscribe-modes", default=",".join(MODES),
                   help=f"how the clients click, any of {', '.join(MODES)} (see MODES)")
    p.add_argument("--pace", type=float, default=1.0,
                   help="paced mode: seconds between one client's clicks")
    p.add_argument("--port", type=int, default=8097)
    args = p.parse_args()
    for backend in args.backends.split(","):
        run(backend.strip(), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
