"""The stored account, versions 1 and 2: JSON objects, fields by name.

Written before version 3 (processor/worker/stored_v3.py) and still read: a changelog
keeps them until their tenant's value is written again. Dedupe marks and the entry
points that tell the versions apart are in processor/worker/codec.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from processor.core.money import ZERO, Unit
from processor.core.state import Account, Lot, PendingRecharge, RechargeMode, RechargeStatus
from processor.core.stored import OutboxEntry, Position, StoredAccount
from processor.core.usage import MonthUsage, ServiceUsage
from processor.kafka.wire import (
    notifications_from_dict,
    notifications_to_dict,
    output_from_dict,
    output_to_dict,
    wire_time,
)
from processor.worker.interned import (
    NO_SERVICE,
    shared_amount,
    shared_name,
    shared_settings,
    shared_unit,
)
from schemas.types import format_money


def _ts(value: datetime | None) -> datetime | str | None:
    return None if value is None else wire_time(value)


# The processor's own timestamps were written by format_timestamp, so the strict
# contract check is not needed to read them back (by the million at recovery).
def _own_dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def account_to_dict(account: Account) -> dict[str, Any]:
    ar = account.auto_recharge
    pending = account.pending
    data: dict[str, Any] = {
        "v": 1,
        "tenant_id": account.tenant_id,
        "balance": format_money(account.balance),
        "entries": account.entries,
        "requests_issued": account.requests_issued,
        "status_seq": account.status_seq,
        "updated_at": _ts(account.updated_at),
        "auto_recharge": None
        if ar is None
        else {
            "enabled": ar.enabled,
            "recharge_amount": format_money(ar.recharge_amount),
            "trigger_balance": format_money(ar.trigger_balance),
            "suspended": ar.suspended,
        },
        "pending": None
        if pending is None
        else {
            "request_id": pending.request_id,
            "amount": format_money(pending.amount),
            "attempt": pending.attempt,
            "requested_at": _ts(pending.requested_at),
            "status": pending.status.value,
            "failed_at": _ts(pending.failed_at),
        },
    }
    # Added fields, written only when set: a value without them reads as the defaults
    # (no credit, no level of its own, the fixed mode), as every value written before.
    if account.credit_limit:
        data["credit_limit"] = format_money(account.credit_limit)
    if account.notify_below is not None:
        data["notify_below"] = format_money(account.notify_below)
    if account.lots:
        # [credit entry id, amount left, expiry (epoch seconds), noticed (0/1)]
        data["lots"] = [
            [
                lot.lot_id,
                format_money(lot.amount),
                int(lot.expires_at.timestamp()),
                int(lot.noticed),
            ]
            for lot in account.lots
        ]
    if account.usage:
        # [yyyymm, then per service (core SERVICES order) [events, billed seconds,
        # amount] or null when none]
        data["usage"] = [
            [
                month.month,
                *(
                    None if not u.events else [u.events, u.billed_seconds, format_money(u.amount)]
                    for u in month.services
                ),
            ]
            for month in account.usage
        ]
    if account.notifications is not None:
        data["notifications"] = notifications_to_dict(account.notifications)
    if ar is not None and ar.mode is not RechargeMode.FIXED:
        data["auto_recharge"]["mode"] = ar.mode.value
        data["auto_recharge"]["target_balance"] = (
            None if ar.target_balance is None else format_money(ar.target_balance)
        )
    return data


def account_from_dict(data: dict[str, Any]) -> Account:
    ar = data.get("auto_recharge")
    pending = data.get("pending")
    return Account(
        tenant_id=data["tenant_id"],
        balance=Decimal(data["balance"]),
        entries=int(data["entries"]),
        requests_issued=int(data.get("requests_issued", 0)),
        status_seq=int(data.get("status_seq", 0)),
        credit_limit=shared_amount(data["credit_limit"]) if "credit_limit" in data else ZERO,
        notify_below=None if data.get("notify_below") is None else Decimal(data["notify_below"]),
        notifications=notifications_from_dict(data.get("notifications")),
        updated_at=_own_dt(data.get("updated_at")),
        auto_recharge=None if ar is None else shared_settings(ar),
        lots=_lots(data.get("lots")),
        usage=_usage(data.get("usage")),
        pending=None
        if pending is None
        else PendingRecharge(
            request_id=pending["request_id"],
            amount=Decimal(pending["amount"]),
            attempt=int(pending["attempt"]),
            requested_at=datetime.fromisoformat(pending["requested_at"]),
            status=RechargeStatus(pending["status"]),
            failed_at=_own_dt(pending.get("failed_at")),
        ),
    )


def _lots(data: list[list[Any]] | None) -> tuple[Lot, ...]:
    """Added: values written before lots existed have none."""
    if not data:
        return ()
    return tuple(
        Lot(str(lot_id), Decimal(amount), datetime.fromtimestamp(int(expires), UTC), bool(noticed))
        for lot_id, amount, expires, noticed in data
    )


def _usage(data: list[list[Any]] | None) -> tuple[MonthUsage, ...]:
    """Added: values written before consumption was kept have none."""
    if not data:
        return ()
    return tuple(
        MonthUsage(
            int(month[0]),
            tuple(
                NO_SERVICE if u is None else ServiceUsage(int(u[0]), int(u[1]), Decimal(u[2]))
                for u in month[1:]
            ),
        )
        for month in data
    )


def stored_to_dict(stored: StoredAccount) -> dict[str, Any]:
    data: dict[str, Any] = {
        "v": 2,
        "account": account_to_dict(stored.account),
        "seq": stored.seq,
        "gen": stored.generation,
        "epoch": stored.epoch,
        "applied": dict(stored.applied),
        "outbox": [
            {
                "seq": entry.seq,
                "tp": entry.position.tp,
                "offset": entry.position.offset,
                # The card's currency is implied: every balance is in it.
                "outputs": [output_to_dict(out, "") for out in entry.outputs],
            }
            for entry in stored.outbox
        ],
    }
    unit = stored.unit
    if unit is not None:
        # The unit of the balance and every amount in this value (core/money.py).
        data["currency"] = unit.currency
        data["decimals"] = unit.decimals
    return data


def stored_from_dict(data: dict[str, Any], default_unit: Unit | None = None) -> StoredAccount:
    """A stored value; one written before units were stored takes `default_unit`."""
    return StoredAccount(
        account=account_from_dict(data["account"]),
        seq=int(data["seq"]),
        generation=int(data.get("gen", 0)),
        epoch=int(data.get("epoch", 0)),
        applied=MappingProxyType({shared_name(k): int(v) for k, v in data["applied"].items()}),
        outbox=tuple(
            OutboxEntry(
                seq=int(e["seq"]),
                position=Position(str(e["tp"]), int(e["offset"])),
                outputs=tuple(output_from_dict(o) for o in e["outputs"]),
            )
            for e in data["outbox"]
        ),
        unit=shared_unit(data, default_unit),
    )
