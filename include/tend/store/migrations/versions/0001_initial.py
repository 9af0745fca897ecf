"""Initial contact store: features, ingest state, ledger, decisions, suppressions, quarantine.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "customer_features",
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Column("orders_count", sa.Integer, nullable=False),
        sa.Column("first_order_at", TZ, nullable=False),
        sa.Column("last_order_at", TZ, nullable=False),
        sa.Column("total_spent", sa.Float, nullable=False),
        sa.Column("avg_order_value", sa.Float, nullable=False),
        sa.Column("mean_interval_days", sa.Float),
        sa.Column("median_interval_days", sa.Float),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_table(
        "ingest_state",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("watermark", TZ, nullable=False),
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_table(
        "contact_ledger",
        sa.Column("message_id", sa.String(40), primary_key=True),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("program", sa.String(100), nullable=False),
        sa.Column("occurrence", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("batch_id", sa.Integer, nullable=False),
        sa.Column("context", sa.Text, nullable=False),
        sa.Column("claimed_at", TZ, nullable=False),
        sa.Column("sending_at", TZ),
        sa.Column("finished_at", TZ),
        sa.Column("provider_id", sa.String(200)),
        sa.Column("error", sa.Text),
        sa.UniqueConstraint("customer_id", "program", "occurrence", name="uq_ledger_key"),
    )
    op.create_index(
        "ix_ledger_customer_claimed", "contact_ledger", ["customer_id", "claimed_at"]
    )
    op.create_index("ix_ledger_run_batch", "contact_ledger", ["run_id", "batch_id"])
    op.create_index("ix_ledger_status", "contact_ledger", ["status"])
    op.create_table(
        "decision_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("program", sa.String(100), nullable=False),
        sa.Column("fate", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("message_id", sa.String(40)),
        sa.Column("created_at", TZ, nullable=False),
        sa.UniqueConstraint("as_of", "customer_id", "program", name="uq_decision_night"),
    )
    op.create_index("ix_decision_customer", "decision_log", ["customer_id", "as_of"])
    op.create_table(
        "suppressions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("email", sa.String(320)),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("resolved_at", TZ),
        sa.UniqueConstraint("customer_id", "reason", name="uq_suppression"),
    )
    op.create_table(
        "quarantine",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("record_key", sa.String(200)),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.UniqueConstraint("source", "record_key", "reason", name="uq_quarantine_record"),
    )


def downgrade() -> None:
    for table in ("quarantine", "suppressions", "decision_log", "contact_ledger",
                  "ingest_state", "customer_features"):
        op.drop_table(table)
