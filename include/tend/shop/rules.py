"""The row rules of the shop tables: what a usable row holds, and why one is set aside.

Both ways a shop's rows come in apply these rules and define none of their own: ``read``
screens the rows of the shop database every night (``screen``, on whole columns) and
``csv_import`` screens CSV exports before loading them (row by row). A rule both check
quarantines the same rows with the same reason; the CSV import adds what it found after a
colon (the value as written, where to look), because the shop fixes its export from that line.
Rules that need other rows (a duplicate, a reference) are checked where those rows are known:
the reader gives the reasons named here for references and duplicates, the CSV import names
the line of the first occurrence instead. An ``ordered_at`` in the future is measured from the
wall clock by both (the day the night runs, the day the file loads).

Every number, interval, date and text has a range here (documented in docs/shop-data.md,
"The ranges"): quantities, totals and prices, replenish and service intervals, timestamps
between ``EARLIEST`` and ``LATEST``, ids and text within their column's width and without a
NUL byte. A value outside is a quarantined row, never an exception further down (a date
beyond year 9999, a value PostgreSQL refuses).
"""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import lru_cache

from sqlalchemy import String

from tend.shop import schema as shop_schema

#: An order total above this is treated as a data error (a price typed in cents, a test order).
ABSURD_TOTAL = 1_000_000.0
#: What a NUMERIC(12, 2) column holds: a larger amount is a bad row, not a failed load.
MAX_MONEY = Decimal("1e10")
_CENT = Decimal("0.01")

#: Column widths, so a value too long for PostgreSQL is a quarantined row, not a failed load.
LENGTHS: dict[str, dict[str, int]] = {
    t.name: {c.key: c.type.length for c in t.columns
             if isinstance(c.type, String) and c.type.length}
    for t in shop_schema.metadata.tables.values()
}
#: One order line of more units than this is a data error (a sku typed in the quantity).
MAX_QUANTITY = 10_000
#: A replenishment or service interval longer than ten years is a data error (days typed as
#: minutes, a placeholder), and would put a reminder beyond any calendar.
MAX_INTERVAL_DAYS = 3_650
#: Every timestamp of a shop row lies in [EARLIEST, LATEST): an earlier one is a placeholder
#: (0001-01-01, 1900-01-01), a later one cannot be a real event and would not fit the calendar
#: date arithmetic uses (pandas ends in 2262). Orders are also bounded by the night
#: (``ORDER_IN_FUTURE``).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
#: The reason for a text value holding a NUL byte: PostgreSQL refuses it in text, and no name,
#: id or address holds one.
NUL_BYTE = "NUL byte in {column}"
TOO_LONG = "{column} longer than {limit} characters"


def text_problem(table: str, column: str, value: str) -> str | None:
    """Why a text value cannot be stored (a NUL byte, too long for its column), or None."""
    if "\x00" in value:
        return NUL_BYTE.format(column=column)
    limit = LENGTHS[table].get(column)
    if limit is not None and len(value) > limit:
        return TOO_LONG.format(column=column, limit=limit)
    return None


#: The longest key and value a quarantine record keeps (the store's ``record_key`` is 200
#: characters wide): enough to find the row, not a copy of whatever huge value it held.
RECORD_TEXT_MAX = 200


def printable(value: str, limit: int | None = None) -> str:
    """Text as a quarantine record may hold it whatever the row held: a NUL byte (which
    PostgreSQL refuses in text) and lone surrogates become U+FFFD; longer than ``limit``, it
    is cut and ends with an ellipsis."""
    if limit is not None and len(value) > limit:
        value = value[: limit - 1] + "\u2026"
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in value)
    return value


def detailed(reason: str, detail: str) -> str:
    """A reason with what was found, for the CSV quarantine (the reader's reason comes first)."""
    return f"{reason}: {detail}"


def _generic_reasons(rule: object, **generic: str) -> None:
    """Fill the reasons a (frozen) rule left empty with the generic ones naming its column."""
    for name, reason in generic.items():
        if not getattr(rule, name):
            object.__setattr__(rule, name, reason)


# --- numbers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Number:
    """A numeric field: its bounds, and the reason for each way a value can break them.

    A reason left empty is the generic one naming the column. ``whole`` fields are counts
    (int); the others are money, rounded to the cent and never above ``MAX_MONEY``.
    """

    column: str
    whole: bool = False
    required: bool = True
    minimum: int = 0
    maximum: float | None = None  # the largest usable value; None: what the column holds
    missing: str = ""
    not_a_number: str = ""
    negative: str = ""
    too_small: str = ""
    too_large: str = ""
    fraction: str = ""

    def __post_init__(self) -> None:
        c = self.column
        _generic_reasons(self, missing=f"missing {c}", not_a_number=f"non-numeric {c}",
                         negative=f"negative {c}", too_small=f"{c} must be at least {self.minimum}",
                         too_large=f"{c} too large", fraction=f"{c} must be a whole number")

    def parse(self, text: str) -> tuple[Decimal | int | None, str | None]:
        """(value, None), or (None, the problem) for a value as written (already stripped);
        (None, None) for a blank optional value."""
        if not text:
            return None, self.missing if self.required else None
        try:
            number = Decimal(text)
        except InvalidOperation:
            number = Decimal("NaN")
        if not number.is_finite():
            return None, detailed(self.not_a_number, repr(text))
        if number < 0:
            return None, detailed(self.negative, text)
        if self.whole and number != number.to_integral_value():
            return None, detailed(self.fraction, repr(text))
        if number < self.minimum:
            return None, detailed(self.too_small, text)
        if (self.maximum is not None and number > Decimal(repr(self.maximum))) or (
                not self.whole and number >= MAX_MONEY):
            return None, detailed(self.too_large, text)
        if self.whole:
            return int(number), None
        return number.quantize(_CENT, rounding=ROUND_HALF_UP), None


# --- timestamps -----------------------------------------------------------------------------

#: The warning for a timestamp without a zone (read as UTC, which is how Tend stores time).
NAIVE_TIMESTAMP = "timestamp without zone, read as UTC"


@dataclass(frozen=True)
class Timestamp:
    """A timestamp field: required or not, and the reasons when it cannot be used."""

    column: str
    required: bool
    missing: str = ""
    unparseable: str = ""
    too_early: str = ""
    too_late: str = ""

    def __post_init__(self) -> None:
        c = self.column
        _generic_reasons(self, missing=f"missing {c}", unparseable=f"unparseable timestamp in {c}",
                         too_early=f"{c} before {EARLIEST:%Y-%m-%d}",
                         too_late=f"{c} after {LATEST - timedelta(days=1):%Y-%m-%d}")

    def parse(self, text: str) -> tuple[datetime | None, str | None, str | None]:
        """(UTC value, problem, warning) for a value as written (already stripped)."""
        if not text:
            return None, self.missing if self.required else None, None
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None, detailed(
                self.unparseable, f"{text!r} (use ISO 8601, e.g. 2024-03-01T14:30:00+00:00)"
            ), None
        warning = None
        if parsed.tzinfo is None:
            warning = NAIVE_TIMESTAMP
            parsed = parsed.replace(tzinfo=UTC)
        try:
            parsed = parsed.astimezone(UTC)
        except OverflowError:  # year 1 or 9999 moved past the calendar by its offset
            parsed = datetime.min.replace(tzinfo=UTC) if parsed.year < 2 else \
                datetime.max.replace(tzinfo=UTC)
        if parsed < EARLIEST:
            return None, detailed(self.too_early, repr(text)), None
        if parsed >= LATEST:
            return None, detailed(self.too_late, repr(text)), None
        return parsed, None, warning


# --- products -------------------------------------------------------------------------------

PRODUCT_WITHOUT_SKU = "empty sku"
#: The reader keeps one row of a sku the products table (or a view joining, say, translations)
#: repeats: the first by its values as text, whatever order the rows come back in.
PRODUCT_DUPLICATE = "duplicate sku (one row was kept)"
PRODUCT_WITHOUT_NAME = "missing name (emails show it to customers)"
#: A product without a category is kept under this one (a warning, not a reject).
DEFAULT_CATEGORY = "uncategorized"
PRICE = Number("price")
SERVICE_INTERVAL_DAYS = Number("service_interval_days", whole=True, required=False, minimum=1,
                               maximum=MAX_INTERVAL_DAYS)
REPLENISH_DAYS = Number("replenish_days", whole=True, required=False, minimum=1,
                        maximum=MAX_INTERVAL_DAYS)

# --- customers ------------------------------------------------------------------------------

CUSTOMER_WITHOUT_ID = "empty customer_id"
#: The reader keeps one row of a customer_id the customers table (or a view joining, say,
#: addresses) repeats: the one that allows the least mail (an unsubscribe, then the weaker
#: consent), then the first by its values as text, whatever order the rows come back in.
CUSTOMER_DUPLICATE = "duplicate customer_id (one row was kept)"
#: Repeated rows of a customer that disagree on the email are all set aside: nothing tells
#: which address is the customer's, and a message to the other would reach a stranger.
CUSTOMER_EMAILS_DIFFER = "duplicate customer_id with different emails (no row kept)"
#: An invalid email is only a warning: losing a customer's history over a typo would hurt every
#: later signal, and delivery refuses the address anyway.
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
INVALID_EMAIL = "invalid email syntax"
LOCALE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})?$")
INVALID_LOCALE = "invalid locale {value!r} (use a language code such as en or fr)"
UNKNOWN_TIMEZONE = "unknown timezone {value!r} (use an IANA name such as America/Toronto)"
UNKNOWN_CONSENT = (f"unknown marketing_consent {{value!r}} "
                   f"(expected {', '.join(shop_schema.CONSENT_VALUES)})")
#: Blanks with a safe default: (default, the warning).
CUSTOMER_DEFAULTS: dict[str, tuple[str, str]] = {
    "locale": ("en", "missing locale, en assumed"),
    "timezone": ("UTC", "missing timezone, UTC assumed"),
    "marketing_consent": ("none", "missing marketing_consent, read as none"),
}
CONSENT_AT = Timestamp("consent_at", required=False)
CREATED_AT = Timestamp("created_at", required=True)
UNSUBSCRIBED_AT = Timestamp("unsubscribed_at", required=False)


@lru_cache(maxsize=4096)
def is_timezone(name: str) -> bool:
    """Whether ``name`` is a time zone this machine knows (an IANA name)."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


# --- orders ---------------------------------------------------------------------------------

ORDER_WITHOUT_ID = "order without an order_id"
ORDER_WITHOUT_CUSTOMER = "order without a customer"
ORDER_UNKNOWN_CUSTOMER = "order for an unknown customer"
ORDERED_AT = Timestamp("ordered_at", required=True, missing="unparseable ordered_at timestamp",
                       unparseable="unparseable ordered_at timestamp")
TOTAL = Number("total", maximum=ABSURD_TOTAL, missing="total is not a number",
               not_a_number="total is not a number", negative="negative order total",
               too_large=f"order total above {ABSURD_TOTAL:,.0f} (absurd amount)")
CURRENCY = re.compile(r"^[A-Z]{3}$")
INVALID_CURRENCY = "invalid currency {value!r} (use a 3-letter code such as CAD)"
#: The reader keeps a duplicated order_id's earliest row (then the smallest customer_id).
ORDER_DUPLICATE = "duplicate order_id (the first occurrence was kept)"
#: The reader's alone: an order dated after the run's own date (wall clock, UTC).
ORDER_IN_FUTURE = "ordered_at in the future (after the run's date, {date} UTC)"

# --- order lines ----------------------------------------------------------------------------

LINE_UNKNOWN_ORDER = "order line for an unknown order"
LINE_UNKNOWN_SKU = "order line with an unknown sku"
LINE_BAD_QUANTITY = "order line quantity is not a positive whole number"
LINE_ABSURD_QUANTITY = f"order line quantity above {MAX_QUANTITY:,} (absurd amount)"
QUANTITY = Number("quantity", whole=True, minimum=1, maximum=MAX_QUANTITY,
                  **dict.fromkeys(("missing", "not_a_number", "negative", "too_small",
                                   "fraction"), LINE_BAD_QUANTITY),
                  too_large=LINE_ABSURD_QUANTITY)
UNIT_PRICE = Number("unit_price")
