"""One feature row per customer: the profile folded in, the products packed into it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24

Before, a customer's features were three tables: ``customer_features``, ``customer_profile`` and
one ``customer_sku_features`` row per product bought (~4 million rows for a million customers).
Writing and reading those rows was the largest single cost of a full rebuild. Now they are one
``customer_features`` row: the profile's columns beside the base ones, and each product feature
as one little-endian array per customer (``product_*``, see ``tend.store.tables``), with skus
as codes from ``feature_skus``.

Features are derived data: the upgrade drops them and forgets the ingest watermark, so the
next night (or ``tend ingest``) rebuilds them in full from the shop. The downgrade does the same
the other way.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
_PRODUCT = ("sku", "days", "first_day", "last_day", "quantity", "last_quantity", "gap_median",
            "unit_gap_median", "phase_cos", "phase_sin", "season_days")


def _base() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Column("orders_count", sa.Integer, nullable=False),
        sa.Column("first_order_at", TZ, nullable=False),
        sa.Column("last_order_at", TZ, nullable=False),
        sa.Column("total_spent", sa.Float, nullable=False),
        sa.Column("avg_order_value", sa.Float, nullable=False),
        sa.Column("mean_interval_days", sa.Float),
        sa.Column("median_interval_days", sa.Float),
    ]


def _profile() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
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
    ]


def _sqlite_kw() -> dict[str, object]:
    # clustered by the key on SQLite, as migration 0008 made them
    return {"sqlite_with_rowid": False}


def _forget_watermark() -> None:
    op.execute("DELETE FROM ingest_state WHERE name = 'orders'")


def upgrade() -> None:
    for table in ("customer_sku_features", "customer_profile", "customer_features"):
        op.drop_table(table)
    op.create_table(
        "customer_features",
        *_base(),
        *_profile(),
        sa.Column("products", sa.Integer, nullable=False),
        *(sa.Column(f"product_{name}", sa.LargeBinary, nullable=False) for name in _PRODUCT),
        sa.Column("updated_at", TZ, nullable=False),
        **_sqlite_kw(),
    )
    op.create_table(
        "feature_skus",
        sa.Column("code", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("sku", sa.String(64), nullable=False, unique=True),
    )
    _forget_watermark()


def downgrade() -> None:
    op.drop_table("feature_skus")
    op.drop_table("customer_features")
    op.create_table("customer_features", *_base(),
                    sa.Column("updated_at", TZ, nullable=False), **_sqlite_kw())
    op.create_table("customer_profile", sa.Column("customer_id", sa.String(64), primary_key=True),
                    sa.Column("as_of", sa.Date, nullable=False), *_profile(),
                    sa.Column("updated_at", TZ, nullable=False), **_sqlite_kw())
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
        **_sqlite_kw(),
    )
    _forget_watermark()
