"""Bytes in and out of Kafka for the worker's own state: stored accounts and marks.

The account state is stored as compact JSON so a changelog can be read by a person:
since version 3 an array, its fields by position (`stored_to_list`), as it is held in
memory for every tenant. The outputs' formats (also kept in an account's outbox) are
processor/kafka/wire.py's.
"""

from __future__ import annotations

import os.path
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import orjson

from processor.core.account import (
    SERVICES,
    ZERO,
    Account,
    AutoRecharge,
    Lot,
    MonthUsage,
    Notifications,
    PendingRecharge,
    RechargeMode,
    RechargeStatus,
    ServiceUsage,
    is_exhausted,
)
from processor.core.money import Unit
from processor.core.stored import Mark, OutboxEntry, Position, StoredAccount
from processor.kafka.wire import (
    dumps,
    notifications_from_dict,
    notifications_to_dict,
    output_from_dict,
    output_to_dict,
    wire_time,
)
from schemas.types import format_money


def _ts(value: datetime | None) -> datetime | str | None:
    return None if value is None else wire_time(value)


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
        notify_below=None if data.get("notify_below") is None else Decimal(data["notify_below"]),
        notifications=notifications_from_dict(data.get("notifications")),
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


# ---- the stored account, version 3: positional ------------------------------------
#
# Every tenant's value is held in memory as read from the changelog (Undecoded) until
# it is first used, so its size is the state's size per tenant (docs/performance.md,
# "The stored account's encoding"). Version 3 is a JSON array, fields by position:
#
#   [3, tenant_id, seq, gen, epoch, currency, scale, balance, applied,
#    entries, requests_issued, status_seq, updated_at, auto_recharge, lots, usage,
#    pending, credit_limit, notify_below, notifications, outbox]
#
# Trailing fields at their default are left out. Money is an integer of 10**-scale
# when its text (format_money, as version 2 wrote it) has exactly `scale` decimals,
# else that text; `scale` is the unit's decimals (a value without a unit: the
# balance's). A timestamp is epoch seconds (an integer below 10**11) when whole, epoch
# microseconds (10**11 and above) otherwise, or RFC 3339 text when neither is exact (a
# zone other than UTC, or microseconds within a day of 1970). Booleans are 0/1.
# `applied` is [prefix, suffix, offset, suffix, offset, ...]: the names' common prefix
# once. Versions 1 and 2 (JSON objects) are still read (stored_from_dict).

STORED_VERSION = 3
_SECONDS_BELOW = 10**11
_MICROS = 10**6
# The largest coefficient written as a number: orjson writes 64-bit integers.
_MAX_DIGITS = 18
_V3_DEFAULTS: list[Any] = [
    *(None,) * 9,  # required: never left out
    0,  # entries
    0,  # requests_issued
    0,  # status_seq
    None,  # updated_at
    None,  # auto_recharge
    None,  # lots
    None,  # usage
    None,  # pending
    None,  # credit_limit (zero)
    None,  # notify_below
    None,  # notifications
    None,  # outbox
]
_V3_REQUIRED = 9
_shared_prefixes: dict[tuple[str, ...], str] = {}


def _money(value: Decimal, scale: int) -> int | str:
    text = format(value, "f")
    if text[0] == "-" and value.is_zero():
        text = text[1:]  # as format_money: never "-0"
    n = len(text)
    if n <= _MAX_DIGITS:
        if scale:
            dot = n - scale - 1
            if dot > 0 and text[dot] == ".":
                return int(text[:dot] + text[dot + 1 :])
        elif "." not in text:
            return int(text)
    return text


def _decimal(value: int | str, scale: int) -> Decimal:
    if type(value) is int:
        return Decimal(value).scaleb(-scale) if scale else Decimal(value)
    return Decimal(value)


def _stamp(value: datetime) -> int | datetime | str:
    if value.tzinfo is UTC and type(value) is datetime:
        micro = value.microsecond
        seconds = int(value.replace(microsecond=0).timestamp()) if micro else int(value.timestamp())
        if not micro and -_SECONDS_BELOW < seconds < _SECONDS_BELOW:
            return seconds
        micros = seconds * _MICROS + micro
        if micros <= -_SECONDS_BELOW or micros >= _SECONDS_BELOW:
            return micros
    return wire_time(value)


def _from_stamp(value: int | str) -> datetime:
    if type(value) is int:
        if -_SECONDS_BELOW < value < _SECONDS_BELOW:
            return datetime.fromtimestamp(value, UTC)
        seconds, micro = divmod(value, _MICROS)
        return datetime.fromtimestamp(seconds, UTC).replace(microsecond=micro)
    return datetime.fromisoformat(str(value))


def _opt_stamp(value: int | str | None) -> datetime | None:
    return None if value is None else _from_stamp(value)


def _trimmed(items: list[Any], defaults: list[Any], required: int) -> list[Any]:
    n = len(items)
    while n > required and items[n - 1] == defaults[n - 1]:
        n -= 1
    return items if n == len(items) else items[:n]


def _applied_list(applied: Mapping[str, int]) -> list[Any]:
    names = tuple(applied)
    prefix = ""
    if len(names) > 1:
        shared = _shared_prefixes.get(names)
        if shared is None:
            # Characters, not path components: a topic-partition name is no path.
            shared = os.path.commonprefix(names)  # noqa: RUF071
            if len(_shared_prefixes) < _SHARED_MAX:
                _shared_prefixes[names] = shared
        prefix = shared
    cut = len(prefix)
    out: list[Any] = [prefix]
    for name, offset in applied.items():
        out.append(name[cut:])
        out.append(offset)
    return out


def _applied_of(data: list[Any]) -> dict[str, int]:
    prefix = data[0]
    return {_name(prefix + data[i]): int(data[i + 1]) for i in range(1, len(data), 2)}


_AR_DEFAULTS: list[Any] = [None, None, None, 0, RechargeMode.FIXED.value, None]
_PENDING_DEFAULTS: list[Any] = [None, None, None, None, RechargeStatus.OUTSTANDING.value, None]


def _services(month: MonthUsage, scale: int) -> list[Any]:
    out: list[Any] = [month.month]
    for u in month.services:
        if u.events or u.billed_seconds or u.amount:
            out.append([u.events, u.billed_seconds, _money(u.amount, scale)])
        else:
            out.append(0)  # none (ServiceUsage())
    while len(out) > 1 and out[-1] == 0:
        out.pop()
    return out


def _lot(lot: Lot, scale: int) -> list[Any]:
    if lot.noticed:
        return [lot.lot_id, _money(lot.amount, scale), _stamp(lot.expires_at), 1]
    return [lot.lot_id, _money(lot.amount, scale), _stamp(lot.expires_at)]


def stored_to_list(stored: StoredAccount) -> list[Any]:
    """The version 3 form of a stored account (above)."""
    account = stored.account
    unit = stored.unit
    if unit is not None:
        scale = unit.decimals
    else:
        balance = format_money(account.balance)
        dot = balance.find(".")
        scale = 0 if dot < 0 else len(balance) - dot - 1
    ar = account.auto_recharge
    items: list[Any] = [
        STORED_VERSION,
        account.tenant_id,
        stored.seq,
        stored.generation,
        stored.epoch,
        None if unit is None else unit.currency,
        scale,
        _money(account.balance, scale),
        _applied_list(stored.applied),
        account.entries,
        account.requests_issued,
        account.status_seq,
        None if account.updated_at is None else _stamp(account.updated_at),
        None if ar is None else _settings_list(ar, scale),
        [_lot(lot, scale) for lot in account.lots] or None,
        [_services(month, scale) for month in account.usage] or None,
    ]
    pending = account.pending
    notifications = account.notifications
    if (
        pending is not None
        or account.credit_limit
        or account.notify_below is not None
        or notifications is not None
        or stored.outbox
    ):
        items += [
            None
            if pending is None
            else _trimmed(
                [
                    pending.request_id,
                    _money(pending.amount, scale),
                    pending.attempt,
                    _stamp(pending.requested_at),
                    pending.status.value,
                    None if pending.failed_at is None else _stamp(pending.failed_at),
                ],
                _PENDING_DEFAULTS,
                4,
            ),
            _money(account.credit_limit, scale) if account.credit_limit else None,
            None if account.notify_below is None else _money(account.notify_below, scale),
            None
            if notifications is None
            else [
                list(notifications.emails),
                notifications.webhook_url,
                notifications.webhook_secret_sealed,
                list(notifications.events),
                notifications.command_id,
            ],
            [
                [
                    entry.seq,
                    entry.position.tp,
                    entry.position.offset,
                    # The card's currency is implied: every balance is in it.
                    [output_to_dict(out, "") for out in entry.outputs],
                ]
                for entry in stored.outbox
            ]
            or None,
        ]
    return _trimmed(items, _V3_DEFAULTS, _V3_REQUIRED)


# Settings rarely change and are shared by many values (_settings_v3): their encoded
# form, by the object's identity (the object is kept, so its id is not reused).
_encoded_settings: dict[int, tuple[AutoRecharge, int, list[Any]]] = {}


def _settings_list(ar: AutoRecharge, scale: int) -> list[Any]:
    known = _encoded_settings.get(id(ar))
    if known is not None and known[0] is ar and known[1] == scale:
        return known[2]
    encoded = _trimmed(
        [
            int(ar.enabled),
            _money(ar.recharge_amount, scale),
            _money(ar.trigger_balance, scale),
            int(ar.suspended),
            ar.mode.value,
            None if ar.target_balance is None else _money(ar.target_balance, scale),
        ],
        _AR_DEFAULTS,
        3,
    )
    if len(_encoded_settings) < _SHARED_MAX:
        _encoded_settings[id(ar)] = (ar, scale, encoded)
    return encoded


def _settings_v3(data: list[Any], scale: int) -> AutoRecharge:
    key = (scale, *data)
    shared = _shared_settings_v3.get(key)
    if shared is None:
        enabled, amount, trigger, suspended, mode, target = data + _AR_DEFAULTS[len(data) :]
        shared = AutoRecharge(
            bool(enabled),
            _decimal(amount, scale),
            _decimal(trigger, scale),
            bool(suspended),
            RechargeMode(mode),
            None if target is None else _decimal(target, scale),
        )
        if len(_shared_settings_v3) < _SHARED_MAX:
            _shared_settings_v3[key] = shared
    return shared


_shared_settings_v3: dict[tuple[Any, ...], AutoRecharge] = {}


def _unit_v3(currency: str | None, decimals: int, default: Unit | None) -> Unit | None:
    if currency is None:
        return default
    return _unit({"currency": currency, "decimals": decimals}, None)


def stored_from_list(data: list[Any], default_unit: Unit | None = None) -> StoredAccount:
    """A version 3 value (stored_to_list); one without a unit takes `default_unit`."""
    if data[0] != STORED_VERSION:
        raise ValueError(f"unknown stored account version {data[0]!r}")
    if len(data) < len(_V3_DEFAULTS):
        data = data + _V3_DEFAULTS[len(data) :]
    (
        _,
        tenant_id,
        seq,
        gen,
        epoch,
        currency,
        scale,
        balance,
        applied,
        entries,
        issued,
        status_seq,
        updated_at,
        ar,
        lots,
        usage,
        pending,
        credit_limit,
        notify_below,
        notifications,
        outbox,
    ) = data
    account = Account(
        tenant_id=tenant_id,
        balance=_decimal(balance, scale),
        entries=int(entries),
        requests_issued=int(issued),
        status_seq=int(status_seq),
        credit_limit=ZERO if credit_limit is None else _decimal(credit_limit, scale),
        notify_below=None if notify_below is None else _decimal(notify_below, scale),
        notifications=None
        if notifications is None
        else Notifications(
            emails=tuple(notifications[0]),
            webhook_url=notifications[1],
            webhook_secret_sealed=notifications[2],
            events=tuple(notifications[3]),
            command_id=str(notifications[4]),
        ),
        updated_at=_opt_stamp(updated_at),
        auto_recharge=None if ar is None else _settings_v3(ar, scale),
        lots=()
        if lots is None
        else tuple(
            Lot(
                str(lot[0]),
                _decimal(lot[1], scale),
                _from_stamp(lot[2]),
                len(lot) > 3 and bool(lot[3]),
            )
            for lot in lots
        ),
        usage=() if usage is None else tuple(_month(month, scale) for month in usage),
        pending=None if pending is None else _pending_v3(pending, scale),
    )
    return StoredAccount(
        account=account,
        seq=int(seq),
        generation=int(gen),
        epoch=int(epoch),
        applied=MappingProxyType(_applied_of(applied)),
        outbox=()
        if outbox is None
        else tuple(
            OutboxEntry(
                seq=int(e[0]),
                position=Position(str(e[1]), int(e[2])),
                outputs=tuple(output_from_dict(o) for o in e[3]),
            )
            for e in outbox
        ),
        unit=_unit_v3(currency, scale, default_unit),
    )


def _month(data: list[Any], scale: int) -> MonthUsage:
    services = [
        _NO_SERVICE if u == 0 else ServiceUsage(int(u[0]), int(u[1]), _decimal(u[2], scale))
        for u in data[1:]
    ]
    if len(services) < len(SERVICES):
        services += [_NO_SERVICE] * (len(SERVICES) - len(services))
    return MonthUsage(int(data[0]), tuple(services))


def _pending_v3(data: list[Any], scale: int) -> PendingRecharge:
    request_id, amount, attempt, requested_at, status, failed_at = (
        data + _PENDING_DEFAULTS[len(data) :]
    )
    return PendingRecharge(
        request_id=request_id,
        amount=_decimal(amount, scale),
        attempt=int(attempt),
        requested_at=_from_stamp(requested_at),
        status=RechargeStatus(status),
        failed_at=_opt_stamp(failed_at),
    )


def dump_stored(stored: StoredAccount) -> bytes:
    return dumps(stored_to_list(stored))


def applied_offsets(raw: bytes) -> dict[str, int]:
    """A stored account's applied offsets (any version), without decoding the rest."""
    data = orjson.loads(raw)
    if type(data) is list:
        if data[0] != STORED_VERSION:
            raise ValueError(f"unknown stored account version {data[0]!r}")
        return _applied_of(data[8])
    return {str(k): int(v) for k, v in data.get("applied", {}).items()}


def load_stored(raw: bytes, default_unit: Unit | None = None) -> StoredAccount:
    """A stored account of any version: 3 (an array), or 1 and 2 (objects)."""
    data = orjson.loads(raw)
    if type(data) is list:
        return stored_from_list(data, default_unit)
    return stored_from_dict(data, default_unit)


class Undecoded:
    """An account value read at recovery and not decoded yet.

    Decoding every value was most of a large recovery's time (docs/performance.md,
    "Figures behind design choices"); most tenants are not touched soon after a
    restart. Recovery needs only what is kept here: the write order (which value is
    newest) and what the store's counts track. The store decodes a value the first
    time it is read (`processor/worker/store.py`).
    """

    __slots__ = ("exhausted", "expires", "order", "pending", "raw", "unit")

    def __init__(self, raw: bytes, highest: dict[str, int] | None = None) -> None:
        data = orjson.loads(raw)
        self.raw = raw
        if type(data) is list:
            self._v3(data, highest)
            return
        account = data["account"]
        if highest is not None:
            # The highest offset applied per input partition over the values read,
            # kept by the caller (core/stored.py, rewound_inputs).
            for tp, offset in data["applied"].items():
                if offset > highest.get(tp, -1):
                    highest[tp] = offset
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
        # Checked against the running card's as the value is read (processor/worker/store.py).
        self.unit = _unit(data, None)

    def _v3(self, data: list[Any], highest: dict[str, int] | None) -> None:
        """As __init__, for a version 3 value (stored_to_list)."""
        if data[0] != STORED_VERSION:
            raise ValueError(f"unknown stored account version {data[0]!r}")
        n = len(data)
        if highest is not None:
            applied = data[8]
            prefix = applied[0]
            for i in range(1, len(applied), 2):
                tp, offset = prefix + applied[i], applied[i + 1]
                if offset > highest.get(tp, -1):
                    highest[tp] = offset
        self.order = (int(data[4]), int(data[3]), int(data[2]))
        scale = data[6]
        credit = data[17] if n > 17 else None
        self.exhausted = is_exhausted(
            _decimal(data[7], scale), ZERO if credit is None else _decimal(credit, scale)
        )
        self.pending = n > 16 and data[16] is not None
        lots = data[14] if n > 14 else None
        if lots:
            first = lots[0][2]
            self.expires = (
                first
                if type(first) is int and -_SECONDS_BELOW < first < _SECONDS_BELOW
                else int(_from_stamp(first).timestamp())
            )
        else:
            self.expires = None
        self.unit = _unit_v3(data[5], scale, None)

    def decode(self) -> StoredAccount:
        return load_stored(self.raw)


def balance_of(stored: StoredAccount) -> Decimal:
    return stored.account.balance


def dump_mark(mark: Mark) -> bytes:
    return dumps({"e": mark.expires, "tp": mark.position.tp, "o": mark.position.offset})


def load_mark(raw: bytes) -> Mark:
    data = orjson.loads(raw)
    return Mark(int(data["e"]), Position(_name(data["tp"]), int(data["o"])))
