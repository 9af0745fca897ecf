"""Campaigns from the tend_campaign form: their parameters, status and reports, and the
audiences uploaded as CSV.

Revision ID: 0013
Revises: 0010
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("name", sa.String(60), primary_key=True),
        sa.Column("template", sa.String(100), nullable=False),
        sa.Column("audience", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("dry_run_report", sa.Text),
        sa.Column("report", sa.Text),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_table(
        "campaign_audiences",
        sa.Column("audience", sa.String(60), primary_key=True),
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sa.Column("uploaded_at", TZ, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("campaign_audiences")
    op.drop_table("campaigns")
