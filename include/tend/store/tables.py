"""SQLAlchemy Core description of the contact store (the migrations create exactly this).

Ledger statuses follow the protocol of ``tend.store.ledger``: ``claimed -> sending -> sent |
failed | unknown``.
The message id is a hash of (customer_id, program, occurrence) and the ledger's primary key,
which is what makes a rerun of a night send nothing new: the same candidate is the same row.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

metadata = MetaData()


class MessageId(TypeDecorator[str]):
    """A message id: 32 hex digits (128 bits of a SHA-256) in Python and on SQLite, PostgreSQL's
    16-byte ``uuid`` in the store (migration 0007).

    The ledger's primary key takes a night's claims in random order (it is a hash), so its size
    is what a claim pays for: 16 bytes a key instead of 33 halves that index. Values read back
    are the same 32-digit strings the code computes (no hyphens).
    """

    impl = String(40)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.UUID(as_uuid=False))
        return dialect.type_descriptor(String(40))

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else str(value).replace("-", "")


LEDGER_STATUSES = ("claimed", "sending", "sent", "failed", "unknown")
#: What a message is, for the law and the links it must carry (programs.yaml, the ledger's
#: ``kind``, the renderer's compliance checks all take them from here).
MESSAGE_KINDS = ("marketing", "service", "transactional")

#: How the ``product_*`` columns of ``customer_features`` are packed: each holds one
#: little-endian value per product the customer bought (``products`` of them, in the order of
#: the skus' text), as this NumPy dtype. ``product_sku`` is a code from ``feature_skus``; days
#: are days since 1970-01-01; NaN stands for "no value" (a product bought once has no gap).
#: Packed because a customer buys several products: as rows of their own, the (customer,
#: product) pairs would cost more to write and read than everything else in the store together.
PRODUCT_COLUMNS: dict[str, str] = {
    "sku": "<i4", "days": "<i4", "first_day": "<i4", "last_day": "<i4", "quantity": "<i8",
    "last_quantity": "<i8", "gap_median": "<f8", "unit_gap_median": "<f8", "phase_cos": "<f8",
    "phase_sin": "<f8", "season_days": "<i4",
}

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
    # the profile (tend.features.columns.PROFILE_COLUMNS)
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
    # the products the customer bought (tend.features.columns.SKU_COLUMNS), packed: see
    # PRODUCT_COLUMNS
    Column("products", Integer, nullable=False),
    *(Column(f"product_{name}", LargeBinary, nullable=False) for name in PRODUCT_COLUMNS),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    sqlite_with_rowid=False,
)

#: The codes of ``product_sku``: given once, never changed or reused, so rows written on
#: different nights agree.
feature_skus = Table(
    "feature_skus",
    metadata,
    Column("code", Integer, primary_key=True, autoincrement=False),
    Column("sku", String(64), nullable=False, unique=True),
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
    Column("message_id", MessageId(), primary_key=True),
    Column("customer_id", String(64), nullable=False),
    Column("program", String(100), nullable=False),
    Column("occurrence", String(100), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("as_of", Date, nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("batch_id", Integer, nullable=False),
    # The render contexts live in context_batches: the ledger stays narrow, because every
    # claim scans a window of it and the contexts are most of a message's bytes.
    Column("claimed_at", DateTime(timezone=True), nullable=False),
    Column("sending_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("provider_id", String(200)),
    Column("error", Text),
    # Quiet hours: when the provider was asked to deliver (None = at once).
    Column("send_at", DateTime(timezone=True)),
    # The fencing token of the send lease under which the row was marked 'sending' (migration
    # 0011): a worker may only record results on rows carrying its own token.
    Column("lease_token", Integer),
)
# Few indexes on purpose: every one is paid for on each claim of a million-row night, and an
# index whose keys arrive in random order (a customer id, a hash) costs the most. The primary
# key is the hash of (customer_id, program, occurrence), so it alone keeps every message unique
# (no second unique index on those three columns); (as_of, batch_id) grows at its end each
# night and serves the send stage and the rules' date windows.
Index("ix_ledger_night_batch", contact_ledger.c.as_of, contact_ledger.c.batch_id)

#: Everything needed to render a claimed message again identically: each claimed batch's JSON
#: render contexts, one row per (night, batch), compressed together (``tend.store.ledger``:
#: ``message_id<TAB>json`` lines, Arrow's zstd). Written in the same transaction as the claims,
#: read a batch at a time by the send stage. Compressed, a night's contexts take a fraction of
#: their size as text, on disk and in the WAL.
context_batches = Table(
    "context_batches",
    metadata,
    Column("as_of", Date, primary_key=True),
    Column("batch_id", Integer, primary_key=True),
    Column("messages", Integer, nullable=False),
    Column("codec", String(16), nullable=False),  # "zstd" (Arrow's) or "none"
    Column("raw_bytes", Integer, nullable=False),
    Column("payload", LargeBinary, nullable=False),
)


def _run_log_columns() -> list[Column[Any]]:
    """The first columns of a log of what the runs of each night did: a row id, the night and
    the run (fresh Column objects for each table)."""
    return [
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("as_of", Date, nullable=False),
        Column("run_id", String(250), nullable=False),
    ]


decision_log = Table(
    "decision_log",
    metadata,
    *_run_log_columns(),
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
    *_run_log_columns(),
    Column("source", String(32), nullable=False),
    Column("record_key", String(200)),
    Column("reason", Text, nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("source", "record_key", "reason", name="uq_quarantine_record"),
)

# -- signal features (migrations 0002, 0008, 0009) -------------------------------------------
# The shop's clean orders per UTC day (DAILY_COLUMNS), rewritten from the first day a night
# touches. The per-customer features are all in customer_features above.

shop_daily = Table(
    "shop_daily",
    metadata,
    Column("day", Date, primary_key=True),
    Column("orders", Integer, nullable=False),
    Column("revenue", Float, nullable=False),
)

# -- what comes back (migration 0010): the public endpoints service writes these ---------------

#: A customer's own choices from the preferences page; planning honours every one of them
#: (tend.programs.plan) and ``tend why`` names them.
preferences = Table(
    "preferences",
    metadata,
    Column("customer_id", String(64), primary_key=True),
    # no marketing before this day (inclusive of the day before it)
    Column("paused_until", Date),
    # a tighter personal cap on marketing (tend.programs.caps)
    Column("fewer_emails", Boolean, nullable=False, server_default=false()),
    # no offers or win-backs, but service reminders (check-ups, replenishment) still come
    Column("offers_opt_out", Boolean, nullable=False, server_default=false()),
    # the language the customer chose; None = the shop's record
    Column("locale", String(8)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: One answer per survey message; a later click changes it. ``sku`` is the product asked about.
survey_answers = Table(
    "survey_answers",
    metadata,
    Column("message_id", MessageId(), primary_key=True),
    Column("customer_id", String(64), nullable=False),
    Column("program", String(100), nullable=False),
    Column("sku", String(64)),
    Column("rating", Integer, nullable=False),
    Column("comment", Text),
    Column("answered_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: An unhappy customer (a low survey rating, a spam report): marketing to them pauses while a
#: complaint is open (tend.store.suppressions.active), staff get a daily digest, and
#: ``tend complaints resolve`` closes it.
complaints = Table(
    "complaints",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("customer_id", String(64), nullable=False),
    Column("message_id", MessageId()),
    Column("source", String(32), nullable=False),  # survey | spam_report
    Column("rating", Integer),
    Column("comment", Text),
    Column("opened_at", DateTime(timezone=True), nullable=False),
    Column("notified_at", DateTime(timezone=True)),  # in a staff digest
    Column("resolved_at", DateTime(timezone=True)),
    Column("note", Text),
)
Index("ix_complaints_customer", complaints.c.customer_id)

#: What SendGrid reported about each message (processed, delivered, deferred, open, click,
#: bounce...), keyed by SendGrid's ``sg_event_id`` so a retried delivery changes nothing.
message_events = Table(
    "message_events",
    metadata,
    Column("event_id", String(100), primary_key=True),
    Column("message_id", MessageId()),
    Column("customer_id", String(64)),
    Column("event", String(32), nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("detail", Text),
)
Index("ix_message_events_message", message_events.c.message_id)

# -- results (migration 0012): what each program earns against its holdout (tend.results) ---

#: The nightly KPI task's figures for the Tend page: one row per (month, program) of the months
#: it recomputed (program "(all)": every program together), replaced as a whole each night,
#: because a month's responses keep arriving until its last attribution window closes.
#: Lift columns are NULL (with a ``note``) when the holdout is too small to say anything.
kpi = Table(
    "kpi",
    metadata,
    Column("month", String(7), primary_key=True),  # YYYY-MM of the contact nights
    Column("program", String(100), primary_key=True),
    Column("as_of", Date, nullable=False),  # the night that computed it (orders known up to it)
    Column("contacted", Integer, nullable=False),
    Column("held_out", Integer, nullable=False),
    Column("responses", Integer, nullable=False),
    Column("holdout_responses", Integer, nullable=False),
    Column("response_rate", Float),
    Column("holdout_response_rate", Float),
    Column("lift", Float),
    Column("lift_low", Float),
    Column("lift_high", Float),
    Column("revenue_per_contacted", Float),
    Column("revenue_per_held_out", Float),
    Column("revenue_lift", Float),
    Column("revenue_lift_low", Float),
    Column("revenue_lift_high", Float),
    Column("direct_responses", Integer, nullable=False),
    Column("reactivation_rate", Float),
    Column("messages", Integer, nullable=False),
    Column("contacts_per_customer", Float),
    Column("unsubscribe_rate", Float),
    Column("complaint_rate", Float),
    Column("window_days", Integer),
    Column("open_windows", Integer, nullable=False),
    Column("note", Text, nullable=False),
    Column("computed_at", DateTime(timezone=True), nullable=False),
)

# -- campaigns (migration 0013): one-off sends from the tend_campaign form ---------------------

#: One row per campaign name (its identity: the ledger key of its messages is (customer,
#: ``campaign:NAME``, NAME), so triggering the same name again sends nobody a second copy).
#: ``params`` is the form of its last run, ``dry_run_report`` the last dry run's report and
#: ``report`` the last real run's (JSON), for the task log and the Tend page.
campaigns = Table(
    "campaigns",
    metadata,
    Column("name", String(60), primary_key=True),
    Column("template", String(100), nullable=False),
    Column("audience", String(32), nullable=False),
    # one of tend.store.campaigns.STATUSES
    Column("status", String(16), nullable=False),
    Column("as_of", Date, nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("params", Text, nullable=False),
    Column("dry_run_report", Text),
    Column("report", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: The customer ids of an uploaded audience (``tend campaign upload-audience NAME FILE.csv``).
campaign_audiences = Table(
    "campaign_audiences",
    metadata,
    Column("audience", String(60), primary_key=True),
    Column("customer_id", String(64), primary_key=True),
    Column("uploaded_at", DateTime(timezone=True), nullable=False),
)

# -- send leases (migration 0011) --------------------------------------------------------------

#: Who may send a (night, batch) right now. ``token`` grows by one with every new holder and is
#: written on each ledger row its holder marks 'sending'; every ledger update of a send carries
#: it, so a worker whose lease was taken over (it stalled past ``expires_at``) can neither mark
#: more rows nor touch the new holder's (tend.store.ledger). ``holder`` is host:pid, so a holder
#: on the same host that is no longer running is taken over at once; ``expires_at`` NULL means
#: released.
batch_leases = Table(
    "batch_leases",
    metadata,
    Column("as_of", Date, primary_key=True),
    Column("batch_id", Integer, primary_key=True),
    Column("token", Integer, nullable=False),
    Column("holder", String(200)),
    Column("acquired_at", DateTime(timezone=True)),
    Column("expires_at", DateTime(timezone=True)),
)

# -- nights never planned (migration 0014) ----------------------------------------------------

#: An ingested night that a later ingest overtook before any tend_programs run planned it: the
#: store keeps one night's features, and the run that found it planned the newer night
#: (``overtaken_by``) instead. Read with ``tend.store.nights``: a night planned since (a
#: replay) no longer counts as unplanned.
unplanned_nights = Table(
    "unplanned_nights",
    metadata,
    Column("as_of", Date, primary_key=True),
    Column("overtaken_by", Date, nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)
