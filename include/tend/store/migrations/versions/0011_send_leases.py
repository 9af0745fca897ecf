"""Send leases: one fencing token per (night, batch), carried by every ledger update of a send.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "batch_leases",
        sa.Column("as_of", sa.Date, primary_key=True),
        sa.Column("batch_id", sa.Integer, primary_key=True),
        sa.Column("token", sa.Integer, nullable=False),
        sa.Column("holder", sa.String(200)),
        sa.Column("acquired_at", TZ),
        sa.Column("expires_at", TZ),
    )
    with op.batch_alter_table("contact_ledger") as batch:
        batch.add_column(sa.Column("lease_token", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("contact_ledger") as batch:
        batch.drop_column("lease_token")
    op.drop_table("batch_leases")
