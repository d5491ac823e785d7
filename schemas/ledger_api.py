"""The ledger sink's query answers (`meter ledger-sink`, docs/contract.md, *added*).

Bodies of `GET /tenants/{tenant_id}/ledger`, `GET /tenants/{tenant_id}/usage`,
`GET /commands/{command_id}`, `GET /tenants` and `GET /tenants/{tenant_id}/recharges`
on the sink's port; `docs/openapi.json` is generated from these models.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from schemas.outputs import LedgerEntry, OutputModel
from schemas.types import (
    CommandId,
    Currency,
    DetailText,
    Money,
    NonNegativeMoney,
    OutputId,
    PositiveMoney,
    Reason,
    ReasonCode,
    RequestId,
    TenantId,
    Timestamp,
)

__all__ = [
    "CommandStatus",
    "LedgerPage",
    "RechargeAttemptView",
    "RechargeHistory",
    "TenantList",
    "TenantRow",
    "UsageBucketView",
    "UsageReport",
]


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


class TenantRow(OutputModel):
    """Added. One tenant of ``GET /tenants`` (the operator's list), as the sink knows it."""

    tenant_id: TenantId
    currency: Currency | None
    # The newest ledger entry's balance_after (null before the tenant's first entry).
    balance: Money | None
    status: Literal["active", "exhausted"]
    auto_recharge_suspended: bool
    below_low_balance: bool
    # notify_below when set, else the auto-recharge trigger; null when neither is.
    low_balance_level: NonNegativeMoney | None
    # Billing's refusals since its last charged recharge.
    recharge_failures: Annotated[int, Field(ge=0)]
    last_failure_reason: Reason | None
    updated_at: Timestamp | None


class TenantList(OutputModel):
    """Added. 200 body of ``GET /tenants``: tenants in id order."""

    tenants: list[TenantRow]
    # The next page's `cursor`; null on the last page. Opaque.
    next_cursor: Annotated[str, Field(min_length=1, max_length=100)] | None


class RechargeAttemptView(OutputModel):
    """Added. One attempt of a recharge request, and billing's answer to it."""

    request_id: RequestId
    attempt: Annotated[int, Field(ge=1)]
    amount: PositiveMoney
    currency: Currency
    balance: Money
    requested_at: Timestamp
    # null while billing has not answered this attempt.
    outcome: Literal["succeeded", "failed"] | None
    reason: Reason | None
    answered_at: Timestamp | None


class RechargeHistory(OutputModel):
    """Added. 200 body of ``GET /tenants/{tenant_id}/recharges``: newest first."""

    tenant_id: TenantId
    recharges: list[RechargeAttemptView]
