"""Arbitration: deferred candidates, decisions per occurrence, send_at, leaner ledger indexes.

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "deferred",
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sa.Column("program", sa.String(100), primary_key=True),
        sa.Column("occurrence", sa.String(100), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("cooldown_days", sa.Integer, nullable=False),
        sa.Column("valid_until", sa.Date, nullable=False),
        sa.Column("last_order_date", sa.Date),
        sa.Column("context", sa.Text, nullable=False),
        sa.Column("first_deferred_on", sa.Date, nullable=False),
        sa.Column("last_reason", sa.Text, nullable=False),
    )
    with op.batch_alter_table("decision_log") as batch:
        batch.add_column(sa.Column("occurrence", sa.String(100), nullable=False,
                                   server_default=""))
        batch.drop_constraint("uq_decision_night", type_="unique")
        batch.create_unique_constraint(
            "uq_decision_night", ["as_of", "customer_id", "program", "occurrence"])
    with op.batch_alter_table("contact_ledger") as batch:
        batch.add_column(sa.Column("send_at", TZ))
    # Every ledger index is paid for on each claim; keep the ones the queries use.
    op.drop_index("ix_ledger_status", "contact_ledger")
    op.drop_index("ix_ledger_customer_claimed", "contact_ledger")
    op.drop_index("ix_ledger_run_batch", "contact_ledger")
    op.create_index("ix_ledger_night_batch", "contact_ledger", ["as_of", "batch_id"])


def downgrade() -> None:
    op.drop_index("ix_ledger_night_batch", "contact_ledger")
    op.create_index("ix_ledger_run_batch", "contact_ledger", ["run_id", "batch_id"])
    op.create_index("ix_ledger_customer_claimed", "contact_ledger", ["customer_id", "claimed_at"])
    op.create_index("ix_ledger_status", "contact_ledger", ["status"])
    with op.batch_alter_table("contact_ledger") as batch:
        batch.drop_column("send_at")
    with op.batch_alter_table("decision_log") as batch:
        batch.drop_constraint("uq_decision_night", type_="unique")
        batch.create_unique_constraint("uq_decision_night", ["as_of", "customer_id", "program"])
        batch.drop_column("occurrence")
    op.drop_table("deferred")
