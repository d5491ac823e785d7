"""The admin HTTP API: top-ups, billing's answers and a tenant's settings, as contract commands.

    POST   /tenants/{tenant_id}/funds          {"amount": "50.00", "currency": "USD"}
    POST   /tenants/{tenant_id}/recharges/{request_id}/outcome
                                               {"outcome": "succeeded", "amount": "25.00"}
    PUT    /tenants/{tenant_id}/auto-recharge  {"enabled": true, "recharge_amount": "25.00",
                                                "trigger_balance": "5.00"}
    PATCH  /tenants/{tenant_id}/auto-recharge  only the fields to change
    DELETE /tenants/{tenant_id}/auto-recharge  auto-recharge off, its settings kept
    PUT    /tenants/{tenant_id}/limits         {"credit_limit": "20.00", "notify_below": "3.00"}
    PUT    /tenants/{tenant_id}/notifications  {"emails": [...], "webhook_url": "https://...",
                                                "webhook_secret": "whsec_...", "events": [...]}
    PATCH  /tenants/{tenant_id}/notifications  only the fields to change (the secret
                                                only with the URL)

Every worker serves them all. A request never touches an account directly: it becomes
a command on `credits.commands` (`funds_added`, `recharge_failed`,
`auto_recharge_configured`, `auto_recharge_changed`, `tenant_limits_configured`,
`notifications_configured`, `notifications_changed`), keyed by tenant, exactly what
any other admin tool would send, so the worker that owns the tenant applies it through
the same exactly-once path as everything else.

An `Idempotency-Key` is scoped per tenant and endpoint. It becomes the `command_id`
(`command_id_for`): a top-up's key as it is, a settings request's prefixed with
`auto-recharge:`, so the same key on both endpoints makes two commands. The processor
drops a command id it has seen, so a client that retries after a timeout, with the
same key, tops up once. Each worker also remembers the first answer to each key for a
day (`IdempotencyCache`, bounded by count and bytes): the same key with the same body
gets that answer again without publishing again; with a different body, a 422 (as
Stripe does), rather than a 202 for a command the processor would drop as a duplicate.

A request the processor would reject is refused here, with a 422 naming the field:
a currency other than the rate card's, an amount with more decimal places than the
card keeps balances at, a zero or negative amount.

Authentication (`CommandGate`): under `METER_AUTH=jwt`, a signed token whose role grants
the endpoint for this tenant (processor/http/auth.py); the static bearer token
`METER_ADMIN_TOKEN`, compared in constant time, works in either mode. With neither
configured the endpoints answer 503: an admin API that is open because someone forgot
a variable would let anyone mint credit.

`AdminAPI` (the endpoints, here) and `CommandGate` (the way each request takes,
processor/http/admin_gate.py) are plain code over a `CommandPublisher`, tested
without Faust; processor/http/admin_web.py puts them on a worker's web server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from processor.http.admin_gate import CommandGate
from processor.http.admin_requests import (
    COMMAND_ID,
    AdminRequest,
    Command,
    NoBody,
    Reply,
    error_reply,
)
from processor.http.auth import Principal
from processor.http.views import tenant_id_problem
from schemas.admin import (
    AutoRechargePatch,
    AutoRechargeRequest,
    FundsRequest,
    LimitsRequest,
    NotificationsPatch,
    NotificationsRequest,
    RechargeOutcomeRequest,
)
from schemas.inputs import (
    AutoRechargeChanged,
    AutoRechargeConfigured,
    FundsAdded,
    NotificationsChanged,
    NotificationsConfigured,
    RechargeFailed,
    TenantLimitsConfigured,
)

__all__ = ["AdminAPI"]


class AdminAPI(CommandGate):
    """The admin endpoints' logic, independent of the web framework."""

    async def add_funds(
        self,
        tenant_id: str,
        headers: Mapping[str, str],
        body: bytes | None,
        principal: Principal | None = None,
    ) -> Reply:
        """POST /tenants/{tenant_id}/funds -> a manual `funds_added` command.

        `body` is None when it was too large to read.
        """

        def command(request: BaseModel, command_id: str) -> Command:
            assert isinstance(request, FundsRequest)
            return FundsAdded(
                type="funds_added",
                command_id=command_id,
                tenant_id=tenant_id,
                occurred_at=self._clock(),
                amount=request.amount,
                currency=request.currency,
                source="manual",
            )

        return await self._handle(
            "funds", tenant_id, headers, body, FundsRequest, command, principal
        )

    async def configure_auto_recharge(
        self,
        tenant_id: str,
        headers: Mapping[str, str],
        body: bytes | None,
        principal: Principal | None = None,
    ) -> Reply:
        """PUT /tenants/{tenant_id}/auto-recharge -> an `auto_recharge_configured` command."""

        def command(request: BaseModel, command_id: str) -> Command:
            assert isinstance(request, AutoRechargeRequest)
            return AutoRechargeConfigured(
                type="auto_recharge_configured",
                command_id=command_id,
                tenant_id=tenant_id,
                occurred_at=self._clock(),
                enabled=request.enabled,
                recharge_amount=request.recharge_amount,
                trigger_balance=request.trigger_balance,
                currency=request.currency,
                mode=request.mode,
                target_balance=request.target_balance,
            )

        return await self._handle(
            "auto-recharge", tenant_id, headers, body, AutoRechargeRequest, command, principal
        )

    async def change_auto_recharge(
        self,
        tenant_id: str,
        headers: Mapping[str, str],
        body: bytes | None,
        principal: Principal | None = None,
    ) -> Reply:
        """PATCH /tenants/{tenant_id}/auto-recharge -> an `auto_recharge_changed` command.

        Only the fields the request named: the owner merges them with the tenant's
        settings in order with every other command (not here, read-modify-write).
        """

        def command(request: BaseModel, command_id: str) -> Command:
            assert isinstance(request, AutoRechargePatch)
            return AutoRechargeChanged(
                type="auto_recharge_changed",
                command_id=command_id,
                tenant_id=tenant_id,
                occurred_at=self._clock(),
                **_named(request),
            )

        return await self._handle(
            "auto-recharge-change", tenant_id, headers, body, AutoRechargePatch, command, principal
        )

    async def disable_auto_recharge(
        self,
        tenant_id: str,
        headers: Mapping[str, str],
        body: bytes | None,
        principal: Principal | None = None,
    ) -> Reply:
        """DELETE /tenants/{tenant_id}/auto-recharge -> `auto_recharge_changed` with
        `enabled: false` (the settings are kept, off, as a PUT with enabled false)."""

        def command(request: BaseModel, command_id: str) -> Command:
            return AutoRechargeChanged(
                type="auto_recharge_changed",
                command_id=command_id,
                tenant_id=tenant_id,
                occurred_at=self._clock(),
                enabled=False,
            )

        if body is not None and not body.strip():
            body = b"{}"
        return await self._handle(
            "auto-recharge-off", tenant_id, headers, body, NoBody, command, principal
        )

    async def configure_limits(
        self,
        tenant_id: str,
        headers: Mapping[str, str],
        body: bytes | None,
        principal: Principal | None = None,
    ) -> Reply:
        """PUT /tenants/{tenant_id}/limits -> a `tenant_limits_configured` command."""

        def command(request: BaseModel, command_id: str) -> Command:
            assert isinstance(request, LimitsRequest)
            # Only the fields the request named: an absent one keeps the tenant's value,
            # `notify_below: null` clears it (published with exclude_unset).
            return TenantLimitsConfigured(
                type="tenant_limits_configured",
                command_id=command_id,
                tenant_id=tenant_id,
                occurred_at=self._clock(),
                **_named(request),
            )

        return await self._handle(
            "limits", tenant_id, headers, body, LimitsRequest, command, principal
        )

    async def record_recharge_outcome(
        self,
        tenant_id: str,
        request_id: str,
        headers: Mapping[str, str],
        body: bytes | None,
        principal: Principal | None = None,
    ) -> Reply:
        """POST /tenants/{tenant_id}/recharges/{request_id}/outcome -> billing's answer:
        `funds_added` (source auto_recharge) or `recharge_failed`.

        Without an Idempotency-Key the key is the request, attempt and outcome, so a
        retried answer is one command (a second top-up would be credited).
        """
        try:
            COMMAND_ID.validate_python(request_id)
        except ValidationError:
            return error_reply(
                400,
                "invalid_request_id",
                "the path's request id must be 1 to 128 printable ASCII characters",
                None if tenant_id_problem(tenant_id) else tenant_id,
            )

        def command(request: BaseModel, command_id: str) -> Command:
            assert isinstance(request, RechargeOutcomeRequest)
            if request.outcome == "succeeded":
                assert request.amount is not None
                return FundsAdded(
                    type="funds_added",
                    command_id=command_id,
                    tenant_id=tenant_id,
                    occurred_at=self._clock(),
                    amount=request.amount,
                    currency=request.currency or self.currency,
                    source="auto_recharge",
                    recharge_request_id=request_id,
                    attempt=request.attempt,
                )
            assert request.reason is not None
            return RechargeFailed(
                type="recharge_failed",
                command_id=command_id,
                tenant_id=tenant_id,
                occurred_at=self._clock(),
                recharge_request_id=request_id,
                reason=request.reason,
                attempt=request.attempt,
            )

        def default_key(request: AdminRequest) -> str:
            assert isinstance(request, RechargeOutcomeRequest)
            return f"{request_id}#{request.attempt or 0}:{request.outcome}"

        return await self._handle(
            "recharge-outcome",
            tenant_id,
            headers,
            body,
            RechargeOutcomeRequest,
            command,
            principal,
            context=(("request_id", request_id),),
            default_key=default_key,
        )

    async def configure_notifications(
        self,
        tenant_id: str,
        headers: Mapping[str, str],
        body: bytes | None,
        principal: Principal | None = None,
    ) -> Reply:
        """PUT /tenants/{tenant_id}/notifications -> a `notifications_configured` command.

        The webhook secret is sealed here (METER_SECRETS_KEY) and published only sealed.
        """

        def command(request: BaseModel, command_id: str) -> Command:
            assert isinstance(request, NotificationsRequest)
            return NotificationsConfigured(
                type="notifications_configured",
                command_id=command_id,
                tenant_id=tenant_id,
                occurred_at=self._clock(),
                emails=list(request.emails),
                webhook_url=request.webhook_url,
                webhook_secret_sealed=self._sealed(request.webhook_secret),
                events=list(request.events),
            )

        return await self._handle(
            "notifications", tenant_id, headers, body, NotificationsRequest, command, principal
        )

    async def change_notifications(
        self,
        tenant_id: str,
        headers: Mapping[str, str],
        body: bytes | None,
        principal: Principal | None = None,
    ) -> Reply:
        """PATCH /tenants/{tenant_id}/notifications -> a `notifications_changed` command.

        Only the fields the request named, merged at the owner in order with every
        other command (as the PATCH of auto-recharge), so the emails can change without
        the webhook secret, which a client cannot read back. A secret named is sealed
        here, as on the PUT.
        """

        def command(request: BaseModel, command_id: str) -> Command:
            assert isinstance(request, NotificationsPatch)
            # The secret travels with its URL, and only sealed.
            given = _named(request, without="webhook_secret")
            if "webhook_url" in given:
                given["webhook_secret_sealed"] = self._sealed(request.webhook_secret)
            return NotificationsChanged(
                type="notifications_changed",
                command_id=command_id,
                tenant_id=tenant_id,
                occurred_at=self._clock(),
                **given,
            )

        return await self._handle(
            "notifications-change",
            tenant_id,
            headers,
            body,
            NotificationsPatch,
            command,
            principal,
        )


def _named(request: BaseModel, without: str = "") -> dict[str, Any]:
    """The fields a partial request named (a null among them), for its command: an
    absent one keeps the tenant's value at the owner."""
    return {name: getattr(request, name) for name in request.model_fields_set - {without}}
