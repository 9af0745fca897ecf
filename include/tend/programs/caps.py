"""Pure rules around tonight's decision: holdouts, the send window, deferral.

Kept free of I/O so they can be property-tested; the set-based cap check itself lives with the
ledger (``tend.store.ledger.claim``) because it must run inside the claiming transaction.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

# -- holdouts --------------------------------------------------------------------------------


def holdout_period(as_of: dt.date) -> str:
    """Holdout membership is stable within a calendar quarter, then reshuffled.

    A quarter is long enough to measure lift on a program's messages and short enough that no
    customer is kept out of a program for good.
    """
    return f"{as_of.year}Q{(as_of.month - 1) // 3 + 1}"


def holdout_draw(customer_ids: pd.Series, program: str, period: str) -> np.ndarray:
    """A uniform number in [0, 1) per customer, a deterministic hash of (customer, program, period).

    ``pandas.util.hash_pandas_object`` is a keyed SipHash with a fixed key: the same on every
    machine and every run, vectorised (a million customers in well under a second), and
    independent of how many customers there are — so a shop of 300 and a shop of 3 million
    draw the same way for the same customer.
    """
    keys = customer_ids.astype(str) + f"\x1f{program}\x1f{period}"
    hashed = pd.util.hash_pandas_object(keys, index=False).to_numpy(dtype=np.uint64)
    return (hashed >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def held_out(customer_ids: pd.Series, program: str, as_of: dt.date, share: float) -> np.ndarray:
    if share <= 0:
        return np.zeros(len(customer_ids), dtype=bool)
    return holdout_draw(customer_ids, program, holdout_period(as_of)) < share


# -- quiet hours -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SendWindow:
    """Deliver only between ``start`` and ``end`` in the customer's own timezone."""

    start: dt.time = dt.time(9, 0)
    end: dt.time = dt.time(20, 0)

    def next_send_time(self, now: dt.datetime, timezone: str | None,
                       fallback_tz: str = "UTC") -> dt.datetime | None:
        """``None`` when ``now`` is inside the window, else the next opening (UTC).

        DST-correct: the opening is built as a local wall-clock time on the right local date,
        then converted, so "09:00 in Montréal" is 14:00 UTC in winter and 13:00 UTC in summer.
        """
        tz = _zone(timezone) or _zone(fallback_tz) or dt.UTC
        local = now.astimezone(tz)
        if self.start <= local.time() < self.end:
            return None
        day = local.date() if local.time() < self.start else local.date() + dt.timedelta(days=1)
        opening = dt.datetime.combine(day, self.start, tzinfo=tz)
        return opening.astimezone(dt.UTC)


def _zone(name: str | None) -> ZoneInfo | None:
    """The customer's zone, or None (the shop's) for anything that is not one: unknown names,
    malformed ones, and a folder of the tz database ("Canada"), which raises an OSError."""
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def parse_clock(value: str, what: str) -> dt.time:
    from tend.errors import ConfigError

    try:
        return dt.time.fromisoformat(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what}: {value!r} is not a time of day; write e.g. \"09:00\"") from exc


# -- fewer emails (the preferences page) ---------------------------------------------------------

#: The personal cap of a customer who asked for fewer emails: at most this many marketing
#: messages in any window of this many days (on top of the shop's caps in programs.yaml).
FEWER_EMAILS_MESSAGES = 1
FEWER_EMAILS_DAYS = 14


def fewer_emails_fates(candidates: pd.DataFrame, recent: pd.DataFrame) -> pd.DataFrame:
    """Fate per candidate (same index): ``capped:fewer_emails`` for marketing to a customer who
    asked for fewer emails and already had :data:`FEWER_EMAILS_MESSAGES` in the window.

    ``recent``: customer_id, messages (:func:`tend.store.preferences.recent_marketing_of_fewer`,
    which lists only those customers). Checked before the claim: the claim's one message per
    customer and night keeps two runs of one night from both passing it.
    """
    n = len(candidates)
    fate = np.full(n, None, dtype=object)
    why = np.full(n, None, dtype=object)
    if not recent.empty and n:
        had = candidates["customer_id"].map(recent.set_index("customer_id")["messages"])
        hit = ((candidates["kind"] == "marketing") & (had.fillna(0) >= FEWER_EMAILS_MESSAGES)
               ).to_numpy()
        fate[hit] = "capped:fewer_emails"
        why[hit] = (f"the customer asked for fewer emails: at most {FEWER_EMAILS_MESSAGES} "
                    f"marketing message(s) in {FEWER_EMAILS_DAYS} days (preferences page)")
    return pd.DataFrame({"fate": pd.Series(fate, index=candidates.index, dtype=object),
                         "why": pd.Series(why, index=candidates.index, dtype=object)})
