"""Values many tenants' stored accounts share, kept once in memory.

The processor's own values are read back by the million at recovery and held in
memory for every tenant: the strings and amounts that many tenants share
(topic-partition names, auto-recharge settings, units) are kept once, each table
bounded by SHARED_MAX entries.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final

from processor.core.money import Unit
from processor.core.state import AutoRecharge, RechargeMode
from processor.core.usage import ServiceUsage

# A service a month's usage never touched.
NO_SERVICE: Final = ServiceUsage()

SHARED_MAX: Final = 4096
_shared_names: dict[str, str] = {}
_shared_amounts: dict[str, Decimal] = {}
_shared_settings: dict[tuple[bool, str, str, bool, str, str | None], AutoRecharge] = {}


def shared_name(text: str) -> str:
    shared = _shared_names.get(text)
    if shared is None:
        if len(_shared_names) >= SHARED_MAX:
            return text
        shared = _shared_names[text] = text
    return shared


def shared_amount(text: str) -> Decimal:
    shared = _shared_amounts.get(text)
    if shared is None:
        shared = Decimal(text)
        if len(_shared_amounts) < SHARED_MAX:
            _shared_amounts[text] = shared
    return shared


def shared_settings(data: dict[str, Any]) -> AutoRecharge:
    key = (
        bool(data["enabled"]),
        str(data["recharge_amount"]),
        str(data["trigger_balance"]),
        bool(data["suspended"]),
        # Added later: values written before have the fixed mode and no target.
        str(data.get("mode", "fixed")),
        None if data.get("target_balance") is None else str(data["target_balance"]),
    )
    shared = _shared_settings.get(key)
    if shared is None:
        target = None if key[5] is None else shared_amount(key[5])
        shared = AutoRecharge(
            key[0],
            shared_amount(key[1]),
            shared_amount(key[2]),
            key[3],
            RechargeMode(key[4]),
            target,
        )
        if len(_shared_settings) < SHARED_MAX:
            _shared_settings[key] = shared
    return shared


_shared_units: dict[tuple[str, int], Unit] = {}


def shared_unit(data: dict[str, Any], default: Unit | None) -> Unit | None:
    """The value's currency and decimals; `default` for a value written before they
    were stored (the running card's, when the caller knows it)."""
    currency = data.get("currency")
    if currency is None:
        return default
    key = (str(currency), int(data["decimals"]))
    shared = _shared_units.get(key)
    if shared is None:
        shared = Unit(*key)
        if len(_shared_units) < SHARED_MAX:
            _shared_units[key] = shared
    return shared
