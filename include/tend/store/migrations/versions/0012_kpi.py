"""The nightly results: per month and program, contacted and held-out customers, response
rates, revenue per customer and the lift with its 95 % interval (tend.results).

Revision ID: 0012
Revises: 0010
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kpi",
        sa.Column("month", sa.String(7), primary_key=True),
        sa.Column("program", sa.String(100), primary_key=True),
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Column("contacted", sa.Integer, nullable=False),
        sa.Column("held_out", sa.Integer, nullable=False),
        sa.Column("responses", sa.Integer, nullable=False),
        sa.Column("holdout_responses", sa.Integer, nullable=False),
        sa.Column("response_rate", sa.Float),
        sa.Column("holdout_response_rate", sa.Float),
        sa.Column("lift", sa.Float),
        sa.Column("lift_low", sa.Float),
        sa.Column("lift_high", sa.Float),
        sa.Column("revenue_per_contacted", sa.Float),
        sa.Column("revenue_per_held_out", sa.Float),
        sa.Column("revenue_lift", sa.Float),
        sa.Column("revenue_lift_low", sa.Float),
        sa.Column("revenue_lift_high", sa.Float),
        sa.Column("direct_responses", sa.Integer, nullable=False),
        sa.Column("reactivation_rate", sa.Float),
        sa.Column("messages", sa.Integer, nullable=False),
        sa.Column("contacts_per_customer", sa.Float),
        sa.Column("unsubscribe_rate", sa.Float),
        sa.Column("complaint_rate", sa.Float),
        sa.Column("window_days", sa.Integer),
        sa.Column("open_windows", sa.Integer, nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("kpi")
