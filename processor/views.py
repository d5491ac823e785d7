"""What the HTTP read API answers, built from an account (CONTRACT.md, HTTP read API)."""

from __future__ import annotations

from typing import Any

from processor.core.account import Account
from schemas.types import format_money, format_timestamp


def account_view(account: Account, currency: str) -> dict[str, Any]:
    ar = account.auto_recharge
    pending = account.pending
    return {
        "tenant_id": account.tenant_id,
        "currency": currency,
        "balance": format_money(account.balance),
        "status": "exhausted" if account.exhausted else "active",
        "auto_recharge": None
        if ar is None
        else {
            "enabled": ar.enabled,
            "recharge_amount": format_money(ar.recharge_amount),
            "trigger_balance": format_money(ar.trigger_balance),
            "suspended": ar.suspended,
        },
        "pending_recharge": None
        if pending is None
        else {
            "request_id": pending.request_id,
            "amount": format_money(pending.amount),
            "attempt": pending.attempt,
            "requested_at": format_timestamp(pending.requested_at),
            # Not in the contract's minimum; tells an operator why nothing is moving.
            "status": pending.status.value,
        },
        "updated_at": None if account.updated_at is None else format_timestamp(account.updated_at),
    }
