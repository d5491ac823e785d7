"""Who caused a ledger entry: the command's `actor` (issue 21 part 2), null before.

Revision ID: 0002_ledger_actor
Revises: 0001
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_ledger_actor"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("ledger_entries", sa.Column("actor", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ledger_entries") as batch:
        batch.drop_column("actor")
