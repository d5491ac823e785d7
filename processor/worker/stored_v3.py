"""The stored account, version 3: a JSON array, fields by position.

How a tenant's account is written to its changelog and held in memory until first
used (processor/worker/codec.py tells the versions apart; versions 1 and 2 are in
processor/worker/stored_v2.py).
"""

from __future__ import annotations

import os.path
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from processor.core.money import ZERO, Unit
from processor.core.state import (
    Account,
    AutoRecharge,
    Lot,
    Notifications,
    PendingRecharge,
    RechargeMode,
    RechargeStatus,
)
from processor.core.stored import OutboxEntry, Position, StoredAccount
from processor.core.usage import SERVICES, MonthUsage, ServiceUsage
from processor.kafka.wire import (
    output_from_dict,
    output_to_dict,
    wire_time,
)
from processor.worker.interned import NO_SERVICE, SHARED_MAX, shared_name, shared_unit
from schemas.types import format_money

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
SECONDS_BELOW = 10**11
_MICROS = 10**6
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
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
    text = format_money(value)
    n = len(text)
    if n <= _MAX_DIGITS:
        if scale:
            dot = n - scale - 1
            if dot > 0 and text[dot] == ".":
                return int(text[:dot] + text[dot + 1 :])
        elif "." not in text:
            return int(text)
    return text


def scaled_decimal(value: int | str, scale: int) -> Decimal:
    if type(value) is int:
        return Decimal(value).scaleb(-scale) if scale else Decimal(value)
    return Decimal(value)


def _stamp(value: datetime) -> int | datetime | str:
    if value.tzinfo is UTC and type(value) is datetime:
        # Whole seconds and microseconds since the epoch, exactly, in integers: a
        # fifth of the time of timestamp() on a copy without its microseconds.
        since = value - _EPOCH
        seconds = since.days * 86_400 + since.seconds
        micro = since.microseconds
        if not micro and -SECONDS_BELOW < seconds < SECONDS_BELOW:
            return seconds
        micros = seconds * _MICROS + micro
        if micros <= -SECONDS_BELOW or micros >= SECONDS_BELOW:
            return micros
    return wire_time(value)


def from_stamp(value: int | str) -> datetime:
    if type(value) is int:
        if -SECONDS_BELOW < value < SECONDS_BELOW:
            return datetime.fromtimestamp(value, UTC)
        seconds, micro = divmod(value, _MICROS)
        return datetime.fromtimestamp(seconds, UTC).replace(microsecond=micro)
    return datetime.fromisoformat(str(value))


def _opt_stamp(value: int | str | None) -> datetime | None:
    return None if value is None else from_stamp(value)


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
            if len(_shared_prefixes) < SHARED_MAX:
                _shared_prefixes[names] = shared
        prefix = shared
    cut = len(prefix)
    out: list[Any] = [prefix]
    for name, offset in applied.items():
        out.append(name[cut:])
        out.append(offset)
    return out


def applied_of(data: list[Any]) -> dict[str, int]:
    prefix = data[0]
    return {shared_name(prefix + data[i]): int(data[i + 1]) for i in range(1, len(data), 2)}


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
    if len(_encoded_settings) < SHARED_MAX:
        _encoded_settings[id(ar)] = (ar, scale, encoded)
    return encoded


def _settings_v3(data: list[Any], scale: int) -> AutoRecharge:
    key = (scale, *data)
    shared = _shared_settings_v3.get(key)
    if shared is None:
        enabled, amount, trigger, suspended, mode, target = data + _AR_DEFAULTS[len(data) :]
        shared = AutoRecharge(
            bool(enabled),
            scaled_decimal(amount, scale),
            scaled_decimal(trigger, scale),
            bool(suspended),
            RechargeMode(mode),
            None if target is None else scaled_decimal(target, scale),
        )
        if len(_shared_settings_v3) < SHARED_MAX:
            _shared_settings_v3[key] = shared
    return shared


_shared_settings_v3: dict[tuple[Any, ...], AutoRecharge] = {}


def unit_v3(currency: str | None, decimals: int, default: Unit | None) -> Unit | None:
    if currency is None:
        return default
    return shared_unit({"currency": currency, "decimals": decimals}, None)


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
        balance=scaled_decimal(balance, scale),
        entries=int(entries),
        requests_issued=int(issued),
        status_seq=int(status_seq),
        credit_limit=ZERO if credit_limit is None else scaled_decimal(credit_limit, scale),
        notify_below=None if notify_below is None else scaled_decimal(notify_below, scale),
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
                scaled_decimal(lot[1], scale),
                from_stamp(lot[2]),
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
        applied=MappingProxyType(applied_of(applied)),
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
        unit=unit_v3(currency, scale, default_unit),
    )


def _month(data: list[Any], scale: int) -> MonthUsage:
    services = [
        NO_SERVICE if u == 0 else ServiceUsage(int(u[0]), int(u[1]), scaled_decimal(u[2], scale))
        for u in data[1:]
    ]
    if len(services) < len(SERVICES):
        services += [NO_SERVICE] * (len(SERVICES) - len(services))
    return MonthUsage(int(data[0]), tuple(services))


def _pending_v3(data: list[Any], scale: int) -> PendingRecharge:
    request_id, amount, attempt, requested_at, status, failed_at = (
        data + _PENDING_DEFAULTS[len(data) :]
    )
    return PendingRecharge(
        request_id=request_id,
        amount=scaled_decimal(amount, scale),
        attempt=int(attempt),
        requested_at=from_stamp(requested_at),
        status=RechargeStatus(status),
        failed_at=_opt_stamp(failed_at),
    )
