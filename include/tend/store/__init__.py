"""The contact store: everything Tend knows that the shop's own database does not.

Takes what the stages write — customer features, claims and their sending, decisions,
suppressions, quarantined rows — and gives them back to the next stage and the next night.
``tables`` describes the schema once, in SQLAlchemy Core (Alembic ``migrations/`` create exactly
that); ``ledger`` is the contact ledger's protocol (claim within caps, then walk each message to
a final state); ``deferral`` and ``suppressions`` keep the candidates waiting for a later night
and the addresses not to write to; ``bulk`` and ``sqlite_process`` are the bulk I/O (COPY,
scratch tables, ADBC in a helper process); ``db`` makes the engines and migrates. SQLite by
default, PostgreSQL in production.
"""

from tend.store.db import connect, migrate

__all__ = ["connect", "migrate"]
