"""Bodies of the HTTP API beyond the account view: the admin requests and answers.

Request bodies refuse unknown fields (``extra="forbid"``), unlike the Kafka inputs:
an operator who types ``"ammount"`` must hear about it at once, not see a command
published without the amount they meant. Field types are the contract's own, so
the API accepts exactly what ``credits.commands`` accepts.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.notifications import (
    Emails,
    Events,
    WebhookSecret,
    WebhookUrl,
    all_events,
    check_emails,
    check_events,
    check_notifications_named,
    check_webhook_pair,
)
from schemas.outputs import OMIT_WHEN_NONE, OutputModel
from schemas.types import (
    CommandId,
    Currency,
    NonNegativeAmount,
    PositiveAmount,
    Reason,
    StrictBool,
    TenantId,
    check_limits_named,
    check_recharge_target,
    check_settings_named,
)

__all__ = [
    "AdminCommandType",
    "AutoRechargePatch",
    "AutoRechargeRequest",
    "CommandAccepted",
    "ErrorBody",
    "FieldError",
    "FundsRequest",
    "Health",
    "LimitsRequest",
    "NotificationsPatch",
    "NotificationsRequest",
    "Readiness",
    "RechargeOutcomeRequest",
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FundsRequest(_Request):
    """Body of ``POST /tenants/{tenant_id}/funds``: a manual top-up."""

    amount: PositiveAmount
    currency: Currency


class AutoRechargeRequest(_Request):
    """Body of ``PUT /tenants/{tenant_id}/auto-recharge``: replaces the settings."""

    enabled: StrictBool
    recharge_amount: PositiveAmount
    trigger_balance: NonNegativeAmount
    # Optional, as on the command: the rate card's currency is implied.
    currency: Currency | None = None
    # Added, as on the command: `to_target` asks billing for target_balance - balance.
    mode: Literal["fixed", "to_target"] = "fixed"
    target_balance: PositiveAmount | None = None

    @model_validator(mode="after")
    def _target_for_to_target(self) -> Self:
        check_recharge_target(self.mode, self.target_balance, self.trigger_balance)
        return self


class AutoRechargePatch(_Request):
    """Added. Body of ``PATCH /tenants/{tenant_id}/auto-recharge``: a partial change.

    An absent field keeps the current value; ``target_balance: null`` clears it. The
    processor merges it with the tenant's settings, in order with other commands, and
    rejects an invalid result (``invalid_settings``); only what is wrong on its own is
    refused here (a 422), such as a target not above a trigger named beside it.
    """

    enabled: StrictBool | None = None
    recharge_amount: PositiveAmount | None = None
    trigger_balance: NonNegativeAmount | None = None
    currency: Currency | None = None
    mode: Literal["fixed", "to_target"] | None = None
    target_balance: PositiveAmount | None = None

    @model_validator(mode="after")
    def _names_a_setting(self) -> Self:
        check_settings_named(self.model_fields_set, self)
        if (
            self.target_balance is not None
            and self.trigger_balance is not None
            and self.target_balance <= self.trigger_balance
        ):
            raise ValueError("target_balance must be above trigger_balance")
        return self


class LimitsRequest(_Request):
    """Added. Body of ``PUT /tenants/{tenant_id}/limits``: the credit limit and the
    low-balance level. An absent field keeps the current value; ``notify_below: null``
    clears the level."""

    credit_limit: NonNegativeAmount | None = None
    notify_below: NonNegativeAmount | None = None
    currency: Currency | None = None

    @model_validator(mode="after")
    def _names_a_limit(self) -> Self:
        check_limits_named(self.model_fields_set, self.credit_limit)
        return self


class RechargeOutcomeRequest(_Request):
    """Added. Body of ``POST /tenants/{tenant_id}/recharges/{request_id}/outcome``:
    billing's answer to a recharge request, published as ``funds_added`` (source
    ``auto_recharge``) when ``succeeded``, ``recharge_failed`` when ``failed``."""

    outcome: Literal["succeeded", "failed"]
    # succeeded: the amount charged (the card's currency is implied).
    amount: PositiveAmount | None = None
    currency: Currency | None = None
    # failed: why (shown to the tenant in the recharge_failed alert).
    reason: Reason | None = None
    # The attempt answered (RechargeRequested.attempt); recommended.
    attempt: Annotated[int, Field(ge=1, le=1_000_000)] | None = None

    @model_validator(mode="after")
    def _fields_of_the_outcome(self) -> Self:
        if self.outcome == "succeeded" and (self.amount is None or self.reason is not None):
            raise ValueError("a succeeded outcome names the amount charged, and no reason")
        if self.outcome == "failed" and (self.reason is None or self.amount is not None):
            raise ValueError("a failed outcome names a reason, and no amount")
        return self


class NotificationsRequest(_Request):
    """Added. Body of ``PUT /tenants/{tenant_id}/notifications``: replaces who is told
    what. ``webhook_secret`` (``whsec_`` + base64 of 24 to 64 bytes, the Standard
    Webhooks form) is sealed before it is published and never shown again."""

    emails: Emails = Field(default_factory=list)
    webhook_url: WebhookUrl | None = None
    webhook_secret: WebhookSecret | None = None
    events: Events = Field(default_factory=all_events)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        check_events(self.events)
        check_emails(self.emails)
        check_webhook_pair(self.webhook_url, self.webhook_secret, "webhook_secret")
        return self


class NotificationsPatch(_Request):
    """Added. Body of ``PATCH /tenants/{tenant_id}/notifications``: a partial change.

    Any of ``emails``, ``events``, and ``webhook_url`` with ``webhook_secret`` (as on
    the PUT); an absent field keeps the current value, ``webhook_url: null`` alone
    removes the webhook and its secret. So the emails can change without sending the
    secret again, which is never shown."""

    emails: Emails | None = None
    webhook_url: WebhookUrl | None = None
    webhook_secret: WebhookSecret | None = None
    events: Events | None = None

    @model_validator(mode="after")
    def _names_a_setting(self) -> Self:
        check_notifications_named(
            self.model_fields_set,
            self.emails,
            self.events,
            self.webhook_url,
            self.webhook_secret,
            "webhook_secret",
        )
        return self


# The commands the admin API publishes (the 202's `type`).
AdminCommandType = Literal[
    "funds_added",
    "auto_recharge_configured",
    "tenant_limits_configured",
    "auto_recharge_changed",
    "recharge_failed",
    "notifications_configured",
    "notifications_changed",
]


class CommandAccepted(OutputModel):
    """202 body: the command is on ``credits.commands``; the worker applies it once."""

    status: Literal["accepted"]
    type: AdminCommandType
    command_id: CommandId
    tenant_id: TenantId


class FieldError(OutputModel):
    """One reason a request was refused; ``loc`` starts with path, header or body."""

    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(OutputModel):
    """Every 4xx/5xx answer, as RFC 9457 problem details (``application/problem+json``):
    ``type``, ``title``, ``status`` and ``detail``, plus a short code (``error``, the
    last part of ``type``), the tenant and field errors for 422."""

    # Added: RFC 9457's members. `type` is https://credits-meter.dev/problems/<error>.
    type: str
    title: str
    status: int
    detail: str
    error: str
    tenant_id: str | None
    # Only on 422: every field that was refused, not just the first.
    errors: list[FieldError] | None = Field(default=None, exclude_if=OMIT_WHEN_NONE)


class Health(OutputModel):
    """``GET /health``: the process is alive."""

    status: Literal["ok"]


class Readiness(OutputModel):
    """``GET /ready``: partitions assigned and state recovered (503 otherwise)."""

    ready: StrictBool
    detail: str
