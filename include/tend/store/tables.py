"""SQLAlchemy Core description of the contact store (the migrations create exactly this).

Ledger statuses follow DESIGN.md's protocol: ``claimed -> sending -> sent | failed | unknown``.
The unique key (customer_id, program, occurrence) is what makes a rerun of a night send nothing
new: the same candidate claims the same row, and the insert is a no-op.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

LEDGER_STATUSES = ("claimed", "sending", "sent", "failed", "unknown")
MESSAGE_KINDS = ("marketing", "service", "transactional")

customer_features = Table(
    "customer_features",
    metadata,
    Column("customer_id", String(64), primary_key=True),
    Column("as_of", Date, nullable=False),
    Column("orders_count", Integer, nullable=False),
    Column("first_order_at", DateTime(timezone=True), nullable=False),
    Column("last_order_at", DateTime(timezone=True), nullable=False),
    Column("total_spent", Float, nullable=False),
    Column("avg_order_value", Float, nullable=False),
    Column("mean_interval_days", Float),
    Column("median_interval_days", Float),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

ingest_state = Table(
    "ingest_state",
    metadata,
    Column("name", String(64), primary_key=True),
    # Orders with ordered_at <= watermark have been folded into the features.
    Column("watermark", DateTime(timezone=True), nullable=False),
    Column("as_of", Date, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

contact_ledger = Table(
    "contact_ledger",
    metadata,
    Column("message_id", String(40), primary_key=True),
    Column("customer_id", String(64), nullable=False),
    Column("program", String(100), nullable=False),
    Column("occurrence", String(100), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("as_of", Date, nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("batch_id", Integer, nullable=False),
    # The render context lives in message_contexts: the ledger stays narrow, because every
    # claim scans a window of it and the contexts are most of a message's bytes.
    Column("claimed_at", DateTime(timezone=True), nullable=False),
    Column("sending_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("provider_id", String(200)),
    Column("error", Text),
    # Quiet hours: when the provider was asked to deliver (None = at once).
    Column("send_at", DateTime(timezone=True)),
)
# Few indexes on purpose: every one is paid for on each claim of a million-row night, and an
# index whose keys arrive in random order (a customer id, a hash) costs the most. The primary
# key is the hash of (customer_id, program, occurrence), so it alone keeps every message unique
# (migration 0004 dropped the second unique index on those three columns); (as_of, batch_id)
# grows at its end each night and serves the send stage and the rules' date windows.
Index("ix_ledger_night_batch", contact_ledger.c.as_of, contact_ledger.c.batch_id)

#: Everything needed to render a claimed message again identically (JSON), written in the same
#: transaction as its claim and read once per send. Keyed by (as_of, batch_id, message_id): a
#: claim writes its batches in that order, so the key only ever grows at its end, and the send
#: stage reads a batch at a time.
message_contexts = Table(
    "message_contexts",
    metadata,
    Column("as_of", Date, primary_key=True),
    Column("batch_id", Integer, primary_key=True),
    Column("message_id", String(40), primary_key=True),
    Column("context", Text, nullable=False),
)

decision_log = Table(
    "decision_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("as_of", Date, nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("customer_id", String(64), nullable=False),
    Column("program", String(100), nullable=False),
    # sent path: "claimed"; otherwise e.g. "capped:3d", "suppressed:unsubscribed", "no_consent".
    Column("fate", String(64), nullable=False),
    Column("reason", Text, nullable=False),
    Column("message_id", String(40)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("occurrence", String(100), nullable=False, server_default=""),
    UniqueConstraint("as_of", "customer_id", "program", "occurrence", name="uq_decision_night"),
)
Index("ix_decision_customer", decision_log.c.customer_id, decision_log.c.as_of)

#: Candidates that lost tonight to a cap, a cooldown or a better message but are still
#: relevant: they compete again every night until ``valid_until`` passes, then expire.
deferred = Table(
    "deferred",
    metadata,
    Column("customer_id", String(64), primary_key=True),
    Column("program", String(100), primary_key=True),
    Column("occurrence", String(100), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("score", Float, nullable=False),
    Column("cooldown_days", Integer, nullable=False),
    Column("valid_until", Date, nullable=False),
    Column("last_order_date", Date),
    Column("context", Text, nullable=False),
    Column("first_deferred_on", Date, nullable=False),
    Column("last_reason", Text, nullable=False),
)

suppressions = Table(
    "suppressions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("customer_id", String(64), nullable=False),
    Column("email", String(320)),
    # unsubscribed | hard_bounce | spam_report | invalid_address | do_not_disturb | complaint
    Column("reason", String(32), nullable=False),
    Column("source", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # A complaint is open until resolved; other reasons never expire.
    Column("resolved_at", DateTime(timezone=True)),
    UniqueConstraint("customer_id", "reason", name="uq_suppression"),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("as_of", Date, nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("source", String(32), nullable=False),
    Column("record_key", String(200)),
    Column("reason", Text, nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("source", "record_key", "reason", name="uq_quarantine_record"),
)

# -- signal features (migration 0002) ---------------------------------------------------------
# The profile beside customer_features (tend.features.PROFILE_COLUMNS), one row per customer and
# product bought (SKU_COLUMNS), and the shop's clean orders per UTC day (DAILY_COLUMNS). All are
# rewritten for the changed customers (and the days since the watermark) each night.

customer_profile = Table(
    "customer_profile",
    metadata,
    Column("customer_id", String(64), primary_key=True),
    Column("as_of", Date, nullable=False),
    Column("order_days", Integer, nullable=False),
    Column("gap_log_mean", Float),
    Column("gap_log_var", Float),
    Column("last_day_spent", Float, nullable=False),
    Column("season_doy", Float, nullable=False),
    Column("season_r", Float, nullable=False),
    Column("season_cycles", Integer, nullable=False),
    Column("season_years", Integer, nullable=False),
    Column("season_share", Float, nullable=False),
    Column("season_sku", String(64)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

customer_sku_features = Table(
    "customer_sku_features",
    metadata,
    Column("customer_id", String(64), primary_key=True),
    Column("sku", String(64), primary_key=True),
    Column("days", Integer, nullable=False),
    Column("first_day", Date, nullable=False),
    Column("last_day", Date, nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("last_quantity", Integer, nullable=False),
    Column("gap_median", Float),
    Column("unit_gap_median", Float),
    Column("phase_cos", Float, nullable=False),
    Column("phase_sin", Float, nullable=False),
    Column("season_days", Integer, nullable=False),
)

shop_daily = Table(
    "shop_daily",
    metadata,
    Column("day", Date, primary_key=True),
    Column("orders", Integer, nullable=False),
    Column("revenue", Float, nullable=False),
)
