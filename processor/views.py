"""What the HTTP read API answers, built from an account (CONTRACT.md, HTTP read API)."""

from __future__ import annotations

import re
from typing import Any, Final

from processor.core.account import Account
from schemas.types import TENANT_ID_PATTERN, format_money, format_timestamp


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
            "mode": ar.mode.value,
            "target_balance": None
            if ar.target_balance is None
            else format_money(ar.target_balance),
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
        # At the balance's places when none was set ("0.0000", not "0").
        "credit_limit": format_money(account.credit_limit or account.balance.copy_abs() * 0),
        "notify_below": None
        if account.notify_below is None
        else format_money(account.notify_below),
    }


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
