"""One small exception tree for Tend, so callers can catch narrowly.

::

    TendError
    ├── ConfigError        a setting, connection or file is missing or malformed
    ├── DataError          input data cannot be used as a whole (a bad CSV header, a missing table)
    ├── TemplateError      a template is missing, broken, or needs a variable the program lacks
    ├── LedgerError        the contact store refused a state transition
    └── DeliveryError      a message could not be handed to the delivery backend
        └── DeliveryAuthError   the backend rejected our credentials: stop the run at once

Row-level problems (one bad order, one bad email) are *not* exceptions: they are quarantined
with a reason and counted, so a night never crashes on one bad row. Every message says what to
do about the problem, not only what it is.
"""

from __future__ import annotations


class TendError(Exception):
    """Base of every error Tend raises on purpose."""


class ConfigError(TendError):
    """A setting, connection or file is missing or malformed; the message says how to fix it."""


class DataError(TendError):
    """Input data cannot be used as a whole (as opposed to a bad row, which is quarantined)."""


class TemplateError(TendError):
    """A template is missing, fails to render, or lacks a part compliance requires."""

    def __init__(self, message: str, *, template: str | None = None) -> None:
        super().__init__(message)
        self.template = template


class LedgerError(TendError):
    """The contact ledger refused a state transition (a bug, or two writers racing)."""


class DeliveryError(TendError):
    """A message could not be delivered by the backend."""


class DeliveryAuthError(DeliveryError):
    """Credentials were rejected: no later message can succeed, so the run stops at once."""
