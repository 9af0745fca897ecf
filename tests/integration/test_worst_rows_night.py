"""A night whose shop holds the worst rows we could think of completes, quarantines them with
their reasons, and sends everyone else exactly the messages a clean shop's night sends."""

from __future__ import annotations

import datetime as dt
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest
from _support import add_worst_rows, copy_sqlite, one_mailbox
from sqlalchemy import select

from tend import messages
from tend.config import ShopSettings
from tend.delivery import OutboxBackend, engine
from tend.features import ingest
from tend.programs import plan
from tend.store import migrate
from tend.store.db import connect
from tend.store.tables import contact_ledger, quarantine

NIGHT = dt.date(2026, 11, 20)
SETTINGS = ShopSettings.from_env({})

pytestmark = pytest.mark.demo_shop(customers=400, seed=11, as_of=NIGHT)


def _night(shop_url: str, store_url: str, outbox: Path) -> dict[tuple[str, str], str]:
    """Ingest, plan and send one night; (customer, program) -> status of each message."""
    ingest.run_ingest(shop_url, store_url, NIGHT, "r1")
    planned = plan.plan_night(shop_url, store_url, NIGHT, "r1", settings=SETTINGS,
                              renderer=messages.default_renderer(SETTINGS), secret="s",
                              batch_size=100)
    backend = OutboxBackend(outbox)
    try:
        for b in planned.batches:
            engine.send_batch(store_url, NIGHT, b, backend=backend,
                              renderer=messages.default_renderer(SETTINGS), settings=SETTINGS)
    finally:
        backend.close()
    with connect(store_url).connect() as conn:
        rows = conn.execute(select(contact_ledger.c.customer_id, contact_ledger.c.program,
                                   contact_ledger.c.status)).all()
    return {(c, p): st for c, p, st in rows}


def test_a_night_with_the_worst_rows_sends_everyone_elses_messages(
        demo_shop: str, store_url: str, tmp_path: Path) -> None:
    clean_store = f"sqlite:///{tmp_path / 'clean.db'}"
    migrate(clean_store)
    clean = _night(copy_sqlite(demo_shop, tmp_path / "clean-shop.db"), clean_store,
                   tmp_path / "clean-outbox")
    worst_shop = copy_sqlite(demo_shop, tmp_path / "worst-shop.db")
    add_worst_rows(worst_shop, NIGHT)

    worst = _night(worst_shop, store_url, tmp_path / "outbox")

    others = {k: v for k, v in worst.items() if not k[0].startswith("EVIL")}
    assert others == clean
    hostile = {k: v for k, v in worst.items() if k[0].startswith("EVIL")}
    # the hostile customers with a usable order and address are mailed too, with safe headers
    assert set(hostile.values()) == {"sent"}
    assert {c for c, _ in hostile} == {"EVIL-1", "EVIL-2", "EVIL-4"}
    assert set(clean.values()) == {"sent"} and len(clean) > 20
    with connect(store_url).connect() as conn:
        reasons = {r for (r,) in conn.execute(select(quarantine.c.reason))}
    for expected in ("order line quantity above 10,000", "ordered_at before 1970-01-01",
                     "ordered_at after 2199-12-31", "NUL byte in order_id",
                     "order_id longer than 64 characters", "order for an unknown customer",
                     "order total above 1,000,000", "order line with an unknown sku"):
        assert any(r.startswith(expected) for r in reasons), expected
    # every To: of the night, the hostile customers' included, names one mailbox: its own
    for eml in (tmp_path / "outbox").glob("*.eml"):
        raw = eml.read_bytes()
        [mailbox] = BytesParser(policy=policy.default).parsebytes(raw)["To"].addresses
        [header] = BytesParser(policy=policy.compat32).parsebytes(raw).get_all("To")
        assert one_mailbox(str(header)) == mailbox.addr_spec
        assert "evil.example" not in mailbox.addr_spec
