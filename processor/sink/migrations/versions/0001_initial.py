"""The sink's first schema: ledger entries, recharge requests and outcomes, offsets.

Money is exact: NUMERIC on PostgreSQL, the decimal text itself on SQLite (whose
NUMERIC affinity would turn "0.1320" into a binary float). Timestamps are UTC.

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
    money = sa.Text().with_variant(sa.Numeric(), "postgresql")
    when = sa.DateTime(timezone=True)
    op.create_table(
        "ledger_entries",
        sa.Column("entry_id", sa.Text(), primary_key=True),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("amount", money, nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("balance_after", money, nullable=False),
        sa.Column("cause_topic", sa.Text(), nullable=False),
        sa.Column("cause_id", sa.Text(), nullable=False),
        sa.Column("occurred_at", when, nullable=False),
        sa.Column("recorded_at", when, nullable=False),
        sa.Column("rate_prefix", sa.Text(), nullable=True),
        sa.Column("rate_per_minute", money, nullable=True),
        sa.Column("billed_seconds", sa.Integer(), nullable=True),
        sa.Column("source_partition", sa.Integer(), nullable=False),
        sa.Column("source_offset", sa.BigInteger(), nullable=False),
    )
    op.create_index(
        "ledger_entries_by_position",
        "ledger_entries",
        ["tenant_id", "source_partition", "source_offset"],
    )
    op.create_index("ledger_entries_by_time", "ledger_entries", ["tenant_id", "occurred_at"])
    op.create_table(
        "recharge_requests",
        sa.Column("request_id", sa.Text(), primary_key=True),
        sa.Column("attempt", sa.Integer(), primary_key=True),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("amount", money, nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("trigger_balance", money, nullable=False),
        sa.Column("balance", money, nullable=False),
        sa.Column("requested_at", when, nullable=False),
        sa.Column("source_partition", sa.Integer(), nullable=False),
        sa.Column("source_offset", sa.BigInteger(), nullable=False),
    )
    op.create_index("recharge_requests_by_tenant", "recharge_requests", ["tenant_id"])
    op.create_table(
        "recharge_outcomes",
        sa.Column("command_id", sa.Text(), primary_key=True),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("recharge_request_id", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("amount", money, nullable=True),
        sa.Column("currency", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("occurred_at", when, nullable=False),
        sa.Column("source_partition", sa.Integer(), nullable=False),
        sa.Column("source_offset", sa.BigInteger(), nullable=False),
    )
    op.create_index(
        "recharge_outcomes_by_request", "recharge_outcomes", ["tenant_id", "recharge_request_id"]
    )
    op.create_table(
        "sink_offsets",
        sa.Column("consumer_group", sa.Text(), primary_key=True),
        sa.Column("topic", sa.Text(), primary_key=True),
        sa.Column("partition", sa.Integer(), primary_key=True),
        sa.Column("next_offset", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    for table in ("sink_offsets", "recharge_outcomes", "recharge_requests", "ledger_entries"):
        op.drop_table(table)
