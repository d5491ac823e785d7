"""Joins the two revisions made apart after 0001 (commands, the ledger's actor) and
the tenants table: one head again.

Revision ID: 0004_merge_heads
Revises: 0003_tenants, 0002_ledger_actor
Create Date: 2026-12-03
"""

revision = "0004_merge_heads"
down_revision = ("0003_tenants", "0002_ledger_actor")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
