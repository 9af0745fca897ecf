"""The row rules of the shop tables."""

from __future__ import annotations

#: An order total above this is treated as a data error (a price typed in cents, a test order).
ABSURD_TOTAL = 1_000_000.0
