"""Render contexts move out of the ledger into context_batches, compressed a batch at a time.

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-23

Every claim scans a window of the ledger (cooldowns, caps, tonight's messages); the JSON render
contexts were most of each row's bytes, so those scans read mostly contexts, and a night of a
million messages wrote ~530 MB of them. They now live beside the ledger, one row per claimed
batch, as ``message_id<TAB>json`` lines compressed with zstd (~8x smaller): see
``tend.store.ledger.write_contexts``. Existing contexts are moved batch by batch (the format is
written out here, so this migration does not change if the code's does).
"""

import datetime as dt

import pyarrow as pa
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None

_CODEC = "zstd"


def upgrade() -> None:
    op.create_table(
        "context_batches",
        sa.Column("as_of", sa.Date, primary_key=True),
        sa.Column("batch_id", sa.Integer, primary_key=True),
        sa.Column("messages", sa.Integer, nullable=False),
        sa.Column("codec", sa.String(16), nullable=False),
        sa.Column("raw_bytes", sa.Integer, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
    )
    conn = op.get_bind()
    batches = sa.table("context_batches", sa.column("as_of", sa.Date),
                       sa.column("batch_id"), sa.column("messages"), sa.column("codec"),
                       sa.column("raw_bytes"), sa.column("payload", sa.LargeBinary))
    nights = conn.execute(sa.text(
        "SELECT DISTINCT as_of, batch_id FROM contact_ledger ORDER BY as_of, batch_id")).all()
    for as_of, batch_id in nights:
        rows = conn.execute(sa.text(
            "SELECT message_id, context FROM contact_ledger WHERE as_of = :a AND batch_id = :b "
            "ORDER BY message_id"), {"a": as_of, "b": batch_id}).all()
        raw = "\n".join(f"{mid}\t{ctx.replace(chr(10), ' ')}" for mid, ctx in rows).encode()
        night = as_of if isinstance(as_of, dt.date) else dt.date.fromisoformat(str(as_of)[:10])
        conn.execute(batches.insert().values(
            as_of=night, batch_id=batch_id, messages=len(rows), codec=_CODEC,
            raw_bytes=len(raw), payload=pa.compress(raw, codec=_CODEC, asbytes=True)))
    with op.batch_alter_table("contact_ledger") as batch:
        batch.drop_column("context")


def downgrade() -> None:
    with op.batch_alter_table("contact_ledger") as batch:
        batch.add_column(sa.Column("context", sa.Text, nullable=False, server_default="{}"))
    conn = op.get_bind()
    for codec, raw_bytes, payload in conn.execute(sa.text(
            "SELECT codec, raw_bytes, payload FROM context_batches")).all():
        raw = bytes(payload) if codec == "none" else pa.decompress(
            bytes(payload), decompressed_size=raw_bytes, codec=codec, asbytes=True)
        for line in raw.decode("utf-8").split("\n"):
            mid, _, ctx = line.partition("\t")
            conn.execute(sa.text("UPDATE contact_ledger SET context = :c WHERE message_id = :m"),
                         {"c": ctx, "m": mid})
    op.drop_table("context_batches")
