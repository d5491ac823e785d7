"""How many decimals a tenant's amounts may have and show.

May have: the rate card's, read from the account view, whose balance the worker keeps
at the card's decimals ("50.0000" on a four-decimal card; processor/core/account.py).
Show: one number for every amount of the tenant's page, as a statement shows them
(`page_places`), not each amount at its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

from processor.console.app import Session
from processor.console.i18n import currency_places, places_needed

__all__ = ["account_amounts", "card_places", "page_places"]

Amounts = Iterable[str | Decimal | None]


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


def account_amounts(account: dict[str, Any] | None) -> list[str | None]:
    """Every amount the account view holds that a tenant's page shows."""
    if account is None:
        return []
    pending = account.get("pending_recharge") or {}
    months = account.get("consumption") or []
    return [
        account.get("balance"),
        account.get("credit_limit"),
        account.get("notify_below"),
        pending.get("amount"),
        *(lot.get("amount") for lot in account.get("expiring") or []),
        *(
            figures.get("amount")
            for month in months
            for figures in (month.get("services") or {}).values()
        ),
    ]


def page_places(
    session: Session, tenant_id: str, account: dict[str, Any] | None, amounts: Amounts
) -> int:
    """The decimals of every amount on this tenant's page: as many as its amounts
    need, at least the currency's, at most the rate card's. Kept in the session, so
    that a section htmx renders alone (the balance every 2 s) shows as many as the
    page around it; a section whose amounts need more raises it for the next ones."""
    card = card_places(account)
    wanted = max(
        session.places.get(tenant_id, 0),
        currency_places((account or {}).get("currency")),
        *(places_needed(a) for a in [*account_amounts(account), *amounts]),
    )
    places = wanted if card is None else min(wanted, card)
    session.places[tenant_id] = places
    return places
