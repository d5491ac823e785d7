"""Added: the status of every command (GET /commands/{command_id}).

One row per (tenant_id, command_id): `pending` once the command was seen on
credits.commands, then its outcome from credits.command-results.

Revision ID: 0002_commands
Revises: 0001
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_commands"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    when = sa.DateTime(timezone=True)
    op.create_table(
        "commands",
        sa.Column("tenant_id", sa.Text(), primary_key=True),
        sa.Column("command_id", sa.Text(), primary_key=True),
        sa.Column("command_type", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("entry_id", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("occurred_at", when, nullable=True),
        sa.Column("recorded_at", when, nullable=True),
    )
    op.create_index("commands_by_id", "commands", ["command_id"])


def downgrade() -> None:
    op.drop_table("commands")
