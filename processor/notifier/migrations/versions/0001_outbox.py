"""The notifier's first schema: the delivery outbox and the consumer's positions.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    when = sa.DateTime(timezone=True)
    op.create_table(
        "notifier_outbox",
        # <output id>/<channel>: one delivery per alert and channel, whoever reads it.
        sa.Column("delivery_id", sa.Text(), primary_key=True),
        sa.Column("output_id", sa.Text(), nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("event", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("sealed_secret", sa.Text(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("occurred_at", when, nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", when, nullable=False),
        sa.Column("claimed_by", sa.Text(), nullable=True),
        sa.Column("claimed_until", when, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("sent_at", when, nullable=True),
        sa.Column("source_partition", sa.Integer(), nullable=False),
        sa.Column("source_offset", sa.BigInteger(), nullable=False),
    )
    op.create_index("notifier_outbox_due", "notifier_outbox", ["status", "next_attempt_at"])
    op.create_table(
        "notifier_offsets",
        sa.Column("consumer_group", sa.Text(), primary_key=True),
        sa.Column("topic", sa.Text(), primary_key=True),
        sa.Column("partition", sa.Integer(), primary_key=True),
        sa.Column("next_offset", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("notifier_offsets")
    op.drop_index("notifier_outbox_due", table_name="notifier_outbox")
    op.drop_table("notifier_outbox")
