"""Bytes in and out of Kafka for the processor's own state and outputs.

The core's outputs become the contract's JSON here (field names from CONTRACT.md,
money as fixed-point strings at the card's precision, RFC 3339 "Z" timestamps). The
account state is stored as compact JSON so a changelog can be read by a person.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import orjson

from processor.core.account import (
    ZERO,
    Account,
    AlertKind,
    AlertOut,
    AutoRecharge,
    LedgerOut,
    Lot,
    MonthUsage,
    Notifications,
    NotificationsOut,
    Output,
    PendingRecharge,
    RechargeMode,
    RechargeOut,
    RechargeStatus,
    ServiceUsage,
    is_exhausted,
)
from processor.core.engine import EXPIRY_TICK, TimerTick
from processor.core.money import Unit
from processor.core.stored import Mark, OutboxEntry, Position, StoredAccount
from schemas.types import format_money, format_timestamp, parse_timestamp


def dumps(value: Any) -> bytes:
    """orjson.dumps, in a bytes object of the text's own size.

    orjson (3.12 and later) hands back its whole working buffer, at least 4 KiB, with
    the length set to the text's: an 80-byte dedupe mark held until its batch is
    produced keeps 4 KiB, and each one written lands on a page never touched before.
    Held by the thousand, that cost a page fault (3.8 us here) and 4 KiB per record:
    100,000 marks held took 3.96 us each and +393 MB, copied out 0.96 us and +10 MB
    (through a memoryview; this join is 0.05 us over orjson.dumps alone).
    """
    return b"".join((orjson.dumps(value, option=orjson.OPT_UTC_Z), b""))


def _at(value: datetime) -> datetime | str:
    """A timestamp for `dumps`: RFC 3339 "Z" text, as format_timestamp writes it.

    orjson writes a UTC datetime itself, the same text (microseconds only when
    non-zero) in 0.4 us against format_timestamp's 3 us (isoformat with an offset, then
    cut), and a ledger entry has two. Any other datetime goes through format_timestamp.
    """
    return value if value.tzinfo is UTC and type(value) is datetime else format_timestamp(value)


def _ts(value: datetime | None) -> datetime | str | None:
    return None if value is None else _at(value)


# The processor's own values are read back by the million at recovery, and held in
# memory for every tenant: their timestamps were written by format_timestamp (so the
# strict contract check is not needed), and the strings and amounts that many tenants
# share (topic-partition names, auto-recharge settings) are kept once.
def _own_dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


_SHARED_MAX = 4096
_shared_names: dict[str, str] = {}
_shared_amounts: dict[str, Decimal] = {}
_shared_settings: dict[tuple[bool, str, str, bool, str, str | None], AutoRecharge] = {}


def _name(text: str) -> str:
    shared = _shared_names.get(text)
    if shared is None:
        if len(_shared_names) >= _SHARED_MAX:
            return text
        shared = _shared_names[text] = text
    return shared


def _amount(text: str) -> Decimal:
    shared = _shared_amounts.get(text)
    if shared is None:
        shared = Decimal(text)
        if len(_shared_amounts) < _SHARED_MAX:
            _shared_amounts[text] = shared
    return shared


def _settings(data: dict[str, Any]) -> AutoRecharge:
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
        target = None if key[5] is None else _amount(key[5])
        shared = AutoRecharge(
            key[0], _amount(key[1]), _amount(key[2]), key[3], RechargeMode(key[4]), target
        )
        if len(_shared_settings) < _SHARED_MAX:
            _shared_settings[key] = shared
    return shared


_shared_units: dict[tuple[str, int], Unit] = {}


def _unit(data: dict[str, Any], default: Unit | None) -> Unit | None:
    """The value's currency and decimals; `default` for a value written before they
    were stored (the running card's, when the caller knows it)."""
    currency = data.get("currency")
    if currency is None:
        return default
    key = (str(currency), int(data["decimals"]))
    shared = _shared_units.get(key)
    if shared is None:
        shared = Unit(*key)
        if len(_shared_units) < _SHARED_MAX:
            _shared_units[key] = shared
    return shared


# ---- account state ---------------------------------------------------------------


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
        credit_limit=_amount(data["credit_limit"]) if "credit_limit" in data else ZERO,
        notify_below=_opt_decimal(data.get("notify_below")),
        notifications=_notifications(data.get("notifications")),
        updated_at=_own_dt(data.get("updated_at")),
        auto_recharge=None if ar is None else _settings(ar),
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


_NO_SERVICE = ServiceUsage()


def _usage(data: list[list[Any]] | None) -> tuple[MonthUsage, ...]:
    """Added: values written before consumption was kept have none."""
    if not data:
        return ()
    return tuple(
        MonthUsage(
            int(month[0]),
            tuple(
                _NO_SERVICE if u is None else ServiceUsage(int(u[0]), int(u[1]), Decimal(u[2]))
                for u in month[1:]
            ),
        )
        for month in data
    )


def notifications_to_dict(settings: Notifications) -> dict[str, Any]:
    return {
        "emails": list(settings.emails),
        "webhook_url": settings.webhook_url,
        # Sealed by the admin API (a Fernet token): never the secret itself.
        "webhook_secret_sealed": settings.webhook_secret_sealed,
        "events": list(settings.events),
        "command_id": settings.command_id,
    }


def _notifications(data: dict[str, Any] | None) -> Notifications | None:
    if data is None:
        return None
    return Notifications(
        emails=tuple(data["emails"]),
        webhook_url=data.get("webhook_url"),
        webhook_secret_sealed=data.get("webhook_secret_sealed"),
        events=tuple(data["events"]),
        command_id=str(data["command_id"]),
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
        applied=MappingProxyType({_name(k): int(v) for k, v in data["applied"].items()}),
        outbox=tuple(
            OutboxEntry(
                seq=int(e["seq"]),
                position=Position(str(e["tp"]), int(e["offset"])),
                outputs=tuple(output_from_dict(o) for o in e["outputs"]),
            )
            for e in data["outbox"]
        ),
        unit=_unit(data, default_unit),
    )


def dump_stored(stored: StoredAccount) -> bytes:
    return dumps(stored_to_dict(stored))


def load_stored(raw: bytes, default_unit: Unit | None = None) -> StoredAccount:
    return stored_from_dict(orjson.loads(raw), default_unit)


class Undecoded:
    """An account value read at recovery and not decoded yet.

    Decoding one costs ~10 us, most of a 1,000,000-tenant recovery; most tenants are
    not touched soon after a restart. Recovery needs only what is kept here: the write
    order (which value is newest) and what the store's counts track. The store decodes
    a value the first time it is read (`processor/store.py`).
    """

    __slots__ = ("exhausted", "expires", "order", "pending", "raw", "unit")

    def __init__(self, raw: bytes, highest: dict[str, int] | None = None) -> None:
        data = orjson.loads(raw)
        account = data["account"]
        if highest is not None:
            # The highest offset applied per input partition over the values read,
            # kept by the caller (core/stored.py, rewound_inputs): 0.25 us a value.
            for tp, offset in data["applied"].items():
                if offset > highest.get(tp, -1):
                    highest[tp] = offset
        self.raw = raw
        # As in stored_from_dict and StoredAccount.order.
        self.order = (int(data.get("epoch", 0)), int(data.get("gen", 0)), int(data["seq"]))
        self.exhausted = is_exhausted(
            Decimal(account["balance"]), Decimal(account.get("credit_limit", 0))
        )
        self.pending = account.get("pending") is not None
        # The first lot's expiry (epoch seconds), None without lots: the recharge
        # timer's index learns from it when to look at the tenant, without decoding.
        lots = account.get("lots")
        self.expires: int | None = int(lots[0][2]) if lots else None
        # Checked against the running card's as the value is read (processor/store.py).
        self.unit = _unit(data, None)

    def decode(self) -> StoredAccount:
        return load_stored(self.raw)


def balance_of(stored: StoredAccount) -> Decimal:
    return stored.account.balance


def dump_mark(mark: Mark) -> bytes:
    return dumps({"e": mark.expires, "tp": mark.position.tp, "o": mark.position.offset})


def load_mark(raw: bytes) -> Mark:
    data = orjson.loads(raw)
    return Mark(int(data["e"]), Position(_name(data["tp"]), int(data["o"])))


# ---- outputs ---------------------------------------------------------------------


def output_to_dict(out: Output, currency: str) -> dict[str, Any]:
    if isinstance(out, LedgerOut):
        entry: dict[str, Any] = {
            "type": "ledger_entry",
            "entry_id": out.entry_id,
            "tenant_id": out.tenant_id,
            "kind": out.kind,
            "amount": format_money(out.amount),
            "currency": currency,
            "balance_after": format_money(out.balance_after),
            "cause_topic": out.cause_topic,
            "cause_id": out.cause_id,
            "occurred_at": _at(out.occurred_at),
            "recorded_at": _at(out.recorded_at),
        }
        if out.kind == "debit":
            assert out.rate_per_minute is not None
            entry["rate_prefix"] = out.rate_prefix
            entry["rate_per_minute"] = format_money(out.rate_per_minute)
            entry["billed_seconds"] = out.billed_seconds
        if out.actor is not None:
            entry["actor"] = out.actor
        return entry
    if isinstance(out, AlertOut):
        alert: dict[str, Any] = {
            "type": "balance_alert",
            "alert_id": out.alert_id,
            "tenant_id": out.tenant_id,
            "alert": out.alert.value,
            "balance": format_money(out.balance),
            "currency": currency,
            "occurred_at": _at(out.occurred_at),
        }
        if out.status_seq is not None:
            alert["status_seq"] = out.status_seq
        if out.reason is not None:
            alert["reason"] = out.reason
        if out.request_id is not None:
            alert["request_id"] = out.request_id
        if out.amount is not None:
            alert["amount"] = format_money(out.amount)
        if out.expires_at is not None:
            alert["expires_at"] = _at(out.expires_at)
        if out.entry_id is not None:
            alert["entry_id"] = out.entry_id
        return alert
    if isinstance(out, NotificationsOut):
        return {
            "type": "notification_settings",
            "tenant_id": out.tenant_id,
            **notifications_to_dict(out.settings),
            "updated_at": _at(out.updated_at),
        }
    assert isinstance(out, RechargeOut)
    return {
        "type": "recharge_requested",
        "request_id": out.request_id,
        "tenant_id": out.tenant_id,
        "amount": format_money(out.amount),
        "currency": currency,
        "trigger_balance": format_money(out.trigger_balance),
        "balance": format_money(out.balance),
        "attempt": out.attempt,
        "requested_at": _at(out.requested_at),
    }


def dump_output(out: Output, currency: str) -> bytes:
    return dumps(output_to_dict(out, currency))


def _opt_decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(value)


def output_from_dict(data: dict[str, Any]) -> Output:
    """The inverse of output_to_dict, for outputs kept in an account's outbox."""
    kind = data["type"]
    if kind == "ledger_entry":
        return LedgerOut(
            entry_id=data["entry_id"],
            tenant_id=data["tenant_id"],
            kind=data["kind"],
            amount=Decimal(data["amount"]),
            balance_after=Decimal(data["balance_after"]),
            cause_topic=data["cause_topic"],
            cause_id=data["cause_id"],
            occurred_at=parse_timestamp(data["occurred_at"]),
            recorded_at=parse_timestamp(data["recorded_at"]),
            rate_prefix=data.get("rate_prefix"),
            rate_per_minute=_opt_decimal(data.get("rate_per_minute")),
            billed_seconds=data.get("billed_seconds"),
            actor=data.get("actor"),
        )
    if kind == "balance_alert":
        return AlertOut(
            alert_id=data["alert_id"],
            tenant_id=data["tenant_id"],
            alert=AlertKind(data["alert"]),
            balance=Decimal(data["balance"]),
            occurred_at=parse_timestamp(data["occurred_at"]),
            status_seq=data.get("status_seq"),
            reason=data.get("reason"),
            request_id=data.get("request_id"),
            amount=_opt_decimal(data.get("amount")),
            expires_at=None if "expires_at" not in data else parse_timestamp(data["expires_at"]),
            entry_id=data.get("entry_id"),
        )
    if kind == "notification_settings":
        settings = _notifications(data)
        assert settings is not None
        return NotificationsOut(
            tenant_id=data["tenant_id"],
            settings=settings,
            updated_at=parse_timestamp(data["updated_at"]),
        )
    if kind == "recharge_requested":
        return RechargeOut(
            request_id=data["request_id"],
            tenant_id=data["tenant_id"],
            amount=Decimal(data["amount"]),
            trigger_balance=Decimal(data["trigger_balance"]),
            balance=Decimal(data["balance"]),
            attempt=int(data["attempt"]),
            requested_at=parse_timestamp(data["requested_at"]),
        )
    raise ValueError(f"unknown output type {kind!r}")


# ---- timer ticks -----------------------------------------------------------------


def dump_tick(tick: TimerTick) -> bytes:
    if tick.kind == EXPIRY_TICK:
        # Added: a tick for the tenant's lots names no request.
        return dumps(
            {
                "tick_id": tick.tick_id,
                "tenant_id": tick.tenant_id,
                "kind": tick.kind,
                "at": _at(tick.at),
            }
        )
    return dumps(
        {
            "tick_id": tick.tick_id,
            "tenant_id": tick.tenant_id,
            "request_id": tick.request_id,
            "attempt": tick.attempt,
            "at": _at(tick.at),
        }
    )


def load_tick(raw: bytes) -> TimerTick:
    data = orjson.loads(raw)
    kind = str(data.get("kind", "recharge"))
    expiry = kind == EXPIRY_TICK
    return TimerTick(
        tick_id=str(data["tick_id"]),
        tenant_id=str(data["tenant_id"]),
        request_id="" if expiry else str(data["request_id"]),
        attempt=0 if expiry else int(data["attempt"]),
        at=parse_timestamp(data["at"]),
        kind=kind,
    )
