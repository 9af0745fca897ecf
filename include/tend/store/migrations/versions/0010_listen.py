"""What comes back from customers and from SendGrid: preferences, survey answers, complaints and
message events (the public endpoints service, ``tend serve``).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

from tend.store.tables import MessageId

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "preferences",
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sa.Column("paused_until", sa.Date),
        sa.Column("fewer_emails", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("offers_opt_out", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("locale", sa.String(8)),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_table(
        "survey_answers",
        sa.Column("message_id", MessageId(), primary_key=True),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("program", sa.String(100), nullable=False),
        sa.Column("sku", sa.String(64)),
        sa.Column("rating", sa.Integer, nullable=False),
        sa.Column("comment", sa.Text),
        sa.Column("answered_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_table(
        "complaints",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("message_id", MessageId()),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("rating", sa.Integer),
        sa.Column("comment", sa.Text),
        sa.Column("opened_at", TZ, nullable=False),
        sa.Column("notified_at", TZ),
        sa.Column("resolved_at", TZ),
        sa.Column("note", sa.Text),
    )
    op.create_index("ix_complaints_customer", "complaints", ["customer_id"])
    op.create_table(
        "message_events",
        sa.Column("event_id", sa.String(100), primary_key=True),
        sa.Column("message_id", MessageId()),
        sa.Column("customer_id", sa.String(64)),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("occurred_at", TZ, nullable=False),
        sa.Column("received_at", TZ, nullable=False),
        sa.Column("detail", sa.Text),
    )
    op.create_index("ix_message_events_message", "message_events", ["message_id"])


def downgrade() -> None:
    op.drop_index("ix_message_events_message", "message_events")
    op.drop_table("message_events")
    op.drop_index("ix_complaints_customer", "complaints")
    op.drop_table("complaints")
    op.drop_table("survey_answers")
    op.drop_table("preferences")
