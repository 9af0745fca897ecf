"""The night's summary (tend.reports.summary_lines) as an operator reads it at 7 am: what
needs a person first, then the totals; a replay says it claimed nothing new."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from _support import make_program, make_registry, plan_test_night
from sqlalchemy import select, update

from tend import reports
from tend.store.db import connect
from tend.store.tables import contact_ledger, message_events

MONDAY = dt.date(2026, 11, 16)
pytestmark = pytest.mark.demo_shop(customers=250, seed=21, as_of=MONDAY)
REG = make_registry(make_program("winback"))


def test_a_clean_night_has_no_warning_and_names_what_its_run_claimed(
        shop_url: str, store_url: str) -> None:
    plan_test_night(shop_url, store_url, MONDAY, REG)
    lines = reports.summary_lines(store_url, MONDAY, f"p-{MONDAY}")
    assert lines[0] == f"Tend night {MONDAY}"
    assert not [line for line in lines if line.startswith("WARNING")]
    assert re.fullmatch(rf"  this run \(p-{MONDAY}\) claimed [\d,]+ message\(s\) \([\d,]+ sent\)",
                        lines[1]), lines[1]
    replay = reports.summary_lines(store_url, MONDAY, "manual__replay")
    assert "this run (manual__replay) claimed nothing new" in replay[1]
    assert reports.night_problems(store_url, MONDAY) == []


def test_a_rehearsal_says_its_waiting_messages_are_not_a_failed_send(
        shop_url: str, store_url: str) -> None:
    """A SendGrid sandbox run puts every message back to 'claimed': its summary says so, not
    that a send task failed."""
    plan_test_night(shop_url, store_url, MONDAY, REG)
    with connect(store_url).begin() as conn:
        claimed = conn.execute(update(contact_ledger).values(status="claimed")).rowcount
    lines = reports.summary_lines(store_url, MONDAY, rehearsal=True)
    assert lines[0] == (f"WARNING: {claimed:,} message(s) not sent: this run was a rehearsal "
                        "(SendGrid sandbox), which delivers nothing and puts every message "
                        "back to 'claimed'; a real run of this night sends them "
                        "(docs/operations.md)")
    assert f"Tend night {MONDAY} (rehearsal: SendGrid sandbox, nothing delivered)" in lines
    assert not any("a send task failed" in line for line in lines)
    assert any("a send task failed" in line for line in reports.summary_lines(store_url, MONDAY))


def test_failures_unknown_sends_and_spam_reports_come_first(shop_url: str,
                                                            store_url: str) -> None:
    plan_test_night(shop_url, store_url, MONDAY, REG)
    noon = dt.datetime.combine(MONDAY, dt.time(12), dt.UTC)
    with connect(store_url).begin() as conn:
        ids = list(conn.execute(select(contact_ledger.c.message_id)
                                .order_by(contact_ledger.c.message_id)).scalars())
        conn.execute(update(contact_ledger).where(contact_ledger.c.message_id == ids[0])
                     .values(status="failed", error="template winback: undefined 'x'"))
        conn.execute(update(contact_ledger).where(contact_ledger.c.message_id == ids[1])
                     .values(status="unknown"))
        conn.execute(update(contact_ledger).where(contact_ledger.c.message_id == ids[2])
                     .values(status="claimed"))
        conn.execute(message_events.insert(), [
            {"event_id": f"e{i}", "message_id": mid, "customer_id": None, "event": ev,
             "occurred_at": noon, "received_at": noon, "detail": None}
            for i, (mid, ev) in enumerate([(ids[3], "delivered"), (ids[4], "delivered"),
                                           (ids[3], "spamreport"),
                                           *((m, "bounce") for m in ids[5:10])])])
    lines = reports.summary_lines(store_url, MONDAY)
    head = lines[:lines.index(f"Tend night {MONDAY}")]
    text = "\n".join(head)
    assert all(line.startswith(("WARNING: ", "  ")) for line in head if line)
    assert head[0].startswith(f"WARNING: 1 message(s) of night {MONDAY} are 'unknown'")
    for expected in ("1 message(s) failed",
                     "1 message(s) still waiting", "template of winback failed",
                     "spam reports at 50.00% of delivered mail", "rising", "bounces at"):
        assert expected in text, text
    assert reports.night_problems(store_url, MONDAY) == [
        "1 failed", "1 unknown", "1 still waiting to be sent"]


def test_a_complaint_comment_cannot_drive_staff_terminals() -> None:
    """A customer's comment reaches `tend complaints` and the digest: its escape sequences and
    bidi overrides are printed as text, never passed to the terminal or the mail client."""
    comment = "hi\x1b[2J\x1b]0;owned\x07 \u202eevil\u202c fine é\nsecond line"
    row = {"id": 7, "opened_at": dt.datetime(2026, 11, 16, 9, 30), "customer_id": "C1",
           "source": "survey", "rating": 1, "comment": comment}
    printed = "\n".join(reports.complaint_table([row]))
    assert "\x1b" not in printed and "\u202e" not in printed and "\x07" not in printed
    assert r"hi\x1b[2J\x1b]0;owned\x07 \u202eevil\u202c fine é sec" in printed  # cut at 60
    assert reports.visible("tab\tand\nline é") == "tab\tand\nline é"
