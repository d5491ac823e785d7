"""The HTTP read API's bodies: ``GET /tenants/{tenant_id}/account`` (CONTRACT.md) and,
added, ``GET /tenants/{tenant_id}/authorize``.

``auto_recharge`` and ``pending_recharge`` are always present, ``null`` when the
tenant has no settings / no outstanding request, as the contract shows them.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import Field

from schemas.notifications import Emails, Events, WebhookUrl
from schemas.outputs import OMIT_WHEN_NONE, OutputModel
from schemas.types import (
    Currency,
    Money,
    NonNegativeAmount,
    NonNegativeMoney,
    PositiveAmount,
    PositiveMoney,
    RatePrefix,
    RequestId,
    StrictBool,
    TenantId,
    Timestamp,
)

__all__ = [
    "AccountView",
    "AuthorizeView",
    "AutoRechargeView",
    "ExpiringView",
    "MonthConsumptionView",
    "PendingRechargeView",
    "ServiceConsumptionView",
]


class AutoRechargeView(OutputModel):
    """The tenant's current auto-recharge settings."""

    enabled: StrictBool
    recharge_amount: PositiveAmount
    trigger_balance: NonNegativeAmount
    suspended: StrictBool
    # Added: fixed or to_target, and the target (null unless to_target).
    mode: Literal["fixed", "to_target"] = "fixed"
    target_balance: PositiveAmount | None = None


class PendingRechargeView(OutputModel):
    """The tenant's outstanding recharge request."""

    request_id: RequestId
    amount: PositiveMoney
    attempt: Annotated[int, Field(ge=1)]
    requested_at: Timestamp
    # Added, beyond the contract's minimum: outstanding (sent to billing, no answer
    # yet) or failed (waiting to retry); tells an operator why nothing is moving.
    status: Literal["outstanding", "failed"] | None = Field(default=None, exclude_if=OMIT_WHEN_NONE)


class ExpiringView(OutputModel):
    """Added. A lot of the tenant's funds: what is left of it and when it expires."""

    amount: PositiveMoney
    expires_at: Timestamp


class ServiceConsumptionView(OutputModel):
    """Added. One service's charged usage in one month."""

    events: Annotated[int, Field(ge=0)]
    billed_seconds: Annotated[int, Field(ge=0)]
    amount: NonNegativeMoney


class ServicesConsumptionView(OutputModel):
    outbound: ServiceConsumptionView
    toll_free_inbound: ServiceConsumptionView
    conferencing_dial_out: ServiceConsumptionView
    conferencing_toll_free_dial_in: ServiceConsumptionView


class MonthConsumptionView(OutputModel):
    """Added. A calendar month (UTC, of the usage's event time) of charged usage."""

    month: Annotated[str, Field(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$")]
    services: ServicesConsumptionView


class NotificationsView(OutputModel):
    """Added: the tenant's notification settings, never the webhook secret."""

    emails: Emails
    webhook_url: WebhookUrl | None
    events: Events


class AccountView(OutputModel):
    """200 body of ``GET /tenants/{tenant_id}/account``."""

    tenant_id: TenantId
    currency: Currency
    balance: Money
    status: Literal["active", "exhausted"]
    auto_recharge: AutoRechargeView | None
    pending_recharge: PendingRechargeView | None
    updated_at: Timestamp
    # Added: how far below zero the balance may go, and the tenant's own low-balance
    # level (null: none).
    credit_limit: NonNegativeAmount = Decimal(0)
    notify_below: NonNegativeAmount | None = None
    # Added: the tenant's funds that expire, soonest first, at most 3.
    expiring: list[ExpiringView] = Field(default_factory=list, max_length=3)
    # Added: the current calendar month (UTC) and the one before, newest first.
    consumption: list[MonthConsumptionView] = Field(default_factory=list, max_length=2)
    # Added: who is told what (null: nobody); the webhook secret is never shown.
    notifications: NotificationsView | None = None


class AuthorizeView(OutputModel):
    """Added. 200 body of ``GET /tenants/{tenant_id}/authorize?service=&number=``: may
    the tenant start this call now, and for how long at most."""

    tenant_id: TenantId
    allowed: StrictBool
    # The longest duration whose rated charge (increments, minimum, connect fee,
    # rounding) balance + credit_limit can pay; at most 86400 (a day); 0 when refused.
    max_seconds: Annotated[int, Field(ge=0, le=86_400)]
    # Why not, when not allowed: exhausted (not even the first increment can be paid),
    # no_rate (no prefix of the number in the service's table), unknown_tenant.
    reason: Literal["exhausted", "no_rate", "unknown_tenant"] | None
    rate_prefix: RatePrefix | None
    per_minute: NonNegativeMoney | None
    # null for an unknown tenant.
    balance: Money | None
    currency: Currency
