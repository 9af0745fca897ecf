"""Who may be contacted, by kind of message: CASL's rules, table-driven."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from tend.programs.consent import consent_fates, is_valid_email, preference_fates

NIGHT = dt.date(2026, 11, 20)
RECENT = NIGHT - dt.timedelta(days=100)
OLD = NIGHT - dt.timedelta(days=800)


def customer(**over: object) -> dict[str, object]:
    base = {"customer_id": "C1", "email": "marie@example.com", "marketing_consent": "express",
            "unsubscribed_at": pd.NaT}
    return base | over


@pytest.mark.parametrize(
    ("cust", "kind", "last_order", "supp", "expected"),
    [
        (customer(), "marketing", RECENT, None, None),
        (customer(marketing_consent="implied"), "marketing", RECENT, None, None),
        (customer(marketing_consent="implied"), "marketing", OLD, None, "no_consent"),
        (customer(marketing_consent="none"), "marketing", RECENT, None, "no_consent"),
        (customer(marketing_consent=None), "marketing", RECENT, None, "no_consent"),
        (customer(marketing_consent=" Express "), "marketing", RECENT, None, None),  # as typed
        (customer(marketing_consent="IMPLIED"), "marketing", RECENT, None, None),
        (customer(marketing_consent="none"), "transactional", RECENT, None, None),
        (customer(email="bob@"), "marketing", RECENT, None, "suppressed:invalid_address"),
        (customer(email="bob@"), "transactional", RECENT, None, "suppressed:invalid_address"),
        (customer(unsubscribed_at=pd.Timestamp("2026-01-01", tz="UTC")), "marketing", RECENT,
         None, "suppressed:unsubscribed"),
        # after the night's date (before its run at 02:00, or before a replay): mail goes out
        # now, so it counts
        (customer(unsubscribed_at=pd.Timestamp("2026-12-01", tz="UTC")), "marketing", RECENT,
         None, "suppressed:unsubscribed"),
        (customer(), "marketing", RECENT, "unsubscribed", "suppressed:unsubscribed"),
        (customer(), "transactional", RECENT, "unsubscribed", None),
        (customer(), "marketing", RECENT, "hard_bounce", "suppressed:hard_bounce"),
        (customer(), "transactional", RECENT, "hard_bounce", "suppressed:hard_bounce"),
        (customer(), "marketing", RECENT, "spam_report", "suppressed:spam_report"),
        (customer(), "service", RECENT, "do_not_disturb", "suppressed:do_not_disturb"),
        (customer(), "marketing", RECENT, "complaint", "suppressed:complaint"),
        (customer(), "service", RECENT, "complaint", None),  # service continues
    ],
)
def test_fates(cust: dict, kind: str, last_order: dt.date, supp: str | None,
               expected: str | None) -> None:
    cands = pd.DataFrame([{"customer_id": "C1", "kind": kind, "last_order_date": last_order}])
    sup = pd.DataFrame([{"customer_id": "C1", "reason": supp}] if supp else [],
                       columns=["customer_id", "reason"])
    out = consent_fates(cands, pd.DataFrame([cust]), sup, NIGHT)
    fate = out.loc[0, "fate"]
    assert (None if pd.isna(fate) else fate) == expected
    if expected:
        assert out.loc[0, "why"]


def test_unknown_customer_is_never_contacted() -> None:
    cands = pd.DataFrame([{"customer_id": "C404", "kind": "marketing",
                           "last_order_date": RECENT}])
    out = consent_fates(cands, pd.DataFrame([customer()]),
                        pd.DataFrame(columns=["customer_id", "reason"]), NIGHT)
    assert out.loc[0, "fate"] == "suppressed:unknown_customer"


@pytest.mark.parametrize(
    ("email", "ok"),
    [("a@example.com", True), ("a.b+c@sub.example.org", True), ("no-at-sign.example.com", False),
     ("bob@", False), ("a b@example.com", False), ("x@localhost", False), (None, False),
     ("<a@example.com>", False)],
)
def test_email_syntax(email: str | None, ok: bool) -> None:
    assert is_valid_email(email) is ok


@pytest.mark.parametrize(
    ("prefs", "kind", "signal", "expected"),
    [
        ({}, "marketing", "lapsed", None),
        ({"paused_until": NIGHT + dt.timedelta(days=1)}, "marketing", "lapsed",
         "preference:paused"),
        ({"paused_until": NIGHT}, "marketing", "lapsed", None),  # the pause ends that day
        ({"paused_until": NIGHT + dt.timedelta(days=30)}, "service", "checkup", None),
        ({"offers_opt_out": True}, "marketing", "lapsed", "preference:no_offers"),
        ({"offers_opt_out": True}, "marketing", "replenish", None),  # a reminder
        ({"offers_opt_out": True}, "service", "checkup", None),
        ({"offers_opt_out": True}, "service", "survey", None),
        ({"offers_opt_out": True, "paused_until": NIGHT + dt.timedelta(days=5)}, "marketing",
         "lapsed", "preference:paused"),
        ({"fewer_emails": True}, "marketing", "lapsed", None),  # a cap, not a block (caps.py)
    ],
)
def test_the_customers_own_choices(prefs: dict[str, object], kind: str, signal: str,
                                   expected: str | None) -> None:
    cands = pd.DataFrame([{"customer_id": "C1", "kind": kind, "signal": signal},
                          {"customer_id": "C2", "kind": kind, "signal": signal}])
    chosen = pd.DataFrame([{"customer_id": "C1", "paused_until": None, "fewer_emails": False,
                            "offers_opt_out": False, "locale": None} | prefs])
    fates = preference_fates(cands, chosen, NIGHT)
    assert fates["fate"].tolist() == [expected, None]
    if expected:
        assert "preferences page" in fates.loc[0, "why"]


@pytest.mark.parametrize(("days_before_night", "today", "expected"), [
    (729, None, None),  # 730 days before the night's next day, when its run sends
    (730, None, "no_consent"),  # two years and a day by the time the message leaves
    (715, None, None),
    (715, NIGHT + dt.timedelta(days=20), "no_consent"),  # replayed 20 days late: sent today
    (715, NIGHT - dt.timedelta(days=3), None),  # a "today" before the night changes nothing
])
def test_implied_consent_counts_back_from_the_day_the_message_is_sent(
        days_before_night: int, today: dt.date | None, expected: str | None) -> None:
    """CASL s.10(10): a purchase within the two years immediately before the day the message
    is sent. The night's run sends on its next day; a past night replayed sends today."""
    cands = pd.DataFrame([{"customer_id": "C1", "kind": "marketing",
                           "last_order_date": NIGHT - dt.timedelta(days=days_before_night)}])
    out = consent_fates(cands, pd.DataFrame([customer(marketing_consent="implied")]),
                        pd.DataFrame(columns=["customer_id", "reason"]), NIGHT, today)
    fate = out.loc[0, "fate"]
    assert (None if pd.isna(fate) else fate) == expected
    if expected:
        sent_on = max(NIGHT + dt.timedelta(days=1), today or NIGHT)
        assert out.loc[0, "why"] == ("implied consent expired: last purchase more than 730 "
                                     f"days before {sent_on}, the day the message would be "
                                     "sent")
