"""Render contexts move out of the ledger into message_contexts.

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-23

Every claim scans a window of the ledger (cooldowns, caps, tonight's messages); the JSON render
contexts were most of each row's bytes, so the scans read mostly contexts. They now live in
their own table, keyed by (as_of, batch_id, message_id), which the send stage reads a batch at
a time and a claim only ever appends to.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "message_contexts",
        sa.Column("as_of", sa.Date, primary_key=True),
        sa.Column("batch_id", sa.Integer, primary_key=True),
        sa.Column("message_id", sa.String(40), primary_key=True),
        sa.Column("context", sa.Text, nullable=False),
    )
    op.execute("INSERT INTO message_contexts (as_of, batch_id, message_id, context) "
               "SELECT as_of, batch_id, message_id, context FROM contact_ledger")
    with op.batch_alter_table("contact_ledger") as batch:
        batch.drop_column("context")


def downgrade() -> None:
    with op.batch_alter_table("contact_ledger") as batch:
        batch.add_column(sa.Column("context", sa.Text, nullable=False, server_default="{}"))
    op.execute("UPDATE contact_ledger SET context = (SELECT m.context FROM message_contexts m "
               "WHERE m.message_id = contact_ledger.message_id "
               "AND m.as_of = contact_ledger.as_of AND m.batch_id = contact_ledger.batch_id) "
               "WHERE EXISTS (SELECT 1 FROM message_contexts m "
               "WHERE m.message_id = contact_ledger.message_id)")
    op.drop_table("message_contexts")
