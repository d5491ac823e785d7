"""Added: the tenants table, one row per tenant for the operator's list.

Filled from the ledger (balance), the alerts (status by `status_seq`, auto-recharge
suspended) and the commands (settings, limits, billing's answers); see
processor/sink/tenants.py. Each row remembers the last offset it applied per topic.

Revision ID: 0004_tenants
Revises: 0003_ledger_actor
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_tenants"
down_revision = "0003_ledger_actor"
branch_labels = None
depends_on = None


def upgrade() -> None:
    money = sa.Text().with_variant(sa.Numeric(), "postgresql")
    when = sa.DateTime(timezone=True)
    op.create_table(
        "tenants",
        sa.Column("tenant_id", sa.Text(), primary_key=True),
        sa.Column("currency", sa.Text(), nullable=True),
        sa.Column("balance", money, nullable=True),
        sa.Column("status", sa.Text(), nullable=True),
        sa.Column("status_seq", sa.Integer(), nullable=True),
        sa.Column("credit_limit", money, nullable=True),
        sa.Column("notify_below", money, nullable=True),
        sa.Column("trigger_balance", money, nullable=True),
        sa.Column("suspended", sa.Boolean(), nullable=False),
        sa.Column("suspended_changed_at", when, nullable=True),
        sa.Column("recharge_failures", sa.Integer(), nullable=False),
        sa.Column("last_failure_reason", sa.Text(), nullable=True),
        sa.Column("exhausted", sa.Boolean(), nullable=False),
        sa.Column("below_low", sa.Boolean(), nullable=False),
        sa.Column("ledger_offset", sa.BigInteger(), nullable=True),
        sa.Column("alerts_offset", sa.BigInteger(), nullable=True),
        sa.Column("commands_offset", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", when, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("tenants")
