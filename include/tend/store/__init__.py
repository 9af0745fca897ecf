"""The contact store: everything Tend knows that the shop's own database does not.

Customer features, the contact ledger (what was claimed and sent to whom), the decision log
(why each candidate did or did not get a message), suppressions and quarantined rows. SQLite by
default, PostgreSQL in production; the schema is owned by Alembic migrations in
``migrations/`` and described once, in SQLAlchemy Core, in ``tables.py``.
"""

from tend.store.db import connect, migrate

__all__ = ["connect", "migrate"]
