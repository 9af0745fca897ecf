"""Signal features: customer profile, per customer x product purchases, the shop's daily orders.

Revision ID: 0002
Revises: 0003
Create Date: 2026-11-23

The signals issue planned 0001 -> 0002 -> 0003, but 0003 (arbitration) landed first on top of
0001; 0002 therefore follows 0003 so the chain stays linear (one head).
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0003"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "customer_profile",
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Column("order_days", sa.Integer, nullable=False),
        sa.Column("gap_log_mean", sa.Float),
        sa.Column("gap_log_var", sa.Float),
        sa.Column("last_day_spent", sa.Float, nullable=False),
        sa.Column("season_doy", sa.Float, nullable=False),
        sa.Column("season_r", sa.Float, nullable=False),
        sa.Column("season_cycles", sa.Integer, nullable=False),
        sa.Column("season_years", sa.Integer, nullable=False),
        sa.Column("season_share", sa.Float, nullable=False),
        sa.Column("season_sku", sa.String(64)),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_table(
        "customer_sku_features",
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sa.Column("sku", sa.String(64), primary_key=True),
        sa.Column("days", sa.Integer, nullable=False),
        sa.Column("first_day", sa.Date, nullable=False),
        sa.Column("last_day", sa.Date, nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("last_quantity", sa.Integer, nullable=False),
        sa.Column("gap_median", sa.Float),
        sa.Column("unit_gap_median", sa.Float),
        sa.Column("phase_cos", sa.Float, nullable=False),
        sa.Column("phase_sin", sa.Float, nullable=False),
        sa.Column("season_days", sa.Integer, nullable=False),
    )
    op.create_table(
        "shop_daily",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("orders", sa.Integer, nullable=False),
        sa.Column("revenue", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("shop_daily", "customer_sku_features", "customer_profile"):
        op.drop_table(table)
