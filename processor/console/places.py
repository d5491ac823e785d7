"""How many decimals a tenant's amounts show and may have: the rate card's, read from
the account view, whose balance the worker keeps at the card's decimals ("50.0000" on
a four-decimal card; processor/core/account.py)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["card_places"]


def card_places(account: dict[str, Any] | None) -> int | None:
    """The rate card's decimals, or None with no account to tell (a new tenant)."""
    balance = (account or {}).get("balance")
    if not isinstance(balance, str):
        return None
    try:
        exponent = Decimal(balance).as_tuple().exponent
    except InvalidOperation:
        return None
    return -exponent if isinstance(exponent, int) and exponent <= 0 else None
