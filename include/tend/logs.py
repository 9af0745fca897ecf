"""Logging helpers: operators read these lines in Airflow task logs at 7am.

Emails never appear in full in a log line (``mask_email``), and tables are plain text so they
read the same in the Airflow UI, a terminal and a CI log.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

log = logging.getLogger("tend")


#: What a customer's text must not carry to a staff terminal or a mail client: control
#: characters but line feed and tab (escape sequences can rewrite or hide other lines), and the
#: bidi marks, overrides and isolates (they make text display otherwise than it reads).
HIDDEN = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def mask_email(email: str | None) -> str:
    """``marie.tremblay@example.com`` -> ``m***y@example.com``."""
    if not email or "@" not in email:
        return "<no address>"
    local, _, domain = email.rpartition("@")
    if len(local) <= 2:
        return f"{local[:1]}***@{domain}"
    return f"{local[0]}***{local[-1]}@{domain}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A fixed-width text table; numbers right-aligned with thousands separators."""

    def cell(v: object) -> str:
        if isinstance(v, bool):
            return str(v)
        if isinstance(v, int):
            return f"{v:,}"
        if isinstance(v, float):
            return f"{v:,.1f}"
        return "" if v is None else str(v)

    cells = [[cell(v) for v in r] for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [all(isinstance(r[i], int | float) for r in rows) and rows != [] for i in
               range(len(headers))]

    def fmt(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out = [fmt(list(headers)), "  ".join("-" * w for w in widths)]
    out.extend(fmt(r) for r in cells)
    return out
