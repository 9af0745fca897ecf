"""The ledger keeps one unique index: its primary key, the hash of the message's key.

Revision ID: 0004
Revises: 0002
Create Date: 2026-11-23

``message_id`` is sha256(customer_id, program, occurrence), so the unique constraint on those
three columns said the same thing twice, and paid for it on every claim: on a 10M-row ledger,
inserting a night's 700k claims into a second index keyed in random order took longer than
everything else in the claim. "Already claimed" is now caught by the primary key.
"""

from alembic import op

revision = "0004"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("contact_ledger") as batch:
        batch.drop_constraint("uq_ledger_key", type_="unique")


def downgrade() -> None:
    with op.batch_alter_table("contact_ledger") as batch:
        batch.create_unique_constraint("uq_ledger_key", ["customer_id", "program", "occurrence"])


