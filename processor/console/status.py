"""A tenant's status as the console shows it: the same badges on its own page (from the
worker's account view) as in the operator's list (the sink's tenant row)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final, NamedTuple

from processor.console.i18n import N_

__all__ = ["Badge", "account_badges", "below_low_balance", "listed_badges"]


class Badge(NamedTuple):
    css: str  # console.css's colour for it
    label: str  # a message id


ACTIVE: Final = Badge("active", N_("Active"))
EXHAUSTED: Final = Badge("exhausted", N_("Exhausted"))
SUSPENDED: Final = Badge("suspended", N_("Auto-recharge suspended"))
LOW: Final = Badge("low", N_("Below low-balance level"))


def _badges(exhausted: bool, suspended: bool, low: bool) -> list[Badge]:
    return [EXHAUSTED if exhausted else ACTIVE] + [SUSPENDED] * suspended + [LOW] * low


def below_low_balance(account: dict[str, Any]) -> bool:
    """The sink's rule (processor/sink/tenants.py): the balance below `notify_below`,
    else below the auto-recharge trigger."""
    ar = account.get("auto_recharge") or {}
    level = account.get("notify_below")
    if level is None:
        level = ar.get("trigger_balance")
    balance = account.get("balance")
    return balance is not None and level is not None and Decimal(balance) < Decimal(level)


def account_badges(account: dict[str, Any]) -> list[Badge]:
    ar = account.get("auto_recharge") or {}
    return _badges(
        account.get("status") == "exhausted", bool(ar.get("suspended")), below_low_balance(account)
    )


def listed_badges(row: dict[str, Any]) -> list[Badge]:
    return _badges(
        row.get("status") == "exhausted",
        bool(row.get("auto_recharge_suspended")),
        bool(row.get("below_low_balance")),
    )
