"""A campaign through the programs' path: dry run, real run, the same name again, caps with the
nightly run, max_recipients, samples and proofs (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import email
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from _support import mark_claimed_sent
from sqlalchemy import select

from tend import messages
from tend.campaigns.run import finish, plan_campaign, send_proofs
from tend.campaigns.spec import parse_spec
from tend.config import ShopSettings
from tend.delivery.engine import send_batch
from tend.delivery.outbox import OutboxBackend
from tend.errors import DataError
from tend.features import ingest
from tend.programs import plan
from tend.programs.caps import SendWindow
from tend.programs.registry import load_registry
from tend.store import campaigns as stored
from tend.store import ledger
from tend.store.db import connect
from tend.store.tables import contact_ledger, decision_log

DAY = dt.date(2026, 11, 20)
SETTINGS = ShopSettings.from_env({})

pytestmark = pytest.mark.demo_shop(customers=300, seed=3, as_of=DAY)


def spec(**over: Any):  # type: ignore[no-untyped-def]
    params = {"name": "winter-news", "audience": "all", "template": "newsletter",
              "subject_en": "Hello {{ customer.first_name }}", "subject_fr": "Bonjour",
              "headline_en": "Winter", "headline_fr": "Hiver", "text_en": "Cosy.",
              "text_fr": "Douillet.", "dry_run": False} | over
    return parse_spec(params, templates=["newsletter"], locales=["en", "fr"],
                      quiet=SendWindow())


def run(shop_url: str, store_url: str, s: Any, day: dt.date = DAY, tmp: Path | None = None,
        run_id: str = "c1"):  # type: ignore[no-untyped-def]
    return plan_campaign(s, shop_url=shop_url, store_url=store_url, as_of=day, run_id=run_id,
                         settings=SETTINGS, renderer=messages.default_renderer(SETTINGS),
                         secret="s", registry=load_registry(), samples_dir=tmp)


def ledger_rows(store_url: str) -> pd.DataFrame:
    with connect(store_url).connect() as conn:
        return pd.DataFrame(conn.execute(select(contact_ledger)).mappings().all(),
                            columns=[c.name for c in contact_ledger.columns])


@pytest.fixture
def ingested(shop_url: str, store_url: str) -> tuple[str, str]:
    ingest.run_ingest(shop_url, store_url, DAY, "i")
    return shop_url, store_url


def test_dry_run_claims_and_sends_nothing(ingested: tuple[str, str], tmp_path: Path) -> None:
    shop_url, store_url = ingested
    report = run(shop_url, store_url, spec(dry_run=True), tmp=tmp_path)
    assert report.audience_size > 50
    assert report.claimed > 10 and report.fates["claimed"] == report.claimed
    assert sum(report.fates.values()) == report.audience_size
    assert set(report.fates) - {"claimed"}, "some customers have no consent or are suppressed"
    assert ledger_rows(store_url).empty
    with connect(store_url).connect() as conn:
        assert conn.execute(select(decision_log)).first() is None
        row = stored.read(conn, "winter-news")
    assert row is not None and row["status"] == "dry_run"
    assert row["dry_run_report"]["claimed"] == report.claimed
    assert {s["locale"] for s in report.samples} == {"en", "fr"}
    for s in report.samples:
        msg = email.message_from_bytes(Path(s["eml"]).read_bytes())
        assert msg["To"] and msg["Subject"]
    assert report.estimated_seconds > 0


def test_real_run_claims_once_and_the_same_name_again_claims_nothing(
        ingested: tuple[str, str], tmp_path: Path) -> None:
    shop_url, store_url = ingested
    dry = run(shop_url, store_url, spec(dry_run=True))
    real = run(shop_url, store_url, spec(), tmp=tmp_path)
    assert real.claimed == dry.claimed
    rows = ledger_rows(store_url)
    assert len(rows) == real.claimed
    assert set(rows["program"]) == {"campaign:winter-news"}
    assert set(rows["occurrence"]) == {"winter-news"}
    assert rows["customer_id"].is_unique
    assert real.batches
    outbox = tmp_path / "outbox"
    backend = OutboxBackend(outbox)
    for b in real.batches:
        send_batch(store_url, DAY, b, backend=backend,
                   renderer=messages.default_renderer(SETTINGS), settings=SETTINGS)
    assert len(list(outbox.glob("*.eml"))) == real.claimed
    lines = finish("winter-news", store_url, "c1")
    assert lines[0] == "campaign winter-news (day 2026-11-20): sent"
    with pytest.raises(DataError, match="this run planned nothing"):
        finish("winter-news", store_url, "another-run")

    again = run(shop_url, store_url, spec(), day=DAY + dt.timedelta(days=10), run_id="c2")
    assert again.claimed == 0
    # Every customer the first run claimed is refused: already claimed or, ten days on, no
    # longer lawful to contact (an implied consent that lapsed), which consent decides first.
    lapsed = again.fates.get("no_consent", 0) - real.fates.get("no_consent", 0)
    assert again.fates.get("already_claimed", 0) + lapsed == real.claimed
    assert len(ledger_rows(store_url)) == real.claimed


def test_finish_fails_when_a_message_was_not_sent(ingested: tuple[str, str]) -> None:
    shop_url, store_url = ingested
    run(shop_url, store_url, spec(max_recipients=3))
    with pytest.raises(DataError, match=r"not every message was sent \(claimed 3\)"):
        finish("winter-news", store_url, "c1")
    with connect(store_url).connect() as conn:
        assert stored.read(conn, "winter-news")["status"] == "sending"


def test_campaign_and_nightly_never_exceed_a_cap(ingested: tuple[str, str]) -> None:
    shop_url, store_url = ingested
    reg = load_registry()
    nightly = plan.plan_night(shop_url, store_url, DAY, "n1", settings=SETTINGS,
                              renderer=messages.default_renderer(SETTINGS), secret="s",
                              registry=reg)
    assert nightly.claimed() > 0
    mark_claimed_sent(store_url, DAY)
    report = run(shop_url, store_url, spec())
    assert report.fates.get("lost_to:winback", 0) + sum(
        n for f, n in report.fates.items() if f.startswith(("capped", "lost_to"))) > 0
    rows = ledger_rows(store_url)
    marketing = rows.loc[rows["kind"] == "marketing"]
    per_customer = Counter(marketing["customer_id"])
    assert max(per_customer.values()) == 1, "one marketing message per customer in 3 days"
    # and the nightly run after the campaign on the same day adds nothing for them
    plan.plan_night(shop_url, store_url, DAY, "n2", settings=SETTINGS,
                    renderer=messages.default_renderer(SETTINGS), secret="s", registry=reg)
    rows = ledger_rows(store_url)
    assert max(Counter(rows.loc[rows["kind"] == "marketing", "customer_id"]).values()) == 1


def test_max_recipients_and_holdout(ingested: tuple[str, str]) -> None:
    shop_url, store_url = ingested
    report = run(shop_url, store_url, spec(max_recipients=7, holdout_pct=20))
    assert report.claimed == 7
    assert report.fates["max_recipients"] > 0
    assert report.fates["held_out"] > 0
    with connect(store_url).connect() as conn:
        fates = Counter(r.fate for r in conn.execute(select(decision_log.c.fate)))
    assert fates["claimed"] == 7 and fates["held_out"] == report.fates["held_out"]


def body_of(msg: email.message.Message) -> str:
    return "".join(str(part.get_payload(decode=True), "utf-8") for part in msg.walk()
                   if part.get_content_maintype() == "text")


def test_proofs_go_to_staff_only_and_not_in_the_ledger(ingested: tuple[str, str],
                                                       tmp_path: Path) -> None:
    """A proof shows the sample customer's message but nothing in it acts for them: no
    List-Unsubscribe headers, links that unsubscribe nobody, no voucher a shop accepts."""
    from tend.messages.tokens import make_token, verify_token, voucher_code

    shop_url, store_url = ingested
    report = run(shop_url, store_url, spec(dry_run=True, offer="percent", offer_amount=10),
                 tmp=tmp_path)
    outbox = tmp_path / "proofs"
    n = send_proofs("winter-news", store_url, to=["boss@shop.example"],
                    backend=OutboxBackend(outbox), renderer=messages.default_renderer(SETTINGS),
                    settings=SETTINGS, run_id="c1")
    assert n == 2
    sent = [email.message_from_bytes(p.read_bytes()) for p in outbox.glob("*.eml")]
    assert {m["To"] for m in sent} == {"boss@shop.example"}
    assert all(m["Subject"].startswith("[PROOF] ") for m in sent)
    assert ledger_rows(store_url).empty
    for m in sent:
        assert m["List-Unsubscribe"] is None and m["List-Unsubscribe-Post"] is None
        body = body_of(m)
        assert f"{SETTINGS.base_url}/unsubscribe/proof" in body
        assert f"{SETTINGS.base_url}/preferences/proof" in body
        assert verify_token("s", "proof") is None
        assert "WINTERNE-XXXX-XXXX" in body
        for sample in report.samples:
            cid = sample["customer_id"]
            for purpose in ("unsubscribe", "preferences"):
                assert make_token("s", cid, purpose) not in body
            code = voucher_code("s", ledger.message_id_for(cid, "campaign:winter-news",
                                                           "winter-news"), "WINTERNE")
            assert code not in body and code in sample["context"]


def test_campaign_and_nightly_at_the_same_time_contact_nobody_twice(
        ingested: tuple[str, str]) -> None:
    """Both claim at once (threads, each with its own connections): the ledger's lock orders
    them, the second sees the first's claims, and each run owns only its own batches."""
    import threading

    shop_url, store_url = ingested
    reg = load_registry()
    errors: list[BaseException] = []
    results: dict[str, Any] = {}

    def nightly() -> None:
        try:
            results["night"] = plan.plan_night(
                shop_url, store_url, DAY, "n1", settings=SETTINGS,
                renderer=messages.default_renderer(SETTINGS), secret="s", registry=reg)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def campaign() -> None:
        try:
            results["campaign"] = run(shop_url, store_url, spec())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=nightly), threading.Thread(target=campaign)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    rows = ledger_rows(store_url)
    marketing = rows.loc[rows["kind"] == "marketing"]
    assert marketing["customer_id"].is_unique
    is_campaign = rows["program"] == "campaign:winter-news"
    assert is_campaign.any() and (~is_campaign).any()
    night_batches = set(results["night"].batches)
    campaign_batches = set(results["campaign"].batches)
    assert night_batches and campaign_batches and not night_batches & campaign_batches
    assert set(rows.loc[is_campaign, "batch_id"]) == campaign_batches
    assert set(rows.loc[~is_campaign, "batch_id"]) == night_batches
    with connect(store_url).connect() as conn:
        assert set(ledger.batches_to_send(conn, DAY)) == night_batches
        assert set(ledger.batches_to_send(conn, DAY, "campaign:winter-news")) == \
            campaign_batches
        assert ledger.claims_without_contexts(conn, DAY).empty


def test_a_customer_who_paused_marketing_gets_no_campaign(ingested: tuple[str, str]) -> None:
    """The customers' own choices (tend serve's preferences page) bind campaigns too."""
    from tend.store import preferences

    shop_url, store_url = ingested
    before = run(shop_url, store_url, spec(dry_run=True))
    with connect(store_url).begin() as conn:
        preferences.save(conn, "C000001", preferences.Preferences(
            paused_until=DAY + dt.timedelta(days=30)), now=ledger.now())
    real = run(shop_url, store_url, spec())
    assert real.fates["preference:paused"] == 1
    assert real.claimed == before.claimed - 1, "C000001 would have been sent the campaign"
    with connect(store_url).connect() as conn:
        fate = conn.execute(select(decision_log.c.fate).where(
            decision_log.c.customer_id == "C000001")).scalar_one()
    assert fate == "preference:paused"


def test_a_local_send_time_is_each_customers_own(ingested: tuple[str, str],
                                                 tmp_path: Path) -> None:
    """send_at 10:00: every message is scheduled for the next 10:00 in its customer's own
    timezone (the outbox records it as X-Tend-Send-At)."""
    from zoneinfo import ZoneInfo

    from tend.shop.read import read_customers

    shop_url, store_url = ingested
    s = spec(send_at="10:00", max_recipients=20)
    report = run(shop_url, store_url, s)
    now = dt.datetime(2026, 11, 20, 21, 0, tzinfo=dt.UTC)
    backend = OutboxBackend(tmp_path / "outbox")
    for b in report.batches:
        send_batch(store_url, DAY, b, backend=backend,
                   renderer=messages.default_renderer(SETTINGS), settings=SETTINGS,
                   send_window=s.send_window(SendWindow()), wall_clock=lambda: now)
    rows = ledger_rows(store_url).set_index("message_id")
    tz = read_customers(shop_url, rows["customer_id"].unique()).set_index("customer_id")[
        "timezone"]
    zones = set()
    for path in (tmp_path / "outbox").glob("*.eml"):
        msg = email.message_from_bytes(path.read_bytes())
        at = dt.datetime.fromisoformat(msg["X-Tend-Send-At"])
        zone = ZoneInfo(tz[rows.loc[path.stem, "customer_id"]])
        local = at.astimezone(zone)
        assert (local.hour, local.minute) == (10, 0)
        assert now < at <= now + dt.timedelta(days=1)
        zones.add(str(zone))
    assert len(zones) >= 2, "customers in several timezones"
    assert report.claimed == 20


def shop_sql(shop_url: str, sql: str, *args: Any) -> list[Any]:
    import sqlite3

    with sqlite3.connect(shop_url.removeprefix("sqlite:///")) as db:
        return db.execute(sql, args).fetchall()


def test_text_that_fails_for_some_customers_fails_only_their_messages(
        ingested: tuple[str, str], tmp_path: Path) -> None:
    """``first_name[4]`` passes the form's check (it renders for "Marie" and for a customer
    with no name) but not for a three-letter name: those messages end failed with the reason,
    before anything is sent; everyone else is claimed, rendered and sent, and the run's status
    and failure say that not every message went out."""
    shop_url, store_url = ingested
    shop_sql(shop_url, "UPDATE customers SET first_name = 'Marianne'")
    shop_sql(shop_url, "UPDATE customers SET first_name = 'Bob' WHERE customer_id LIKE '%1'")
    shop_sql(shop_url, "UPDATE customers SET first_name = NULL WHERE customer_id LIKE '%2'")
    words = {"subject_en": "{{ customer.first_name[4] }} news",
             "subject_fr": "{{ customer.first_name[4] }} nouvelles"}
    dry = run(shop_url, store_url, spec(dry_run=True, **words))
    assert dry.fates["unrenderable"] > 0
    assert any("field 'subject_" in n and "would not render" in n for n in dry.notes)
    assert ledger_rows(store_url).empty

    real = run(shop_url, store_url, spec(**words), tmp=tmp_path)
    rows = ledger_rows(store_url)
    bob = rows["customer_id"].str.endswith("1")
    assert bob.sum() == real.fates["unrenderable"] == dry.fates["unrenderable"]
    assert set(rows.loc[bob, "status"]) == {"failed"}
    assert rows.loc[bob, "error"].str.contains("field 'subject_(?:en|fr)' does not render").all()
    assert set(rows.loc[~bob, "status"]) == {"claimed"}
    assert real.claimed == (~bob).sum() == dry.claimed
    assert sum(real.fates.values()) == real.audience_size
    with connect(store_url).connect() as conn:
        assert ledger.claims_without_contexts(conn, DAY, "campaign:winter-news").empty
    assert real.samples and not any(s["customer_id"].endswith("1") for s in real.samples)

    outbox = tmp_path / "outbox"
    for b in real.batches:
        send_batch(store_url, DAY, b, backend=OutboxBackend(outbox),
                   renderer=messages.default_renderer(SETTINGS), settings=SETTINGS)
    sent = {p.stem: email.message_from_bytes(p.read_bytes()) for p in outbox.glob("*.eml")}
    assert len(sent) == (~bob).sum()
    nameless = rows.loc[rows["customer_id"].str.endswith("2"), "message_id"]
    assert {str(sent[m]["Subject"]) for m in nameless} <= {"news", "nouvelles"}
    with pytest.raises(DataError, match=r"not every message was sent \(failed "):
        finish("winter-news", store_url, "c1")
    with connect(store_url).connect() as conn:
        assert stored.read(conn, "winter-news")["status"] == "partly_sent"


def test_a_rehearsal_after_the_real_run_leaves_its_record(ingested: tuple[str, str],
                                                          tmp_path: Path) -> None:
    """A dry run of a campaign already sent stores its own report and nothing else: the
    status, form (whose offer the results read) and run stay the real run's; its own finish
    and proofs find its report."""
    shop_url, store_url = ingested
    real = run(shop_url, store_url, spec(offer="percent", offer_amount=10, max_recipients=5))
    mark_claimed_sent(store_url, DAY)
    finish("winter-news", store_url, "c1")
    run(shop_url, store_url, spec(dry_run=True, subject_en="Rehearsed", subject_fr="Repete"),
        tmp=tmp_path, run_id="c2")
    with connect(store_url).connect() as conn:
        row = stored.read(conn, "winter-news")
    assert (row["status"], row["run_id"], row["params"]["offer"]) == ("sent", "c1", "percent")
    assert row["report"]["claimed"] == real.claimed and row["report"]["ledger"] == {"sent": 5}
    assert row["dry_run_report"]["run_id"] == "c2"
    assert finish("winter-news", store_url, "c2")[0].startswith("campaign winter-news: dry run")
    outbox = tmp_path / "proofs"
    send_proofs("winter-news", store_url, to=["boss@shop.example"],
                backend=OutboxBackend(outbox), renderer=messages.default_renderer(SETTINGS),
                settings=SETTINGS, run_id="c2")
    subjects = {str(email.message_from_bytes(p.read_bytes())["Subject"])
                for p in outbox.glob("*.eml")}
    assert subjects == {"[PROOF] Rehearsed", "[PROOF] Repete"}
    with connect(store_url).connect() as conn:
        assert stored.read(conn, "winter-news")["status"] == "sent"


def test_a_real_run_with_nobody_to_write_to_ends_nothing_to_send(
        ingested: tuple[str, str]) -> None:
    shop_url, store_url = ingested
    nobody = [r[0] for r in shop_sql(shop_url, "SELECT customer_id FROM customers WHERE "
                                               "marketing_consent = 'none' LIMIT 3")]
    assert nobody
    with connect(store_url).begin() as conn:
        stored.replace_audience(conn, "no-consent", nobody, now=ledger.now())
    report = run(shop_url, store_url, spec(audience="upload", audience_upload="no-consent"))
    assert report.claimed == 0 and report.fates == {"no_consent": len(nobody)}
    lines = finish("winter-news", store_url, "c1")
    assert lines[0] == "campaign winter-news (day 2026-11-20): nothing_to_send"
    with connect(store_url).connect() as conn:
        assert stored.read(conn, "winter-news")["status"] == "nothing_to_send"
