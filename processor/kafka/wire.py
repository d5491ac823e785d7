"""The bytes of every output the processor writes to Kafka (the contract's JSON).

Field names are the contract's (docs/contract.md, the models in `schemas/`), money is a
fixed-point string at the card's precision, timestamps are RFC 3339 with "Z". The
worker encodes every output, timer tick, command result and rejection through here, so
a format has one definition; tests/unit/test_wire.py checks each against its pydantic
model.
The state the worker keeps for itself (stored accounts, marks) is encoded in
processor/worker/codec.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from processor.core.engine import EXPIRY_TICK, TimerTick
from processor.core.outputs import (
    AlertKind,
    AlertOut,
    LedgerOut,
    NotificationsOut,
    Output,
    RechargeOut,
)
from processor.core.state import Notifications
from schemas.types import format_money, format_timestamp, parse_timestamp


def dumps(value: Any) -> bytes:
    """orjson.dumps, in a bytes object of the text's own size.

    orjson (3.12 and later) hands back its whole working buffer, at least 4 KiB, with
    the length set to the text's: a small output or account value held until its batch
    is produced would keep 4 KiB, and each one written lands on a page never touched
    before, a page fault apiece. Copying it out costs far less than those faults (docs/
    performance.md, "Figures behind design choices").
    """
    return b"".join((orjson.dumps(value, option=orjson.OPT_UTC_Z), b""))


def wire_time(value: datetime) -> datetime | str:
    """A timestamp for `dumps`: RFC 3339 "Z" text, as format_timestamp writes it.

    orjson writes a UTC datetime itself, the same text (microseconds only when
    non-zero), several times faster than format_timestamp (isoformat with an offset,
    then cut; docs/performance.md, "Figures behind design choices"), and a ledger entry
    has two. Any other datetime goes through format_timestamp.
    """
    return value if value.tzinfo is UTC and type(value) is datetime else format_timestamp(value)


# ---- notification settings (also kept in the account's state) -------------------


def notifications_to_dict(settings: Notifications) -> dict[str, Any]:
    return {
        "emails": list(settings.emails),
        "webhook_url": settings.webhook_url,
        # Sealed by the admin API (a Fernet token): never the secret itself.
        "webhook_secret_sealed": settings.webhook_secret_sealed,
        "events": list(settings.events),
        "command_id": settings.command_id,
    }


def notifications_from_dict(data: dict[str, Any] | None) -> Notifications | None:
    if data is None:
        return None
    return Notifications(
        emails=tuple(data["emails"]),
        webhook_url=data.get("webhook_url"),
        webhook_secret_sealed=data.get("webhook_secret_sealed"),
        events=tuple(data["events"]),
        command_id=str(data["command_id"]),
    )


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
            "occurred_at": wire_time(out.occurred_at),
            "recorded_at": wire_time(out.recorded_at),
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
            "occurred_at": wire_time(out.occurred_at),
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
            alert["expires_at"] = wire_time(out.expires_at)
        if out.entry_id is not None:
            alert["entry_id"] = out.entry_id
        if out.threshold is not None:
            alert["threshold"] = format_money(out.threshold)
            alert["threshold_setting"] = out.threshold_setting
        return alert
    if isinstance(out, NotificationsOut):
        return {
            "type": "notification_settings",
            "tenant_id": out.tenant_id,
            **notifications_to_dict(out.settings),
            "updated_at": wire_time(out.updated_at),
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
        "requested_at": wire_time(out.requested_at),
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
            threshold=_opt_decimal(data.get("threshold")),
            threshold_setting=data.get("threshold_setting"),
        )
    if kind == "notification_settings":
        settings = notifications_from_dict(data)
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
                "at": wire_time(tick.at),
            }
        )
    return dumps(
        {
            "tick_id": tick.tick_id,
            "tenant_id": tick.tenant_id,
            "request_id": tick.request_id,
            "attempt": tick.attempt,
            "at": wire_time(tick.at),
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


# ---- command results (credits.command-results) -----------------------------------


def command_result(
    command_id: str,
    tenant_id: str,
    command_type: str,
    outcome: str,
    entry_id: str | None,
    reason: str | None,
    detail: str | None,
    recorded_at: datetime,
) -> bytes:
    """What became of a command: applied (with its ledger entry), rejected or ignored."""
    body: dict[str, Any] = {
        "type": "command_result",
        "command_id": command_id,
        "tenant_id": tenant_id,
        "command_type": command_type,
        "outcome": outcome,
        "entry_id": entry_id,
    }
    if reason is not None:
        body["reason"] = reason
        # Encodable however it came (an exception's text may quote anything).
        text = (detail or "").encode("utf-8", "backslashreplace").decode("utf-8")
        body["detail"] = text[:2000]
    body["recorded_at"] = format_timestamp(recorded_at)
    return orjson.dumps(body)


# ---- rejected records (credits.rejected) -----------------------------------------
#
# A rejection copies the rejected record's key and payload, which can be of any size:
# processor/worker/sizing.py fills them in and cuts them to what the topic takes, from
# the bodies built here.


def rejection(
    reason: str,
    detail: str,
    source_topic: str,
    source_partition: int,
    source_offset: int,
    rejected_at: datetime,
) -> dict[str, Any]:
    """A rejection's body, its key and payload still to be filled in (sizing)."""
    return {
        "type": "rejected",
        "reason": reason,
        "detail": detail,
        "source_topic": source_topic,
        "source_partition": source_partition,
        "source_offset": source_offset,
        "key": None,
        "payload": None,
        "rejected_at": format_timestamp(rejected_at),
    }


def refused_reroute(
    reroute_topic: str,
    source_topic: str,
    source_partition: int,
    source_offset: int,
    rejected_at: datetime,
) -> dict[str, Any]:
    """The body of the minimal rejection standing in for a re-route the broker refused
    as too large; the key's size and hash are added when known (sizing.minimal_value)."""
    return {
        "type": "rejected",
        "reason": "too_large",
        "detail": f"the broker refused the re-route of this record to {reroute_topic} as too large",
        "source_topic": source_topic,
        "source_partition": source_partition,
        "source_offset": source_offset,
        "rejected_at": format_timestamp(rejected_at),
    }
