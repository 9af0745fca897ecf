"""Nights never planned: an ingested night that a later ingest overtook before any
tend_programs run planned it (tend.store.nights), for the night's summary and the Tend page.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "unplanned_nights",
        sa.Column("as_of", sa.Date, primary_key=True),
        sa.Column("overtaken_by", sa.Date, nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("unplanned_nights")
