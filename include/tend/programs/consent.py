"""Lawful basis and suppressions: who may receive which kind of message.

CASL (Canada) is the strictest law Tend's shops face, so it sets the defaults for everyone:
marketing needs express consent, or implied consent from a purchase within the last two years.
Unsubscribes, spam reports and "do not disturb" stop marketing and service mail; hard bounces
and invalid addresses stop everything (nothing can be delivered); an open complaint pauses
marketing only. Transactional mail (a receipt) needs no consent but still needs an address.

Everything is vectorised over the candidate table; the result is one fate per candidate
(``None`` = may be contacted) and a sentence explaining it.
"""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pandas as pd

IMPLIED_CONSENT_DAYS = 730  # CASL s.10(10): two years from the purchase

# reason -> kinds it blocks
SUPPRESSION_SCOPE: dict[str, tuple[str, ...]] = {
    "erased": ("marketing", "service", "transactional"),  # tend forget: never again
    "invalid_address": ("marketing", "service", "transactional"),
    "hard_bounce": ("marketing", "service", "transactional"),
    "unsubscribed": ("marketing", "service"),
    "spam_report": ("marketing", "service"),
    "do_not_disturb": ("marketing", "service"),
    "complaint": ("marketing",),
}

_EMAIL = re.compile(
    r"^[^@\s<>,;:\"]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+$"
)


def is_valid_email(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 320 and bool(_EMAIL.match(value))


def consent_fates(
    candidates: pd.DataFrame,
    customers: pd.DataFrame,
    suppressions: pd.DataFrame,
    as_of: dt.date,
    today: dt.date | None = None,
) -> pd.DataFrame:
    """Fate per candidate row (same index): columns ``fate`` (None = allowed) and ``why``.

    Implied consent counts back from the day the message is sent: the night's next day (the
    run starts after the night ends), or ``today`` when later (a past night replayed now).

    ``candidates``: customer_id, kind, last_order_date. ``customers``: the shop's customer rows
    (email, marketing_consent, consent_at, unsubscribed_at). ``suppressions``: customer_id,
    reason for active suppressions (resolved complaints already removed).
    """
    c = candidates.merge(
        customers[["customer_id", "email", "marketing_consent", "unsubscribed_at"]],
        on="customer_id", how="left",
    )
    c.index = candidates.index
    fate = pd.Series(None, index=c.index, dtype="object")
    why = pd.Series(None, index=c.index, dtype="object")

    def decide(mask: pd.Series | np.ndarray, f: str, w: str | pd.Series) -> None:
        m = pd.Series(mask, index=c.index).fillna(False).astype(bool) & fate.isna()
        fate.loc[m] = f
        why.loc[m] = w

    decide(c["email"].isna(), "suppressed:unknown_customer",
           "customer not found in the shop's customers table, or set aside there because "
           "their rows disagree on the email (the ingest's quarantine names them)")
    decide(~c["email"].map(is_valid_email), "suppressed:invalid_address",
           "the email address is not valid")

    # A row with a ``via`` is another record's suppression reaching this one through a shared
    # address (tend.programs.plan._shared_address); the customer's own rows come first.
    via = (suppressions["via"] if "via" in suppressions
           else pd.Series(None, index=suppressions.index, dtype=object))
    own = suppressions.loc[via.isna()]
    shared = suppressions.loc[via.notna()]

    def held_by(rows: pd.DataFrame) -> pd.Series:
        by_customer = (rows.groupby("customer_id")["reason"].agg(set) if not rows.empty
                       else pd.Series(dtype=object))
        return c["customer_id"].map(by_customer)

    held, held_shared = held_by(own), held_by(shared)
    for reason, kinds in SUPPRESSION_SCOPE.items():
        text = f"on the suppression list ({reason.replace('_', ' ')})"
        has = held.map(lambda s, r=reason: isinstance(s, set) and r in s)
        decide(has & c["kind"].isin(kinds), f"suppressed:{reason}", text)
        if shared.empty:
            continue
        through = held_shared.map(lambda s, r=reason: isinstance(s, set) and r in s)
        first = shared.loc[shared["reason"] == reason].drop_duplicates("customer_id")
        who = c["customer_id"].map(first.set_index("customer_id")["via"]).astype(str)
        decide(through & c["kind"].isin(kinds), f"suppressed:{reason}",
               text + " through customer " + who + ", who has the same email address")

    # Any unsubscribe the shop holds counts, whatever its date: the night's run starts hours
    # after the night's date ends, and a replayed night sends real mail today.
    said = c["unsubscribed_at"]
    unsub = said.notna() & (said.astype(str).str.strip() != "")
    decide(unsub & c["kind"].isin(SUPPRESSION_SCOPE["unsubscribed"]), "suppressed:unsubscribed",
           "unsubscribed in the shop")

    marketing = c["kind"] == "marketing"
    consent = c["marketing_consent"].fillna("none").astype(str).str.strip().str.lower()
    last = pd.to_datetime(c["last_order_date"])
    sent_on = max(as_of + dt.timedelta(days=1), today or as_of)
    age_days = (pd.Timestamp(sent_on) - last).dt.days
    implied_ok = (consent == "implied") & (age_days <= IMPLIED_CONSENT_DAYS)
    lawful = (consent == "express") | implied_ok
    expired = (consent == "implied") & ~implied_ok
    decide(marketing & expired, "no_consent",
           f"implied consent expired: last purchase more than {IMPLIED_CONSENT_DAYS} days "
           f"before {sent_on:%Y-%m-%d}, the day the message would be sent")
    decide(marketing & ~lawful, "no_consent", "no express or implied consent to marketing")
    return pd.DataFrame({"fate": fate, "why": why})


# -- the customer's own choices (the preferences page) ----------------------------------------

#: What an opt-out of offers keeps: the reminders a customer relies on (a check-up falling due,
#: a consumable running out), whatever their kind.
REMINDER_SIGNALS = frozenset({"checkup", "replenish"})


def preference_fates(candidates: pd.DataFrame, prefs: pd.DataFrame,
                     as_of: dt.date) -> pd.DataFrame:
    """Fate per candidate (same index) from the customers' own choices, like
    :func:`consent_fates`: a pause stops marketing until its day, an opt-out of offers stops
    marketing other than reminders (:data:`REMINDER_SIGNALS`).

    ``candidates``: customer_id, kind, signal. ``prefs``: the preferences table's rows
    (:func:`tend.store.preferences.all_chosen`); only customers who chose something are in it.
    """
    n = len(candidates)
    fate = np.full(n, None, dtype=object)
    why = np.full(n, None, dtype=object)
    if not prefs.empty and n:
        p = prefs.drop_duplicates("customer_id").set_index("customer_id")
        cid = candidates["customer_id"]
        marketing = (candidates["kind"] == "marketing").to_numpy()
        until = pd.to_datetime(cid.map(p["paused_until"]), errors="coerce")
        paused = marketing & (until > pd.Timestamp(as_of)).to_numpy()
        fate[paused] = "preference:paused"
        why[paused] = [f"the customer paused marketing until {d:%Y-%m-%d} (preferences page)"
                       for d in until[paused]]
        no_offers = (cid.map(p["offers_opt_out"]).fillna(False).astype(bool).to_numpy()
                     & marketing & ~candidates["signal"].isin(REMINDER_SIGNALS).to_numpy()
                     & ~paused)
        fate[no_offers] = "preference:no_offers"
        why[no_offers] = ("the customer opted out of offers and keeps only reminders "
                          "(preferences page)")
    return pd.DataFrame({"fate": pd.Series(fate, index=candidates.index, dtype=object),
                         "why": pd.Series(why, index=candidates.index, dtype=object)})
