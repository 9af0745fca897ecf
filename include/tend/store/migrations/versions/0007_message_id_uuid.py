"""On PostgreSQL, message ids are stored as ``uuid`` (16 bytes) instead of 32-character text.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23

The ledger's primary key receives every night's claims in random order (a message id is a
hash), so its size is the cost of a claim: half the bytes, half the index pages a night's
claims touch. The values are the same 128 bits; the code keeps reading and writing them as 32
hex digits (``tend.store.tables.MessageId``). SQLite keeps text.
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_TABLES = ("contact_ledger",)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in _TABLES:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN message_id TYPE uuid "
                   "USING message_id::uuid")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in _TABLES:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN message_id TYPE varchar(40) "
                   "USING replace(message_id::text, '-', '')")
