"""Benchmark: arbitration + cap check for 1M candidates against a 10M-row ledger (PostgreSQL).

    make bench-arbitration            # BENCH_DATABASE_URL, default the local test database

The ledger is generated server-side (generate_series) once into the schema ``tend_bench`` — a
year of nights before the benchmark's night, stored night by night as a real ledger is — and
reused by later runs; each run claims inside a transaction that is rolled back, so the ledger
stays at 10M rows. Prints the time of ``tend.store.ledger.claim`` and its phases: the decision
(bulk load of the candidates' keys, the two rule queries, arbitration) and the write of the
winners' claims; then, as the programs stage does after the claim, the time to store the
winners' ~750-byte JSON contexts (compressed a batch at a time into ``context_batches``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import time

import numpy as np
import pandas as pd
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tend.programs.registry import Cap
from tend.store import ledger, migrate
from tend.store.db import connect

LEDGER_ROWS = int(os.environ.get("BENCH_LEDGER_ROWS", 10_000_000))
CANDIDATES = int(os.environ.get("BENCH_CANDIDATES", 1_000_000))
CUSTOMERS = 2_000_000
NIGHT = dt.date(2026, 11, 20)
SCHEMA = "tend_bench"
#: The generated history: a year of nights before NIGHT, written night by night as a real
#: ledger is (so a night's rows sit together on disk), ~27k messages a night.
HISTORY_RUN = "bench-history"
CAPS = (Cap(1, 3), Cap(2, 7), Cap(4, 30))
PROGRAMS = ["winback", "newsletter", "replenish", "checkup", "seasonal", "cross_sell"]


def main() -> int:
    base = os.environ.get("BENCH_DATABASE_URL",
                          os.environ.get("TEST_DATABASE_URL",
                                         "postgresql://postgres@127.0.0.1:5432/test"))
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={SCHEMA}"})
    url_s = url.render_as_string(hide_password=False)
    migrate(url_s)
    engine = connect(url_s)
    with engine.begin() as conn:
        have = conn.execute(text("SELECT count(*) FROM contact_ledger WHERE run_id = :r"),
                            {"r": HISTORY_RUN}).scalar_one()
    if have != LEDGER_ROWS:
        t = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE contact_ledger, context_batches"))
            conn.execute(text(f"""
                INSERT INTO contact_ledger (message_id, customer_id, program, occurrence, kind,
                    status, as_of, run_id, batch_id, claimed_at)
                SELECT md5(g::text)::uuid,
                       'C' || lpad((g % {CUSTOMERS})::text, 7, '0'),
                       (ARRAY['winback','newsletter','replenish','checkup','seasonal',
                              'cross_sell'])[1 + g % 6],
                       'bench:' || g,
                       CASE WHEN g % 6 = 3 THEN 'service' ELSE 'marketing' END,
                       'sent', DATE '{NIGHT}' - ((g - 1)::bigint * 365 / {LEDGER_ROWS})::int - 1,
                       '{HISTORY_RUN}', 0, now()
                FROM generate_series(1, {LEDGER_ROWS}) AS g"""))
        # A long-lived ledger is vacuumed by autovacuum; do it now rather than mid-benchmark.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE contact_ledger")
        print(f"generated a {LEDGER_ROWS:,}-row ledger in {time.perf_counter() - t:.0f}s")

    rng = np.random.default_rng(7)
    customers = rng.choice(CUSTOMERS, size=CANDIDATES, replace=True)
    # A replenishment reminder as tend.messages.contexts builds it (the demo night's contexts
    # average ~760 bytes across programs: winback ~710, replenish ~770, cross-sell ~970).
    ctx = json.dumps({
        "template": "replenish", "locale": "fr", "timezone": "America/Toronto",
        "customer": {"customer_id": "C0044786", "first_name": "Marie", "last_name": "Tremblay",
                     "email": "marie.tremblay.44786@example.org", "locale": "fr",
                     "orders_count": 7, "member_since": "2023-03-14"},
        "signal": {"name": "replenish", "reason": "bought 2 × Coffee beans 1 kg on 2026-10-02; "
                   "usually lasts them 24 days per unit", "due_date": "2026-11-19",
                   "sku": "COF-BEAN-1KG", "product_name": "Coffee beans 1 kg", "nth": None,
                   "tier": None, "years": None, "last_bought": "2026-10-02", "quantity": 2,
                   "interval_days": 48, "source": "customer"},
        "products": [{"sku": "COF-BEAN-1KG", "name": "Coffee beans 1 kg", "price": "24.90",
                      "currency": "CAD", "url": None, "image_url": None}],
    })
    cands = pd.DataFrame({
        "customer_id": [f"C{c:07d}" for c in customers],
        "program": [PROGRAMS[i % len(PROGRAMS)] for i in range(CANDIDATES)],
        "occurrence": [f"night:{i}" for i in range(CANDIDATES)],
        "kind": ["service" if i % len(PROGRAMS) == 3 else "marketing"
                 for i in range(CANDIDATES)],
        "priority": rng.integers(10, 100, CANDIDATES),
        "score": rng.random(CANDIDATES),
        "cooldown_days": [(14, 30, 90)[i % 3] for i in range(CANDIDATES)],
    })
    logging.basicConfig(level=logging.DEBUG, format="  %(message)s", stream=sys.stdout)
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)
    print(f"claim: {len(cands):,} candidates ({cands['customer_id'].nunique():,} customers) "
          f"against {LEDGER_ROWS:,} ledger rows, caps 1/3d 2/7d 4/30d, cooldowns")
    with engine.begin() as conn:  # start from a checkpoint: earlier runs' WAL is not ours
        conn.exec_driver_sql("CHECKPOINT")
    with engine.connect() as conn:
        trans = conn.begin()
        # As the programs stage does: the claim holds the ledger's lock and writes keys only;
        # the winners' contexts are stored after it (here one fixed context per winner, so the
        # benchmark measures storing contexts, not building them).
        t = time.perf_counter()
        outcome = ledger.claim(conn, cands, as_of=NIGHT, run_id="bench", caps=CAPS,
                               batch_size=5000)
        took = time.perf_counter() - t
        out = outcome.frame
        won = out.loc[out["fate"] == "claimed"].sort_values(["batch_id", "message_id"])
        t = time.perf_counter()
        ledger.write_contexts(conn, NIGHT, won["batch_id"].to_numpy(dtype="int64"),
                              won["message_id"].tolist(), [ctx] * len(won))
        t_ctx = time.perf_counter() - t
        trans.rollback()
    ph = outcome.timings
    print(out["fate"].str.split(":").str[0].value_counts().to_string())
    decision = ph["stage"] + ph["rules"] + ph["arbitrate"]
    print(f"decision (stage {ph['stage']:.2f}s + caps, cooldowns, repeats {ph['rules']:.2f}s + "
          f"arbitration {ph['arbitrate']:.2f}s): {decision:.2f}s")
    print(f"writing {len(won):,} claims: {ph['insert']:.2f}s")
    print(f"claim (ledger lock held) {took:.2f}s ({len(cands) / took:,.0f} candidates/s)")
    print(f"storing their contexts after the claim: {t_ctx:.2f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
