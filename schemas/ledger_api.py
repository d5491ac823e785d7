"""The ledger sink's query answers (`meter ledger-sink`, docs/contract.md, *added*).

Bodies of `GET /tenants/{tenant_id}/ledger` and `GET /tenants/{tenant_id}/usage` on
the sink's port; `docs/openapi.json` is generated from these models.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from schemas.outputs import LedgerEntry, OutputModel
from schemas.types import (
    CommandId,
    Currency,
    DetailText,
    NonNegativeMoney,
    OutputId,
    ReasonCode,
    TenantId,
    Timestamp,
)

__all__ = ["CommandStatus", "LedgerPage", "UsageBucketView", "UsageReport"]


class LedgerPage(OutputModel):
    """200 body of ``GET /tenants/{tenant_id}/ledger``: entries newest first."""

    tenant_id: TenantId
    entries: list[LedgerEntry]
    # The next page's `before`; null on the last page. Opaque: pass it back as it is.
    next_cursor: Annotated[str, Field(min_length=1, max_length=64)] | None


class UsageBucketView(OutputModel):
    """One UTC day (``2026-11-25``) or one service (``calls``, ``conferencing``)."""

    key: Annotated[str, Field(min_length=1)]
    currency: Currency
    # Debit entries (a zero-second call writes none), their billed seconds and amount.
    events: Annotated[int, Field(ge=0)]
    billed_seconds: Annotated[int, Field(ge=0)]
    amount: NonNegativeMoney


class UsageReport(OutputModel):
    """200 body of ``GET /tenants/{tenant_id}/usage``."""

    tenant_id: TenantId
    group_by: Literal["day", "service"]
    from_: Timestamp | None = Field(alias="from")
    to: Timestamp | None
    buckets: list[UsageBucketView]


class CommandStatus(OutputModel):
    """Added. 200 body of ``GET /commands/{command_id}``: what became of a command.

    ``pending`` once the sink saw the command on credits.commands; then ``applied``
    (``entry_id`` names its ledger entry, null for a settings command; ``entry`` is
    that entry once the sink has stored it), ``rejected`` (``reason``, ``detail``) or
    ``ignored`` (valid but moot: ``reason`` says why, e.g. a stale recharge answer).
    """

    command_id: CommandId
    tenant_id: TenantId
    command_type: Annotated[str, Field(min_length=1)]
    status: Literal["pending", "applied", "rejected", "ignored"]
    entry_id: OutputId | None
    entry: LedgerEntry | None
    reason: ReasonCode | None
    detail: DetailText | None
    # When the command occurred (null until the sink has read the command itself) and
    # when its outcome was recorded (null while pending).
    occurred_at: Timestamp | None
    recorded_at: Timestamp | None
