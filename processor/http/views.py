"""What the HTTP read API answers, built from an account (CONTRACT.md, HTTP read API)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, cast

from processor.core.engine import SERVICE_TABLES
from processor.core.rating import RateCard
from processor.core.state import Account
from processor.core.usage import SERVICES, MonthUsage, month_before
from schemas.api import (
    AccountView,
    AutoRechargeView,
    ExpiringView,
    MonthConsumptionView,
    NotificationsView,
    PendingRechargeView,
    ServiceConsumptionView,
    ServicesConsumptionView,
)
from schemas.notifications import NotificationEvent
from schemas.types import E164_PATTERN, TENANT_ID_PATTERN, format_money

# How many lots the account view lists under "expiring".
EXPIRING_SHOWN: Final = 3


def account_view(account: Account, currency: str, now: datetime | None = None) -> dict[str, Any]:
    """The account as GET /tenants/{id}/account shows it; `now` (the worker's clock)
    names the current month of "consumption".

    Built as the contract's `schemas.api.AccountView` and dumped by it: its fields, in
    its order, money and timestamps written by its serializers. Not validated (the
    account is the worker's own; tests/unit/test_wire.py reads it back through the
    model).
    """
    ar = account.auto_recharge
    pending = account.pending
    zero = account.balance.copy_abs() * 0
    view = AccountView.model_construct(
        tenant_id=account.tenant_id,
        currency=currency,
        balance=account.balance,
        status="exhausted" if account.exhausted else "active",
        auto_recharge=None
        if ar is None
        else AutoRechargeView.model_construct(
            enabled=ar.enabled,
            recharge_amount=ar.recharge_amount,
            trigger_balance=ar.trigger_balance,
            suspended=ar.suspended,
            mode=ar.mode.value,
            target_balance=ar.target_balance,
        ),
        pending_recharge=None
        if pending is None
        else PendingRechargeView.model_construct(
            request_id=pending.request_id,
            amount=pending.amount,
            attempt=pending.attempt,
            requested_at=pending.requested_at,
            status=pending.status.value,
        ),
        updated_at=account.updated_at or _NEVER,
        # At the balance's places when none was set ("0.0000", not "0").
        credit_limit=account.credit_limit or zero,
        notify_below=account.notify_below,
        expiring=[
            ExpiringView.model_construct(amount=lot.amount, expires_at=lot.expires_at)
            for lot in account.lots[:EXPIRING_SHOWN]
        ],
        consumption=consumption_view(account, now or datetime.now(UTC), zero),
        notifications=notifications_view(account),
    )
    data = view.model_dump(mode="json")
    if account.updated_at is None:
        # The contract's model requires a time; an account no event changed has none.
        data["updated_at"] = None
    return data


# Stands in for a missing updated_at while the view is dumped (then written as null).
_NEVER: Final = datetime(1970, 1, 1, tzinfo=UTC)


def notifications_view(account: Account) -> NotificationsView | None:
    """The tenant's notification settings as the console shows them: never the secret."""
    settings = account.notifications
    if settings is None:
        return None
    return NotificationsView.model_construct(
        emails=list(settings.emails),
        webhook_url=settings.webhook_url,
        # Checked against the contract's events when the command was read.
        events=cast("list[NotificationEvent]", list(settings.events)),
    )


def consumption_view(account: Account, now: datetime, zero: Decimal) -> list[MonthConsumptionView]:
    """The current calendar month (UTC) and the one before, newest first, each with
    every service's charged events, billed seconds and amount.

    The current month is the clock's, or the newest month of usage event time the
    account has counted when that is later (an event up to METER_MAX_FUTURE_SECONDS
    ahead, at a month's turn).
    """
    now = now.astimezone(UTC)
    current = now.year * 100 + now.month
    kept = {m.month: m for m in account.usage}
    if account.usage and account.usage[0].month > current:
        current = account.usage[0].month
    return [_month_view(m, kept.get(m), zero) for m in (current, month_before(current))]


def _month_view(month: int, usage: MonthUsage | None, zero: Decimal) -> MonthConsumptionView:
    services: dict[str, Any] = {}
    for i, name in enumerate(SERVICES):
        used = None if usage is None else usage.services[i]
        services[name] = ServiceConsumptionView.model_construct(
            events=0 if used is None else used.events,
            billed_seconds=0 if used is None else used.billed_seconds,
            amount=zero if used is None or not used.events else used.amount,
        )
    return MonthConsumptionView.model_construct(
        month=f"{month // 100:04d}-{month % 100:02d}",
        services=ServicesConsumptionView.model_construct(**services),
    )


# The contract's tenant id (schemas.types.TENANT_ID_PATTERN). fullmatch, not "$": in
# Python "$" also matches before a trailing newline.
_TENANT_ID: Final = re.compile(TENANT_ID_PATTERN.removeprefix("^").removesuffix("$"))
TENANT_ID_RULE: Final = "a tenant id is 1 to 64 characters of A-Z a-z 0-9 . _ : -"


def tenant_id_problem(tenant_id: str) -> str | None:
    """Why `tenant_id` is not a contract tenant id, or None when it is one.

    Checked before anything else is done with an id from a URL: the answer never
    repeats the id (it may be kilobytes long), it says how long it was.
    """
    if _TENANT_ID.fullmatch(tenant_id) is not None:
        return None
    return f"{TENANT_ID_RULE} (this one has {len(tenant_id)} characters)"


# ---- GET /tenants/{tenant_id}/authorize ------------------------------------------------

_E164: Final = re.compile(E164_PATTERN.removeprefix("^").removesuffix("$"))


def authorize_problem(service: str | None, number: str | None) -> tuple[str, str] | None:
    """(error code, detail) when the query cannot be authorized at all (a 400)."""
    if service not in SERVICE_TABLES:
        return (
            "invalid_service",
            f"service must be one of {', '.join(SERVICE_TABLES)}",
        )
    if number is None or _E164.fullmatch(number) is None:
        return (
            "invalid_number",
            "number must be an E.164 number: '+' then 2 to 15 digits, the first not 0 "
            "(write '+' as %2B in a query string)",
        )
    return None


def authorize_view(
    tenant_id: str, account: Account | None, card: RateCard, service: str, number: str
) -> dict[str, Any]:
    """May the tenant place this call now, and for how long at most.

    `max_seconds` is the longest duration whose charge, rated as the card rates it,
    the balance plus the credit limit can pay (`RateCard.max_seconds`, at most a day).
    Refused (`allowed` false, `max_seconds` 0) as `unknown_tenant` (no account),
    `no_rate` (no prefix matches in the service's table) or `exhausted` (exhausted,
    or not even the first increment can be paid).
    """
    table = SERVICE_TABLES[service]
    found = card.max_seconds(
        table,
        number,
        card.zero if account is None else account.balance + account.credit_limit,
    )
    rate = None if found is None else found[0]
    most = 0
    reason: str | None
    if account is None:
        reason = "unknown_tenant"
    elif found is None:
        reason = "no_rate"
    elif account.exhausted or found[1] <= 0:
        reason = "exhausted"
    else:
        reason, most = None, found[1]
    return {
        "tenant_id": tenant_id,
        "allowed": reason is None,
        "max_seconds": most,
        "reason": reason,
        "rate_prefix": None if rate is None else rate.prefix,
        "per_minute": None if rate is None else format_money(rate.per_minute),
        "balance": None if account is None else format_money(account.balance),
        "currency": card.currency,
    }
