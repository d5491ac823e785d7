"""The ledger sink's tables, as SQLAlchemy Core sees them.

Alembic makes and changes them (`migrations/`); these declarations are what the
store's writes and queries use, and must match the newest migration.
"""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa

from processor.storage.sql import Money, UtcDateTime

__all__ = [
    "LEDGER_COLUMNS",
    "commands",
    "ledger_entries",
    "metadata",
    "recharge_outcomes",
    "recharge_requests",
    "sink_offsets",
    "tenants",
]

metadata: Final = sa.MetaData()

ledger_entries: Final = sa.Table(
    "ledger_entries",
    metadata,
    sa.Column("entry_id", sa.Text, primary_key=True),
    sa.Column("tenant_id", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("amount", Money, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("balance_after", Money, nullable=False),
    sa.Column("cause_topic", sa.Text, nullable=False),
    sa.Column("cause_id", sa.Text, nullable=False),
    sa.Column("occurred_at", UtcDateTime, nullable=False),
    sa.Column("recorded_at", UtcDateTime, nullable=False),
    sa.Column("rate_prefix", sa.Text),
    sa.Column("rate_per_minute", Money),
    sa.Column("billed_seconds", sa.Integer),
    # Added (migration 0003_ledger_actor): the command's actor, when it named one.
    sa.Column("actor", sa.Text),
    sa.Column("source_partition", sa.Integer, nullable=False),
    sa.Column("source_offset", sa.BigInteger, nullable=False),
)

recharge_requests: Final = sa.Table(
    "recharge_requests",
    metadata,
    sa.Column("request_id", sa.Text, primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("tenant_id", sa.Text, nullable=False),
    sa.Column("amount", Money, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("trigger_balance", Money, nullable=False),
    sa.Column("balance", Money, nullable=False),
    sa.Column("requested_at", UtcDateTime, nullable=False),
    sa.Column("source_partition", sa.Integer, nullable=False),
    sa.Column("source_offset", sa.BigInteger, nullable=False),
)

recharge_outcomes: Final = sa.Table(
    "recharge_outcomes",
    metadata,
    sa.Column("command_id", sa.Text, primary_key=True),
    sa.Column("tenant_id", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("recharge_request_id", sa.Text, nullable=False),
    sa.Column("attempt", sa.Integer),
    sa.Column("amount", Money),
    sa.Column("currency", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("occurred_at", UtcDateTime, nullable=False),
    sa.Column("source_partition", sa.Integer, nullable=False),
    sa.Column("source_offset", sa.BigInteger, nullable=False),
)

# Added: one row per tenant, for the operator's list (processor/sink/tenants.py).
tenants: Final = sa.Table(
    "tenants",
    metadata,
    sa.Column("tenant_id", sa.Text, primary_key=True),
    sa.Column("currency", sa.Text),
    sa.Column("balance", Money),
    sa.Column("status", sa.Text),
    sa.Column("status_seq", sa.Integer),
    sa.Column("credit_limit", Money),
    sa.Column("notify_below", Money),
    sa.Column("trigger_balance", Money),
    sa.Column("suspended", sa.Boolean, nullable=False),
    sa.Column("suspended_changed_at", UtcDateTime),
    sa.Column("recharge_failures", sa.Integer, nullable=False),
    sa.Column("last_failure_reason", sa.Text),
    sa.Column("exhausted", sa.Boolean, nullable=False),
    sa.Column("below_low", sa.Boolean, nullable=False),
    sa.Column("ledger_offset", sa.BigInteger),
    sa.Column("alerts_offset", sa.BigInteger),
    sa.Column("commands_offset", sa.BigInteger),
    sa.Column("updated_at", UtcDateTime),
)

# Added: each command's status, pending until its result arrives (GET /commands/{id}).
commands: Final = sa.Table(
    "commands",
    metadata,
    sa.Column("tenant_id", sa.Text, primary_key=True),
    sa.Column("command_id", sa.Text, primary_key=True),
    sa.Column("command_type", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("entry_id", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("detail", sa.Text),
    sa.Column("occurred_at", UtcDateTime),
    sa.Column("recorded_at", UtcDateTime),
)

sink_offsets: Final = sa.Table(
    "sink_offsets",
    metadata,
    sa.Column("consumer_group", sa.Text, primary_key=True),
    sa.Column("topic", sa.Text, primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("next_offset", sa.BigInteger, nullable=False),
)

LEDGER_COLUMNS: Final = tuple(c.name for c in ledger_entries.columns)
