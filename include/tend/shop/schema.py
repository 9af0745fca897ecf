"""The shop's data as Tend reads it: four tables a shop maps its own database onto.

Tend only ever *reads* the shop database through these names and columns (via SQL views on a
shop's own tables, or by loading CSV exports with ``tend load-csv``). ``tend demo-data`` and
``tend load-csv`` create them; a real shop usually creates views with the same names instead.

Timestamps are stored as UTC. Money is stored as NUMERIC in the shop's currency.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    inspect,
    text,
)

metadata = MetaData()

CONSENT_VALUES = ("express", "implied", "none")

customers = Table(
    "customers",
    metadata,
    Column("customer_id", String(64), primary_key=True),
    Column("email", String(320), nullable=False),
    Column("first_name", String(100)),
    Column("last_name", String(100)),
    Column("locale", String(16), nullable=False, server_default="en"),
    Column("timezone", String(64), nullable=False, server_default="UTC"),
    Column("marketing_consent", String(16), nullable=False, server_default="none"),
    Column("consent_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Optional: a shop may already know who unsubscribed before Tend existed.
    Column("unsubscribed_at", DateTime(timezone=True)),
)

products = Table(
    "products",
    metadata,
    Column("sku", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("category", String(100), nullable=False),
    Column("price", Numeric(12, 2), nullable=False),
    Column("service_interval_days", Integer),
    Column("replenish_days", Integer),
    # Space-separated related skus, e.g. "FILTER-01 DESCALER-02".
    Column("complements", Text),
)

orders = Table(
    "orders",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("customer_id", String(64), nullable=False, index=True),
    Column("ordered_at", DateTime(timezone=True), nullable=False, index=True),
    Column("total", Numeric(12, 2), nullable=False),
    Column("currency", String(3), nullable=False),
)

#: The optional ``orders.discount_code``: the voucher code an order redeemed (tend.results counts
#: a redeemed voucher as a direct response). Not in ``orders`` above, so a shop or a view without
#: it is complete and the writers of the four tables need not know it: ``orders_with_codes`` is
#: ``orders`` with it, for the code that reads or writes it, and ``add_discount_code`` adds it
#: to a shop database Tend created itself (``tend load-csv``, the demo shop).
DISCOUNT_CODE = "discount_code"
DISCOUNT_CODE_LENGTH = 64
orders_with_codes = Table(
    "orders",
    MetaData(),
    *(Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
      for c in orders.columns),
    Column(DISCOUNT_CODE, String(DISCOUNT_CODE_LENGTH)),
)


def has_discount_code(conn: Connection) -> bool:
    """Whether the shop's ``orders`` (table or view) has the optional ``discount_code``."""
    return DISCOUNT_CODE in {c["name"] for c in inspect(conn).get_columns(orders.name)}


def add_discount_code(conn: Connection) -> None:
    """Add the optional column to an ``orders`` table Tend created, when it lacks it."""
    if not has_discount_code(conn):
        conn.execute(text(f"ALTER TABLE {orders.name} ADD COLUMN {DISCOUNT_CODE} "
                          f"VARCHAR({DISCOUNT_CODE_LENGTH})"))

order_lines = Table(
    "order_lines",
    metadata,
    Column("order_id", String(64), nullable=False, index=True),
    Column("sku", String(64), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("unit_price", Numeric(12, 2), nullable=False),
)

#: The CSV headers ``tend load-csv`` expects, in order, per file.
CSV_COLUMNS: dict[str, tuple[str, ...]] = {
    "customers": (
        "customer_id", "email", "first_name", "last_name", "locale", "timezone",
        "marketing_consent", "consent_at", "created_at",
    ),
    "products": (
        "sku", "name", "category", "price", "service_interval_days", "replenish_days",
        "complements",
    ),
    "orders": ("order_id", "customer_id", "ordered_at", "total", "currency"),
    "order_lines": ("order_id", "sku", "quantity", "unit_price"),
}
